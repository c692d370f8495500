"""ComfyUI's web UI through the proxy, at `/ui/<model>/`.

Everything under `/ui/<model>/` (the page, its scripts, `/ui/<model>/api/...` and the
`/ui/<model>/ws` WebSocket) goes to one serving pod, pinned per browser by the cookie
`scui_pod_<model>` (ComfyUI keeps the queue, history and the page's socket per pod, so a page
must talk to one pod). ComfyUI's frontend derives its API base from the page's path, so it works
under the sub-path. Requests and the open socket are activity: the application does not scale to
zero under an open page. Opening the page of a sleeping application wakes it; if it is not up
within ~20 s the browser gets a small "starting" page that reloads itself.

The UI talks to its pod as ComfyUI's own frontend does: prompt ids are not minted and outputs are
not prefixed here (the UI shows that pod's queue and history).
"""

from __future__ import annotations

from aiohttp import web

from serverless_comfyui.proxy.context import ROUTE, ProxyContext, context_of
from serverless_comfyui.proxy.errors import ProxyError
from serverless_comfyui.proxy.forward import upstream_headers
from serverless_comfyui.proxy.incoming import read_body
from serverless_comfyui.proxy.registry import App, PodState
from serverless_comfyui.proxy.ws import pipe

UI_ENTRY_HOLD_SECONDS = 20.0
POD_COOKIE = "scui_pod_"
STARTING_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><meta http-equiv="refresh" content="5">
<title>Starting {model}</title></head>
<body style="font-family: sans-serif; margin: 3em">
<h1>Starting {model}&hellip;</h1>
<p>The GPU pod is starting (loading model weights can take several minutes).
This page reloads by itself.</p>
</body></html>
"""


def _split(request: web.Request) -> tuple[str, str]:
    """(model, raw path on the pod) of `/ui/<model>/<rest>`."""
    parts = request.rel_url.raw_path.split("/", 3)  # ["", "ui", model, rest]
    return request.match_info["model"], "/" + (parts[3] if len(parts) > 3 else "")


def _pinned(request: web.Request, app: App) -> PodState | None:
    name = request.cookies.get(POD_COOKIE + app.name)
    pod = app.pods.get(name) if name else None
    # A pod being drained gets no new work: the page moves to another pod.
    return pod if pod is not None and pod.serving and not pod.draining else None


def _query(request: web.Request) -> str:
    rest = request.rel_url.without_query_params("token")
    return "?" + rest.raw_query_string if rest.raw_query_string else ""


async def ui_redirect(request: web.Request) -> web.StreamResponse:
    request[ROUTE] = "ui"
    raise web.HTTPFound(location=f"/ui/{request.match_info['model']}/{_query(request)}")


async def ui(request: web.Request) -> web.StreamResponse:
    request[ROUTE] = "ui"
    ctx = context_of(request)
    model, path = _split(request)
    app = ctx.app_for(request, model)
    pod = _pinned(request, app)
    entry = path == "/" and request.method == "GET"
    if pod is None:
        pod = await _hold(ctx, request, app, entry)
    app.touch()
    path_qs = path + _query(request)
    if path == "/ws" and request.headers.get("Upgrade", "").lower() == "websocket":
        return await pipe(ctx, request, app, pod, path_qs)
    body = await read_body(request, ctx.settings.max_body_bytes)
    headers = dict(upstream_headers(request, request.headers.get("Content-Type")))
    prefix = f"/ui/{app.name}"
    cookie = request.cookies.get(POD_COOKIE + app.name)

    def pin(response: web.StreamResponse) -> None:
        if cookie != pod.name:
            response.set_cookie(
                POD_COOKIE + app.name, pod.name, path=prefix + "/", httponly=True, samesite="Lax"
            )

    response = await ctx.up.relay(
        request,
        pod,
        path_qs,
        headers=headers,
        body=body,
        rewrite_location=lambda loc: prefix + loc if loc.startswith("/") else loc,
        before_prepare=pin,
    )
    assert response is not None
    app.touch()
    return response


async def _hold(ctx: ProxyContext, request: web.Request, app: App, entry: bool) -> PodState:
    if not entry:
        return await ctx.hold(request, app)
    limit = min(ctx.settings.hold_timeout_seconds, UI_ENTRY_HOLD_SECONDS)
    try:
        return await ctx.hold(request, app, limit_seconds=limit)
    except ProxyError as exc:
        if exc.kind != "hold_timeout" or "text/html" not in request.headers.get("Accept", ""):
            raise
        raise web.HTTPServiceUnavailable(
            text=STARTING_PAGE.format(model=app.name),
            content_type="text/html",
            headers={"Retry-After": "5", "Cache-Control": "no-store"},
        ) from exc


def add_routes(app: web.Application) -> None:
    app.router.add_get("/ui/{model}", ui_redirect)
    app.router.add_route("*", "/ui/{model}/{tail:.*}", ui)
