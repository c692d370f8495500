"""comfyui-api compatibility (SaladTechnologies/comfyui-api's `POST /prompt`), mounted apart
from ComfyUI's own `/prompt` passthrough, e.g. at `/comfyui-api/`:

    POST /comfyui-api/prompt            application from `model`, ?model=, X-Model, the
    POST /comfyui-api/{model}/prompt    setting default_model, or the only application

A client of that convention (the seed's FluxEz front end posts `{prompt: <workflow>}` to
`<base>/prompt` and reads `images[0]`) works by changing its base URL to
`https://<proxy>/comfyui-api/<model>`. The request runs as a task like any other (stored,
queued, recovered, retried), so it is as durable as `/v1/generate`.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from serverless_comfyui.api import metrics
from serverless_comfyui.api.errors import ApiError
from serverless_comfyui.api.http import (
    client_identity,
    json_response,
    public_base,
    read_json,
    service_of,
)
from serverless_comfyui.api.requests import Caller, prepare_comfyui
from serverless_comfyui.api.views import comfyui_api_view, task_url

routes = web.RouteTableDef()


def _model(request: web.Request, body: Any) -> Any:
    in_path = request.match_info.get("model")
    if in_path:
        return in_path
    if isinstance(body, dict) and body.get("model") is not None:
        return body["model"]
    named = request.query.get("model") or request.headers.get("X-Model")
    if named:
        return named
    service = service_of(request)
    if service.settings.default_model:
        return service.settings.default_model
    if len(service.registry.apps) == 1:
        return next(iter(service.registry.apps))
    return None


@routes.post("/prompt", name="prompt")
@routes.post("/{model}/prompt", name="model-prompt")
async def prompt(request: web.Request) -> web.Response:
    service = service_of(request)
    body = await read_json(request)
    caller = Caller(
        client=client_identity(request),
        base_url=public_base(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )
    try:
        prepared = prepare_comfyui(
            body,
            model=_model(request, body),
            caller=caller,
            registry=service.registry,
            settings=service.settings,
        )
    except ApiError:
        metrics.INVALID_REQUESTS.labels("comfyui-api").inc()
        raise
    task, created = await service.submit(prepared.task)
    if not created and task.fingerprint != prepared.task.fingerprint:
        raise ApiError(
            409,
            "idempotency_conflict",
            f"id / Idempotency-Key {task.idempotency_key!r} was used for another request",
            extra={"task_id": task.id},
        )
    headers = {"Location": task_url(task)}
    request_id = task.external_id or task.id
    if prepared.mode == "async":
        hook = task.webhook.url if task.webhook else None
        field = "webhook_v2" if isinstance(body, dict) and "webhook_v2" in body else "webhook"
        return json_response(
            {
                "id": request_id,
                "status": "ok",
                field: hook,
                "prompt": task.graph,
                "task_id": task.id,
            },
            status=202,
            headers=headers,
        )
    final = await service.wait(task.id, service.settings.sync_wait_seconds) or task
    if not final.terminal:
        return json_response(
            {
                "id": request_id,
                "status": final.status,
                "task_id": final.id,
                "location": task_url(final),
                "message": "still running past the sync wait limit; follow the task",
            },
            status=202,
            headers=headers,
        )
    if final.status == "completed":
        images = await service.images_base64(final)
        return json_response(
            comfyui_api_view(final, [images.get(r.filename, "") for r in final.results]),
            headers=headers,
        )
    error = final.error
    if error is not None and error.type == "comfyui_rejected" and isinstance(error.details, dict):
        # ComfyUI's own validation error, unchanged (as a direct /prompt would get it).
        return json_response(error.details, status=400, headers=headers)
    status = (
        409
        if final.status == "cancelled"
        else 503
        if error and error.type == "no_capacity"
        else 502
    )
    return json_response(
        {
            "id": request_id,
            "task_id": final.id,
            "status": final.status,
            "error": error.message if error else final.status,
            "details": error.details if error else None,
            "prompt": final.graph,
        },
        status=status,
        headers=headers,
    )
