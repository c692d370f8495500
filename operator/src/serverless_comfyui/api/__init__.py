"""The generation API: a simple REST API over the workflow library (sync and async tasks,
webhooks, server-sent events, batches, idempotency keys) and a comfyui-api compatible
endpoint, mounted by the proxy. Tasks live in a store (Redis, or files for one replica) and
are run by a worker in every proxy replica, so no accepted task is lost to a restart, a lost
pod or a cold start. See `app.py` for mounting and `README.md` for the design."""

from serverless_comfyui.api.app import create_api_app, create_comfyui_api_app, mount_api
from serverless_comfyui.api.http import SERVICE
from serverless_comfyui.api.service import ApiService
from serverless_comfyui.api.settings import ApiSettings

__all__ = [
    "SERVICE",
    "ApiService",
    "ApiSettings",
    "create_api_app",
    "create_comfyui_api_app",
    "mount_api",
]
