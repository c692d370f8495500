"""The /v1 routes: generate, batch, tasks (status, cancel, events), results, workflows, docs."""

from __future__ import annotations

import contextlib
import json
from typing import Any

from aiohttp import web

from serverless_comfyui.api import metrics
from serverless_comfyui.api.errors import ApiError, invalid, issue, not_found
from serverless_comfyui.api.http import (
    client_identity,
    json_response,
    public_base,
    read_json,
    service_of,
)
from serverless_comfyui.api.models import Task
from serverless_comfyui.api.openapi import build_spec, render_docs
from serverless_comfyui.api.requests import Caller, Prepared, prepare_generate
from serverless_comfyui.api.results import content_type_of, valid_filename, valid_task_id
from serverless_comfyui.api.service import ApiService
from serverless_comfyui.api.views import task_url
from serverless_comfyui.workflows import UnknownWorkflowError

routes = web.RouteTableDef()
SSE_KEEPALIVE_SECONDS = 15.0


def _caller(request: web.Request) -> Caller:
    return Caller(
        client=client_identity(request),
        base_url=public_base(request),
        idempotency_key=request.headers.get("Idempotency-Key"),
    )


def _conflict(task: Task) -> ApiError:
    return ApiError(
        409,
        "idempotency_conflict",
        f"Idempotency-Key {task.idempotency_key!r} was used for another request (task "
        f"{task.id}); use a new key for a new request",
        extra={"task_id": task.id},
    )


async def _accept(service: ApiService, prepared: Prepared) -> tuple[Task, dict[str, str]]:
    task, created = await service.submit(prepared.task)
    if not created and task.fingerprint != prepared.task.fingerprint:
        raise _conflict(task)
    headers = {"Location": task_url(task)}
    if not created:
        headers["Idempotent-Replayed"] = "true"
    return task, headers


async def sync_answer(service: ApiService, task: Task, headers: dict[str, str]) -> web.Response:
    """The answer to a sync request once its wait is over."""
    if not task.terminal:
        body = await service.view(task)
        body["message"] = (
            "the task is still running past the sync wait limit; follow it at links.self"
        )
        return json_response(body, status=202, headers=headers)
    body = await service.view(task, with_images=task.output.delivery == "base64")
    if task.status == "completed":
        return json_response(body, headers=headers)
    if task.status == "cancelled":
        return json_response(body, status=409, headers=headers)
    kind = task.error.type if task.error else ""
    if kind == "comfyui_rejected":
        return json_response(body, status=422, headers=headers)
    if kind == "no_capacity":
        return json_response(body, status=503, headers={**headers, "Retry-After": "30"})
    return json_response(body, status=502, headers=headers)


@routes.post("/generate", name="generate")
async def generate(request: web.Request) -> web.Response:
    service = service_of(request)
    body = await read_json(request)
    try:
        prepared = prepare_generate(
            body,
            caller=_caller(request),
            registry=service.registry,
            library=service.library,
            settings=service.settings,
            workflow_of=service.workflow_of,
        )
    except ApiError:
        metrics.INVALID_REQUESTS.labels("generate").inc()
        raise
    task, headers = await _accept(service, prepared)
    if prepared.mode == "async":
        return json_response(await service.view(task), status=202, headers=headers)
    final = await service.wait(task.id, service.settings.sync_wait_seconds)
    return await sync_answer(service, final or task, headers)


@routes.post("/batch", name="batch")
async def batch(request: web.Request) -> web.Response:
    service = service_of(request)
    body = await read_json(request)
    caller = _caller(request)
    limit = service.settings.max_batch
    errors = []
    items: Any = body.get("requests") if isinstance(body, dict) else None
    if not isinstance(body, dict):
        errors.append(issue("", "body", "must be a JSON object {requests: [...]}"))
    elif not isinstance(items, list):
        errors.append(issue("requests", "type", "must be a list of generate requests"))
    elif not items:
        errors.append(issue("requests", "min_items", "must hold at least one request"))
    elif len(items) > limit:
        errors.append(issue("requests", "max_items", f"at most {limit} requests per batch"))
    else:
        for key in body:
            if key != "requests":
                errors.append(issue(key, "unknown", "unknown field (requests)"))
    prepared: list[Prepared] = []
    if not errors:
        assert isinstance(items, list)
        for index, item in enumerate(items):
            prefix = f"requests[{index}]."
            if isinstance(item, dict) and item.get("mode", "async") != "async":
                errors.append(issue(f"{prefix}mode", "enum", "batch tasks are async"))
                continue
            key = f"{caller.idempotency_key}#{index}" if caller.idempotency_key else None
            item_caller = Caller(caller.client, caller.base_url, key)
            try:
                prepared.append(
                    prepare_generate(
                        item,
                        caller=item_caller,
                        registry=service.registry,
                        library=service.library,
                        settings=service.settings,
                        workflow_of=service.workflow_of,
                        prefix=prefix,
                        force_mode="async",
                    )
                )
            except ApiError as exc:
                errors += exc.errors
    if errors:
        metrics.INVALID_REQUESTS.labels("batch").inc()
        raise invalid(errors)
    tasks = []
    replayed = False
    for item_prepared in prepared:
        task, headers = await _accept(service, item_prepared)
        replayed = replayed or "Idempotent-Replayed" in headers
        tasks.append(await service.view(task))
    headers = {"Idempotent-Replayed": "true"} if replayed else {}
    return json_response(
        {"object": "batch", "count": len(tasks), "tasks": tasks}, status=202, headers=headers
    )


