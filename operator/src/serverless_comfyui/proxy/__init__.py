"""The scale-to-zero proxy: routes ComfyUI requests by `model`, wakes and holds, keeps prompt
affinity, balances by outstanding work, and autoscales each FluxWorkflow."""
