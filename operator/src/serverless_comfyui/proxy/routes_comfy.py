"""ComfyUI's HTTP API through the proxy.

Every route is served bare and under `/api` (as ComfyUI does), both at the root and under
`/openai` (the kubeai base URL users know); `/openai` is stripped and the rest forwarded as is.
Anything else under `/openai/` or `/api/` is forwarded to a live pod of the named application.

| requests                                               | wakes | goes to                      |
|--------------------------------------------------------|-------|------------------------------|
| POST /prompt                                           | yes   | least outstanding pod (id)   |
| GET system_stats, object_info[/c], features,           | yes   | least outstanding pod        |
|     embeddings, models[/f]; anything else under /api   |       |                              |
| POST /upload/image, /upload/mask                       | yes   | every serving pod            |
| GET /history/{id}, /api/jobs/{id}, /view of an output  | no    | the prompt's pod (404: gone) |
| POST /interrupt {prompt_id}, /queue and /history       | no    | the prompts' pods            |
|     {delete: [ids]}                                    |       |                              |
| GET /queue, /history, /api/jobs, /prompt               | no    | every serving pod, merged    |
| POST /interrupt (no id), {clear} to /queue, /history;  | no    | every serving pod            |
|     POST /free                                         |       |                              |

Prompt ids: `POST /prompt` always carries a proxy-minted id (ids.py) that names the pod, so any
replica routes it after a restart. A client-supplied `prompt_id` minted by a proxy for this app
whose pod still serves is a retry: it goes to that pod, and is not queued twice if the pod
already has it. Any other client-supplied id is replaced by a minted one (clients must use the
id in the answer). Each `filename_prefix` input is rewritten to `<prompt_id>/<prefix>`, so
outputs never collide across pods and `/view?subfolder=<prompt_id>...` routes to the pod.
Ids not minted by a proxy (e.g. prompts submitted through the UI) are looked up on every
serving pod.
"""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

import structlog
from aiohttp import web
from aiohttp.helpers import parse_mimetype

from serverless_comfyui.proxy import ids, ws
from serverless_comfyui.proxy.context import ROUTE, context_of, current_pod, locate
from serverless_comfyui.proxy.errors import ProxyError, bad_request, not_found
from serverless_comfyui.proxy.forward import Reply, UpstreamError, upstream_headers
from serverless_comfyui.proxy.incoming import (
    Incoming,
    parse,
    part_field,
    read_body,
    require_model,
    split_multipart,
)
from serverless_comfyui.proxy.registry import App, PodState

log = structlog.get_logger("proxy")

OPENAI = "/openai"
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


# -- helpers ----------------------------------------------------------------------------------


def upstream_path(request: web.Request) -> str:
    """The raw (still percent-encoded) path to forward: without `/openai`."""
    raw = request.rel_url.raw_path
    if raw == OPENAI or raw.startswith(OPENAI + "/"):
        raw = raw[len(OPENAI) :] or "/"
    return raw


async def incoming(request: web.Request) -> Incoming:
    ctx = context_of(request)
    body = await read_body(request, ctx.settings.max_body_bytes)
    return parse(request, body, upstream_path(request))


def headers_for(request: web.Request, inc: Incoming) -> dict[str, str]:
    return dict(upstream_headers(request, inc.content_type if inc.body else None))


def app_of(request: web.Request, inc: Incoming) -> App:
    return context_of(request).app_for(request, require_model(inc.model))


def app_by_id(request: web.Request, inc: Incoming, prompt_id: str) -> App:
    """The application of a by-id request: the named one, or the one the id carries."""
    ctx = context_of(request)
    if inc.model is None:
        found = ctx.registry.route(prompt_id)
        if found is not None:
            return ctx.app_for(request, found[0].name)
    return app_of(request, inc)


def gone(app: App, prompt_id: str) -> ProxyError:
    return not_found(
        f"prompt {prompt_id} of {app.name} ran on a pod that is gone (its history and outputs "
        "went with it)",
        kind="prompt_gone",
    )