async def _task(request: web.Request) -> Task:
    task_id = request.match_info["task_id"]
    task = await service_of(request).get(task_id) if valid_task_id(task_id) else None
    if task is None:
        raise not_found(f"unknown task {task_id!r} (or past its retention)", "unknown_task")
    return task


@routes.get("/tasks/{task_id}", name="task")
async def get_task(request: web.Request) -> web.Response:
    task = await _task(request)
    with_images = request.query.get("include") == "base64" and task.status == "completed"
    return json_response(await service_of(request).view(task, with_images=with_images))


@routes.delete("/tasks/{task_id}", name="cancel")
async def cancel_task(request: web.Request) -> web.Response:
    service = service_of(request)
    task = await _task(request)
    if task.terminal:
        raise ApiError(
            409,
            "task_finished",
            f"task {task.id} is already {task.status}",
            extra={"task": await service.view(task)},
        )
    cancelled = await service.cancel(task.id)
    if cancelled is None:
        raise not_found(f"unknown task {task.id!r}", "unknown_task")
    if cancelled.status != "cancelled":
        raise ApiError(
            409,
            "task_finished",
            f"task {task.id} finished ({cancelled.status}) before it could be cancelled",
            extra={"task": await service.view(cancelled)},
        )
    return json_response(await service.view(cancelled))


@routes.get("/tasks/{task_id}/events", name="events")
async def task_events(request: web.Request) -> web.StreamResponse:
    service = service_of(request)
    task = await _task(request)
    after = request.headers.get("Last-Event-ID") or request.query.get("after") or None
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await response.prepare(request)
    with contextlib.suppress(ConnectionResetError):
        await response.write(b"retry: 2000\n\n")
        async for event_id, event in service.events(task.id, after, SSE_KEEPALIVE_SECONDS):
            kind = str(event.get("type"))
            if kind == "keepalive":
                await response.write(b": keepalive\n\n")
                continue
            data = {"task_id": task.id, **(event.get("data") or {})}
            lines = f"id: {event_id}\n" if event_id else ""
            lines += f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"
            await response.write(lines.encode())
        await response.write_eof()
    return response


@routes.get("/results/{task_id}/{filename}", name="result")
async def get_result(request: web.Request) -> web.StreamResponse:
    service = service_of(request)
    task_id, filename = request.match_info["task_id"], request.match_info["filename"]
    path = service.results.path(task_id, filename) if valid_filename(filename) else None
    if path is None or not path.is_file():
        raise not_found(f"no result {filename!r} for task {task_id!r} (or past its retention)")
    return web.FileResponse(
        path,
        headers={
            "Content-Type": content_type_of(filename),
            "Cache-Control": "private, max-age=86400, immutable",
        },
    )


@routes.get("/workflows", name="workflows")
async def list_workflows(request: web.Request) -> web.Response:
    library = service_of(request).library
    return json_response(
        {
            "default": service_of(request).settings.default_workflow,
            "workflows": [
                {
                    "name": wf.name,
                    "description": wf.description,
                    "tags": list(wf.spec.tags),
                    "parameters": wf.parameters_schema(),
                }
                for wf in library
            ],
        }
    )


@routes.get("/workflows/{name}", name="workflow")
async def get_workflow(request: web.Request) -> web.Response:
    try:
        wf = service_of(request).library.get(request.match_info["name"])
    except UnknownWorkflowError as exc:
        raise not_found(str(exc), "unknown_workflow") from exc
    return json_response(
        {
            "name": wf.name,
            "description": wf.description,
            "tags": list(wf.spec.tags),
            "notes": wf.spec.notes,
            "outputs": list(wf.spec.outputs),
            "models": [m.model_dump() for m in wf.spec.models],
            "parameters": wf.parameters_schema(),
        }
    )


def _spec(request: web.Request) -> dict[str, Any]:
    service = service_of(request)
    if service.spec is None:
        service.spec = build_spec(service.library, service.settings)
    return service.spec


@routes.get("/openapi.json", name="openapi")
async def openapi(request: web.Request) -> web.Response:
    return json_response(_spec(request))


@routes.get("/docs", name="docs")
async def docs(request: web.Request) -> web.Response:
    return web.Response(
        text=render_docs(_spec(request), service_of(request).library), content_type="text/html"
    )


@routes.get("/", name="index")
async def index(request: web.Request) -> web.Response:
    raise web.HTTPFound(location=str(request.app.router["docs"].url_for()))
