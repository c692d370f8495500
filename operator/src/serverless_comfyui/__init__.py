"""serverless-comfyui: scale-to-zero ComfyUI on Kubernetes."""