async def relay_live(
    request: web.Request, app: App, inc: Incoming, first: PodState
) -> web.StreamResponse:
    """Relay to `first`; an idempotent request whose pod cannot be reached is tried once more
    on another serving pod."""
    ctx = context_of(request)
    headers = headers_for(request, inc)
    try:
        response = await ctx.up.relay(request, first, inc.url, headers=headers, body=inc.body)
    except UpstreamError as exc:
        other = other_pod(app, first)
        if exc.status != 502 or request.method not in ("GET", "HEAD") or other is None:
            raise
        response = await ctx.up.relay(request, other, inc.url, headers=headers, body=inc.body)
    assert response is not None
    return response


def other_pod(app: App, failed: PodState) -> PodState | None:
    candidates = [p for p in app.serving_pods() if p.name != failed.name]
    active = [p for p in candidates if not p.draining] or candidates
    return min(active, key=lambda p: (p.outstanding, p.name)) if active else None


def empty_ok() -> web.Response:
    """ComfyUI's answer to queue/history/interrupt/free POSTs."""
    return web.Response(status=200)


async def to_pods(
    request: web.Request, targets: Mapping[str, tuple[PodState, bytes | None]], inc: Incoming
) -> web.Response:
    """One POST to each target pod (its own body); ComfyUI's empty 200 when all agree, the
    first answer that is not 200 otherwise, 502 when none could be reached."""
    ctx = context_of(request)
    if not targets:
        return empty_ok()

    async def one(pod: PodState, body: bytes | None) -> Reply | UpstreamError:
        headers = dict(upstream_headers(request, "application/json" if body else None))
        try:
            return await ctx.up.call(pod, request.method, inc.url, headers=headers, body=body)
        except UpstreamError as exc:
            log.warning("pod call failed", pod=pod.name, path=request.path, error=exc.message)
            return exc

    results = await asyncio.gather(*(one(pod, body) for pod, body in targets.values()))
    replies = [r for r in results if isinstance(r, Reply)]
    if not replies:
        first = results[0]
        assert isinstance(first, UpstreamError)
        raise first
    bad = next((r for r in replies if r.status != 200), None)
    return bad.response() if bad is not None else replies[0].response()


# -- prompts ----------------------------------------------------------------------------------


def prefix_outputs(graph: Any, prompt_id: str) -> Any:
    """A copy of the graph whose `filename_prefix` inputs start with `<prompt_id>/`."""
    if not isinstance(graph, dict):
        return graph
    out = copy.deepcopy(graph)
    for node in out.values():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        prefix = inputs.get("filename_prefix") if isinstance(inputs, dict) else None
        if (
            isinstance(inputs, dict)
            and isinstance(prefix, str)
            and not prefix.startswith(prompt_id + "/")
        ):
            inputs["filename_prefix"] = f"{prompt_id}/{prefix.lstrip('/')}"
    return out


async def existing_job(request: web.Request, pod: PodState, prompt_id: str) -> Any:
    """The pod's job of this id, if it has one (a retried submission)."""
    reply = await context_of(request).up.call(pod, "GET", f"/api/jobs/{prompt_id}")
    job = reply.json() if reply.status == 200 else None
    return job if isinstance(job, dict) else None


