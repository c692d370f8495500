"""Prompt, queue, history and jobs routes of the fake ComfyUI (ComfyUI 0.8.0 `server.py`).

Handlers call `request.json()` without a guard where ComfyUI does, so a body that is not JSON
gets aiohttp's bare 500, exactly as from ComfyUI.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from typing import Any

import structlog
from aiohttp import web

from serverless_comfyui.emulator import jobs
from serverless_comfyui.emulator.keys import state_of
from serverless_comfyui.emulator.prompt_queue import QueueItem
from serverless_comfyui.emulator.validation import validate_prompt

log = structlog.get_logger("comfyui-emulator")
routes = web.RouteTableDef()

SENSITIVE_EXTRA_DATA_KEYS = ("auth_token_comfy_org", "api_key_comfy_org")


def _no_prompt() -> web.Response:
    error = {
        "type": "no_prompt",
        "message": "No prompt provided",
        "details": "No prompt provided",
        "extra_info": {},
    }
    return web.json_response({"error": error, "node_errors": {}}, status=400)


@routes.post("/prompt")
async def post_prompt(request: web.Request) -> web.Response:
    state = state_of(request)
    log.info("got prompt")
    json_data = await request.json()
    if not isinstance(json_data, dict):
        # ComfyUI only uses `in` and indexing on the body: lists and strings fall through to
        # "no prompt", anything else makes it crash (500).
        if not isinstance(json_data, list | str) or "number" in json_data or "prompt" in json_data:
            raise TypeError(f"unsupported prompt body: {type(json_data).__name__}")
        state.number += 1
        return _no_prompt()

    if "number" in json_data:
        number: Any = float(json_data["number"])
    else:
        number = state.number
        if json_data.get("front"):
            number = -number
        state.number += 1
    if "prompt" not in json_data:
        return _no_prompt()

    prompt = json_data["prompt"]
    prompt_id = str(json_data.get("prompt_id", uuid.uuid4()))
    partial = json_data.get("partial_execution_targets")
    valid = validate_prompt(prompt, state.schema, state.dirs, partial)
    extra_data = json_data.get("extra_data", {})
    if not isinstance(extra_data, dict) and ("client_id" in json_data or valid.ok):
        raise TypeError("extra_data does not support item assignment")
    if "client_id" in json_data:
        extra_data["client_id"] = json_data["client_id"]
    if not valid.ok:
        log.warning("invalid prompt", error=valid.error)
        return web.json_response(
            {"error": valid.error, "node_errors": valid.node_errors}, status=400
        )
    for key in SENSITIVE_EXTRA_DATA_KEYS:
        extra_data.pop(key, None)
    extra_data["create_time"] = int(time.time() * 1000)
    state.queue.put((number, prompt_id, prompt, extra_data, valid.outputs))
    log.info("prompt queued", prompt_id=prompt_id, number=number)
    return web.json_response(
        {"prompt_id": prompt_id, "number": number, "node_errors": valid.node_errors}
    )


@routes.get("/prompt")
async def get_prompt(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).queue_info())


@routes.get("/queue")
async def get_queue(request: web.Request) -> web.Response:
    running, pending = state_of(request).queue.current()
    return web.json_response({"queue_running": running, "queue_pending": pending})


def _has_id(prompt_id: Any) -> Callable[[QueueItem], bool]:
    return lambda item: item[1] == prompt_id


@routes.post("/queue")
async def post_queue(request: web.Request) -> web.Response:
    queue = state_of(request).queue
    json_data = await request.json()
    if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (ComfyUI's own check)
        queue.wipe_queue()
    if "delete" in json_data:
        for id_to_delete in json_data["delete"]:
            queue.delete_queue_item(_has_id(id_to_delete))
    return web.Response(status=200)


@routes.post("/interrupt")
async def post_interrupt(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        json_data = await request.json()
    except json.JSONDecodeError:
        json_data = {}
    prompt_id = json_data.get("prompt_id")
    if prompt_id:
        running, _ = state.queue.current()
        if any(item[1] == prompt_id for item in running):
            log.info("interrupting prompt", prompt_id=prompt_id)
            state.interrupt_requested = True
        else:
            log.info("prompt is not currently running, skipping interrupt", prompt_id=prompt_id)
    else:
        log.info("global interrupt (no prompt_id specified)")
        state.interrupt_requested = True
    return web.Response(status=200)


@routes.post("/free")
async def post_free(request: web.Request) -> web.Response:
    queue = state_of(request).queue
    json_data = await request.json()
    unload_models = json_data.get("unload_models", False)
    free_memory = json_data.get("free_memory", False)
    if unload_models:
        queue.set_flag("unload_models", unload_models)
    if free_memory:
        queue.set_flag("free_memory", free_memory)
    return web.Response(status=200)


@routes.get("/history")
async def get_history(request: web.Request) -> web.Response:
    query = request.rel_url.query
    max_items = int(query["max_items"]) if "max_items" in query else None
    offset = int(query["offset"]) if "offset" in query else -1
    history = state_of(request).queue.get_history(max_items=max_items, offset=offset)
    return web.json_response(history)


@routes.get("/history/{prompt_id}")
async def get_history_prompt_id(request: web.Request) -> web.Response:
    prompt_id = request.match_info["prompt_id"]
    return web.json_response(state_of(request).queue.get_history(prompt_id=prompt_id))


@routes.post("/history")
async def post_history(request: web.Request) -> web.Response:
    queue = state_of(request).queue
    json_data = await request.json()
    if "clear" in json_data and json_data["clear"]:  # noqa: RUF019 (ComfyUI's own check)
        queue.wipe_history()
    if "delete" in json_data:
        for id_to_delete in json_data["delete"]:
            queue.delete_history_item(id_to_delete)
    return web.Response(status=200)


def _bad_request(message: str) -> web.Response:
    return web.json_response({"error": message}, status=400)


@routes.get("/api/jobs")
async def get_jobs(request: web.Request) -> web.Response:
    query = request.rel_url.query
    statuses = jobs.ALL_STATUSES
    if query.get("status"):
        statuses = [s.strip().lower() for s in query["status"].split(",") if s.strip()]
        invalid = [s for s in statuses if s not in jobs.ALL_STATUSES]
        if invalid:
            return _bad_request(
                f"Invalid status value(s): {', '.join(invalid)}. "
                f"Valid values: {', '.join(jobs.ALL_STATUSES)}"
            )
    sort_by = query.get("sort_by", "created_at").lower()
    sort_order = query.get("sort_order", "desc").lower()
    if sort_by not in ("created_at", "execution_duration"):
        return _bad_request("sort_by must be 'created_at' or 'execution_duration'")
    if sort_order not in ("asc", "desc"):
        return _bad_request("sort_order must be 'asc' or 'desc'")
    try:
        limit = int(query["limit"]) if "limit" in query else None
        offset = max(0, int(query.get("offset", "0")))
    except ValueError:
        return _bad_request("limit and offset must be integers")
    if limit is not None and limit <= 0:
        return _bad_request("limit must be a positive integer")
    queue = state_of(request).queue
    running, pending = queue.current()
    all_jobs = jobs.get_all_jobs(
        running, pending, queue.history, statuses, query.get("workflow_id"), sort_by, sort_order
    )
    page = all_jobs[offset:] if limit is None else all_jobs[offset : offset + limit]
    pagination = {
        "offset": offset,
        "limit": limit,
        "total": len(all_jobs),
        "has_more": offset + len(page) < len(all_jobs),
    }
    return web.json_response({"jobs": page, "pagination": pagination})


@routes.get("/api/jobs/{job_id}")
async def get_job_by_id(request: web.Request) -> web.Response:
    job_id = request.match_info["job_id"]
    queue = state_of(request).queue
    running, pending = queue.current()
    job = jobs.get_job(job_id, running, pending, queue.get_history(prompt_id=job_id))
    if job is None:
        return web.json_response({"error": "Job not found"}, status=404)
    return web.json_response(job)
