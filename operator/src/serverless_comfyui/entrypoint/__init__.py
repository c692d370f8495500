"""The ComfyUI pod's entrypoint: "ready means warm" and "drain before delete".

`python -m serverless_comfyui.entrypoint` starts ComfyUI (`COMFYUI_COMMAND`), waits until it
answers, runs the warm-up graph (`WARMUP_WORKFLOW`) once, and serves the kubelet on
`HEALTH_HOST:HEALTH_PORT`:

* `GET /readyz`  200 after a successful warm-up, while not draining and ComfyUI answers;
  503 `{"ready": false, "reason": "starting" | "warming_up" | "warmup_failed: ..." |
  "draining" | "comfyui_down" | ...}` otherwise.
* `GET /livez`   200 while ComfyUI runs and answers; 503 once it died (the entrypoint then
  exits with ComfyUI's exit code) or stopped answering for `LIVENESS_STALE_SECONDS`.
* `GET /drain`   the preStop hook: readyz turns 503 at once, then the call returns when
  ComfyUI's queue is empty (`{"drained": true}`; after `DRAIN_OUTPUTS_SECONDS` more when it
  had to wait, so that the prompts' outputs can still be fetched) or at `DRAIN_TIMEOUT_SECONDS`
  (`{"drained": false, "remaining": N}`).
* `GET /status`  a JSON summary (phase, warm-up attempts and duration, child pid, ...).

SIGTERM/SIGINT stop ComfyUI (SIGTERM, SIGKILL after `CHILD_STOP_TIMEOUT_SECONDS`) and exit 0.
"""

from serverless_comfyui.entrypoint.settings import DEFAULT_COMFYUI_COMMAND, EntrypointSettings

__all__ = ["DEFAULT_COMFYUI_COMMAND", "EntrypointSettings"]