async def post_prompt(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    inc = await incoming(request)
    app = app_of(request, inc)
    data = check_prompt_body(inc)
    supplied = data.get("prompt_id")
    pod: PodState | None = None
    prompt_id = ""
    if isinstance(supplied, str):
        located = locate(app, supplied)
        if located.pod is not None and located.pod.serving:
            pod, prompt_id = located.pod, supplied
    if pod is not None:
        try:
            job = await existing_job(request, pod, prompt_id)
        except UpstreamError:
            job = None  # submitting below fails over to another pod
        if job is not None:
            log.info("prompt retry answered from the pod", prompt_id=prompt_id, pod=pod.name)
            return web.json_response(
                {"prompt_id": prompt_id, "number": job.get("priority", 0), "node_errors": {}}
            )
        if pod.draining:  # never queued there, and the pod takes no new work: a new prompt
            pod = None
    if pod is None:
        pod = await ctx.hold(request, app)
        prompt_id = ids.mint(app.name, pod.name)
    try:
        return await submit(request, app, data, inc, pod, prompt_id)
    except UpstreamError as exc:
        other = other_pod(app, pod) if exc.status == 502 else None
        if other is None:
            raise
        log.warning("pod unreachable, prompt resubmitted", failed=pod.name, pod=other.name)
        return await submit(request, app, data, inc, other, ids.mint(app.name, other.name))


def check_prompt_body(inc: Incoming) -> dict[str, Any]:
    """Refuse (400) what ComfyUI would answer with a bare 500."""
    data = inc.json_object
    if data is None:
        raise bad_request(
            'POST /prompt needs a JSON object body: {"model": ..., "prompt": {...}}',
            "invalid_prompt_body",
        )
    problems = []
    if "prompt" in data and not isinstance(data["prompt"], dict):
        problems.append('"prompt" must be an object of nodes (the workflow in API format)')
    if "extra_data" in data and not isinstance(data["extra_data"], dict):
        problems.append('"extra_data" must be an object')
    if "client_id" in data and not isinstance(data["client_id"], str):
        problems.append('"client_id" must be a string')
    if "number" in data:
        try:
            float(data["number"])
        except (TypeError, ValueError):
            problems.append('"number" must be a number')
    if problems:
        raise bad_request("; ".join(problems), "invalid_prompt_body")
    return data


def uncount(app: App, pod: PodState) -> None:
    """Undo the inflight count of a prompt the pod did not take. (A monitor may have reset
    the count meanwhile; the pod's state object may have been replaced.)"""
    now = current_pod(app, pod) or pod
    now.inflight = max(0, now.inflight - 1)


async def submit(
    request: web.Request,
    app: App,
    data: dict[str, Any],
    inc: Incoming,
    pod: PodState,
    prompt_id: str,
) -> web.StreamResponse:
    body = dict(data)
    body["prompt_id"] = prompt_id
    if "prompt" in body:
        body["prompt"] = prefix_outputs(body["prompt"], prompt_id)
    inc.with_json(body)
    # Counted as outstanding from now (no await since the pick): a burst of concurrent prompts
    # spreads over the pods instead of all going to the one that looked idlest.
    (current_pod(app, pod) or pod).inflight += 1
    try:
        reply = await context_of(request).up.call(
            pod, "POST", inc.url, headers=headers_for(request, inc), body=inc.body
        )
    except BaseException:
        uncount(app, pod)
        raise
    if reply.status != 200:
        uncount(app, pod)
    log.info(
        "prompt submitted", model=app.name, pod=pod.name, prompt_id=prompt_id, status=reply.status
    )
    return reply.response()


async def get_prompt(request: web.Request) -> web.StreamResponse:
    """Queue size of the whole application (ComfyUI's `GET /prompt`), without waking it."""
    inc = await incoming(request)
    app = app_of(request, inc)
    total = 0
    for _, reply in await context_of(request).up.json_from_all(app.serving_pods(), "GET", inc.url):
        body = reply.json() if isinstance(reply, Reply) else None
        info = body.get("exec_info") if isinstance(body, dict) else None
        value = info.get("queue_remaining") if isinstance(info, dict) else None
        total += value if isinstance(value, int) else 0
    return web.json_response({"exec_info": {"queue_remaining": total}})


# -- queue, history, jobs ---------------------------------------------------------------------


async def get_queue(request: web.Request) -> web.StreamResponse:
    inc = await incoming(request)
    app = app_of(request, inc)
    running: list[Any] = []
    pending: list[Any] = []
    for _, reply in await context_of(request).up.json_from_all(app.serving_pods(), "GET", inc.url):
        body = reply.json() if isinstance(reply, Reply) and reply.status == 200 else None
        if isinstance(body, dict):
            running += body.get("queue_running") or []
            pending += body.get("queue_pending") or []
    return web.json_response({"queue_running": running, "queue_pending": pending})


def delete_targets(
    app: App, body: dict[str, Any], what: str
) -> dict[str, tuple[PodState, bytes | None]]:
    """Per-pod bodies of a `{"delete": [ids], "clear": bool}` POST (queue or history): each id
    to its pod, ids not ours to every serving pod, `clear` to every serving pod; ids whose pod
    is gone are dropped (nothing of them is left anywhere)."""
    delete = body.get("delete", [])
    if not isinstance(delete, list):
        raise bad_request(f'"delete" in POST /{what} must be a list of prompt ids')
    clear = bool(body.get("clear"))
    routed: dict[str, tuple[PodState, list[Any]]] = {}
    foreign: list[Any] = []
    for prompt_id in delete:
        located = locate(app, prompt_id)
        if located.pod is not None:
            routed.setdefault(located.pod.name, (located.pod, []))[1].append(prompt_id)
        elif not located.ours:
            foreign.append(prompt_id)
    targets: dict[str, tuple[PodState, bytes | None]] = {}
    pods = {p.name: p for p in app.serving_pods()}
    pods.update({name: pod for name, (pod, _) in routed.items()})
    for name, pod in pods.items():
        out: dict[str, Any] = {}
        if clear:
            out["clear"] = True
        mine = (routed[name][1] if name in routed else []) + foreign
        if mine:
            out["delete"] = mine
        if out:
            targets[name] = (pod, json.dumps(out).encode())
    return targets


async def post_queue(request: web.Request) -> web.StreamResponse:
    inc = await incoming(request)
    app = app_of(request, inc)
    body = require_object(inc, "queue")
    return await to_pods(request, delete_targets(app, body, "queue"), inc)


async def post_history(request: web.Request) -> web.StreamResponse:
    inc = await incoming(request)
    app = app_of(request, inc)
    body = require_object(inc, "history")
    return await to_pods(request, delete_targets(app, body, "history"), inc)


def optional_object(inc: Incoming, what: str) -> dict[str, Any]:
    """The JSON object body of a POST whose body may be empty."""
    if not inc.body.strip():
        return {}
    body = inc.json_object
    if body is None:
        raise bad_request(f"POST /{what} takes a JSON object body (or none)", "invalid_body")
    return body


def require_object(inc: Incoming, what: str) -> dict[str, Any]:
    body = inc.json_object
    if body is None:
        raise bad_request(
            f'POST /{what} needs a JSON object body, e.g. {{"model": ..., "delete": [ids]}} or '
            '{"model": ..., "clear": true}',
            "invalid_body",
        )
    return body


def _create_time(entry: Any) -> float:
    try:
        value = entry["prompt"][3].get("create_time", 0)
        return float(value) if isinstance(value, int | float) else 0.0
    except (KeyError, IndexError, TypeError, AttributeError):
        return 0.0


async def get_history(request: web.Request) -> web.StreamResponse:
    """The history of every serving pod, merged (oldest first); `max_items` keeps the newest."""
    inc = await incoming(request)
    app = app_of(request, inc)
    for name in ("max_items", "offset"):
        _int(request.rel_url.query.get(name), None, name)
    merged: dict[str, Any] = {}
    for _, reply in await context_of(request).up.json_from_all(app.serving_pods(), "GET", inc.url):
        body = reply.json() if isinstance(reply, Reply) and reply.status == 200 else None
        if isinstance(body, dict):
            merged.update(body)
    ordered = sorted(merged.items(), key=lambda item: _create_time(item[1]))
    max_items = request.rel_url.query.get("max_items", "")
    if max_items.isdigit():
        ordered = ordered[-int(max_items) :] if int(max_items) > 0 else []
    return web.json_response(dict(ordered))


async def _by_id(request: web.Request, prompt_id: str) -> web.StreamResponse | list[Reply]:
    """A GET about one prompt: the owner pod's answer when the id is ours (404 when that pod is
    gone); for an id the proxy did not mint, every serving pod's 200 answers, never waking."""
    inc = await incoming(request)
    app = app_by_id(request, inc, prompt_id)
    located = locate(app, prompt_id)
    ctx = context_of(request)
    if located.ours:
        if located.pod is None:
            raise gone(app, prompt_id)
        reply = await ctx.up.call(located.pod, "GET", inc.url, headers=headers_for(request, inc))
        return reply.response()
    answers = await ctx.up.json_from_all(app.serving_pods(), "GET", inc.url)
    return [a for _, a in answers if isinstance(a, Reply) and a.status == 200]


async def get_history_id(request: web.Request) -> web.StreamResponse:
    found = await _by_id(request, request.match_info["prompt_id"])
    if not isinstance(found, list):
        return found
    for answer in found:
        body = answer.json()
        if isinstance(body, dict) and body:
            return web.json_response(body)
    return web.json_response({})


def _int(value: str | None, default: int | None, name: str) -> int | None:
    if value is None:
        return default
    try:
        return int(value)
    except ValueError as exc:
        raise bad_request(f"{name} must be an integer") from exc


async def get_jobs(request: web.Request) -> web.StreamResponse:
    """`/api/jobs` of every serving pod, merged, sorted and paged as ComfyUI would."""
    inc = await incoming(request)
    app = app_of(request, inc)
    query = request.rel_url.query
    limit = _int(query.get("limit"), None, "limit")
    offset = max(0, _int(query.get("offset"), 0, "offset") or 0)
    if limit is not None and limit <= 0:
        raise bad_request("limit must be a positive integer")
    sort_by = query.get("sort_by", "created_at").lower()
    descending = query.get("sort_order", "desc").lower() == "desc"
    upstream = inc.url.without_query_params("offset", "limit")
    if limit is not None:
        upstream = upstream.update_query(limit=offset + limit)
    jobs: list[dict[str, Any]] = []
    total = 0
    for _, reply in await context_of(request).up.json_from_all(app.serving_pods(), "GET", upstream):
        if isinstance(reply, Reply) and reply.status != 200:
            return reply.response()  # ComfyUI's own validation error
        body = reply.json() if isinstance(reply, Reply) else None
        if isinstance(body, dict) and isinstance(body.get("jobs"), list):
            jobs += [job for job in body["jobs"] if isinstance(job, dict)]
            pagination = body.get("pagination")
            counted = pagination.get("total") if isinstance(pagination, dict) else None
            total += counted if isinstance(counted, int) else len(body["jobs"])

    def key(job: dict[str, Any]) -> float:
        if sort_by == "execution_duration":
            start, end = job.get("execution_start_time"), job.get("execution_end_time")
            return float(end - start) if start and end else 0.0
        value = job.get("create_time", 0)
        return float(value) if isinstance(value, int | float) else 0.0

    jobs.sort(key=key, reverse=descending)
    page = jobs[offset:] if limit is None else jobs[offset : offset + limit]
    pagination = {
        "offset": offset,
        "limit": limit,
        "total": total,
        "has_more": offset + len(page) < total,
    }
    return web.json_response({"jobs": page, "pagination": pagination})


async def get_job_id(request: web.Request) -> web.StreamResponse:
    found = await _by_id(request, request.match_info["job_id"])
    if not isinstance(found, list):
        return found
    if found:
        return found[0].response()
    return web.json_response({"error": "Job not found"}, status=404)


# -- interrupt, free --------------------------------------------------------------------------


async def post_interrupt(request: web.Request) -> web.StreamResponse:
    inc = await incoming(request)
    data = optional_object(inc, "interrupt")
    prompt_id = data.get("prompt_id")
    app = (
        app_by_id(request, inc, prompt_id)
        if isinstance(prompt_id, str) and prompt_id
        else app_of(request, inc)
    )
    body = json.dumps(data).encode()
    targets = {p.name: (p, body) for p in app.serving_pods()}
    if isinstance(prompt_id, str) and prompt_id:
        located = locate(app, prompt_id)
        if located.ours:
            if located.pod is None:
                raise gone(app, prompt_id)
            targets = {located.pod.name: (located.pod, body)}
    return await to_pods(request, targets, inc)


async def post_free(request: web.Request) -> web.StreamResponse:
    """Free memory on every serving pod; an application at zero has nothing to free (not
    woken)."""
    inc = await incoming(request)
    app = app_of(request, inc)
    body = json.dumps(optional_object(inc, "free")).encode()  # ComfyUI parses it as JSON
    return await to_pods(request, {p.name: (p, body) for p in app.serving_pods()}, inc)


# -- files ------------------------------------------------------------------------------------


async def get_view(request: web.Request) -> web.StreamResponse:
    """An output of a proxy-minted prompt (`subfolder` starts with its id) comes from the pod
    that ran it; any other file from the first serving pod that has it. Never wakes."""
    ctx = context_of(request)
    inc = await incoming(request)
    subfolder = request.rel_url.query.get("subfolder", "")
    first = subfolder.lstrip("/").split("/", 1)[0]
    app = app_by_id(request, inc, first)
    located = locate(app, first)
    headers = headers_for(request, inc)
    if located.ours:
        if located.pod is None:
            raise gone(app, first)
        response = await ctx.up.relay(request, located.pod, inc.url, headers=headers)
        assert response is not None
        return response
    for pod in app.serving_pods():
        try:
            found = await ctx.up.relay(
                request, pod, inc.url, headers=headers, accept=lambda status: status != 404
            )
        except UpstreamError as exc:
            log.warning("view: pod unreachable", pod=pod.name, error=exc.message)
            continue
        if found is not None:
            return found
    where = "no pod of it is running" if not app.serving_pods() else "no running pod has it"
    raise not_found(f"file not found for {app.name}: {where}", kind="file_not_found")


UPLOAD_TYPES = ("input", "temp", "output")


def check_upload(request: web.Request, inc: Incoming) -> None:
    """Refuse (400) the uploads ComfyUI would answer with a bare 500."""
    mime = parse_mimetype(inc.content_type or "")
    boundary = mime.parameters.get("boundary")
    parts = split_multipart(inc.body, boundary.encode("latin-1")) if boundary else None
    if parts is None:
        raise bad_request(
            'uploads are multipart/form-data with a file field "image"', "invalid_upload"
        )
    fields = {}
    for part in parts:
        name, is_file, content = part_field(part)
        if name is not None and name not in fields:
            fields[name] = (is_file, content)
    image = fields.get("image")
    if image is not None and not image[0]:
        raise bad_request('the form field "image" must be a file', "invalid_upload")
    kind = fields.get("type")
    if kind is not None and kind[1].decode(errors="replace") not in UPLOAD_TYPES:
        raise bad_request(f'"type" must be one of {", ".join(UPLOAD_TYPES)}', "invalid_upload")
    if request.path.endswith("/mask"):
        try:
            ref = json.loads(fields["original_ref"][1]) if "original_ref" in fields else None
        except ValueError:
            ref = None
        if not isinstance(ref, dict) or not isinstance(ref.get("filename"), str):
            raise bad_request(
                'a mask upload needs "original_ref", the JSON of the image it belongs to, '
                'e.g. {"filename": "x.png", "subfolder": "", "type": "input"}',
                "invalid_upload",
            )


async def post_upload(request: web.Request) -> web.StreamResponse:
    """Uploads go to every serving pod (whichever runs the prompt must see the file); the
    answer is the first pod's. Multi-pod applications should share an input volume."""
    ctx = context_of(request)
    inc = await incoming(request)
    app = app_of(request, inc)
    check_upload(request, inc)
    first = await ctx.hold(request, app)
    pods = [first] + [p for p in app.serving_pods() if p.name != first.name]
    headers = headers_for(request, inc)

    async def one(pod: PodState) -> Reply | UpstreamError:
        try:
            return await ctx.up.call(pod, "POST", inc.url, headers=headers, body=inc.body)
        except UpstreamError as exc:
            log.warning("upload to a pod failed", pod=pod.name, error=exc.message)
            return exc

    results = await asyncio.gather(*(one(pod) for pod in pods))
    reply = next((r for r in results if isinstance(r, Reply)), None)
    if reply is None:
        first_error = results[0]
        assert isinstance(first_error, UpstreamError)
        raise first_error
    return reply.response()


# -- live requests ----------------------------------------------------------------------------


async def live(request: web.Request) -> web.StreamResponse:
    """A request that needs a running ComfyUI: wake and hold, then the least loaded pod."""
    ctx = context_of(request)
    inc = await incoming(request)
    app = app_of(request, inc)
    pod = await ctx.hold(request, app)
    return await relay_live(request, app, inc, pod)


# -- table ------------------------------------------------------------------------------------


def method_not_allowed(methods: set[str]) -> Handler:
    async def refuse(request: web.Request) -> web.StreamResponse:
        raise ProxyError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed on {request.path} (allowed: "
            f"{', '.join(sorted(methods))})",
            headers={"Allow": ", ".join(sorted(methods))},
        )

    return refuse


def _kind(kind: str, handler: Handler) -> Handler:
    async def labelled(request: web.Request) -> web.StreamResponse:
        request[ROUTE] = kind
        return await handler(request)

    return labelled


COMFY_ROUTES: list[tuple[str, str, str, Handler]] = [
    ("POST", "/prompt", "prompt", post_prompt),
    ("GET", "/prompt", "queue", get_prompt),
    ("GET", "/queue", "queue", get_queue),
    ("POST", "/queue", "queue", post_queue),
    ("GET", "/history", "history", get_history),
    ("POST", "/history", "history", post_history),
    ("GET", "/history/{prompt_id}", "history", get_history_id),
    ("GET", "/view", "view", get_view),
    ("POST", "/upload/image", "upload", post_upload),
    ("POST", "/upload/mask", "upload", post_upload),
    ("POST", "/interrupt", "interrupt", post_interrupt),
    ("POST", "/free", "free", post_free),
    ("GET", "/system_stats", "info", live),
    ("GET", "/object_info", "info", live),
    ("GET", "/object_info/{node_class}", "info", live),
    ("GET", "/features", "info", live),
    ("GET", "/embeddings", "info", live),
    ("GET", "/models", "info", live),
    ("GET", "/models/{folder}", "info", live),
]
JOB_ROUTES: list[tuple[str, str, str, Handler]] = [
    ("GET", "/api/jobs", "jobs", get_jobs),
    ("GET", "/api/jobs/{job_id}", "jobs", get_job_id),
]


def paths(path: str) -> Iterable[str]:
    for base in ("", OPENAI):
        yield base + "/api" + path
        yield base + path


def add_routes(app: web.Application) -> None:
    router = app.router
    for base in ("", OPENAI):
        for method, path, kind, handler in JOB_ROUTES:
            router.add_route(method, base + path, _kind(kind, handler))
    for method, path, kind, handler in COMFY_ROUTES:
        for full in paths(path):
            router.add_route(method, full, _kind(kind, handler))
    for full in paths("/ws"):
        router.add_get(full, _kind("ws", ws.comfy_ws))
    # A ComfyUI path with a method ComfyUI does not serve: 405 here, not forwarded.
    allowed: dict[str, set[str]] = {}
    for method, path, _, _ in [*COMFY_ROUTES, *JOB_ROUTES, ("GET", "/ws", "", live)]:
        allowed.setdefault(path, set()).update({method, "HEAD"} if method == "GET" else {method})
    for path, methods in allowed.items():
        refuse = _kind("other", method_not_allowed(methods))
        if path.startswith("/api/"):  # the jobs routes exist only under /api
            for base in ("", OPENAI):
                router.add_route("*", base + path, refuse)
        else:
            for full in paths(path):
                router.add_route("*", full, refuse)
    # Everything else ComfyUI serves under /api (userdata, settings, ...): a live request.
    for prefix in ("/api", OPENAI):
        router.add_route("*", prefix + "/{tail:.*}", _kind("other", live))


__all__ = ["add_routes", "prefix_outputs", "upstream_path"]
