"""Assembly of the proxy: one aiohttp application, one upstream ClientSession, the middlewares
(errors as JSON + request metrics and logs, then API keys and rate limits) and the routes."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from serverless_comfyui.api import ApiSettings, mount_api
from serverless_comfyui.proxy import metrics, routes_comfy, routes_ops, ui
from serverless_comfyui.proxy.auth import ApiKeys, RateLimiter, auth_middleware
from serverless_comfyui.proxy.context import (
    CONTEXT,
    MODEL,
    ROUTE,
    ClientGoneError,
    ProxyContext,
)
from serverless_comfyui.proxy.control import Control
from serverless_comfyui.proxy.errors import ProxyError, error_response
from serverless_comfyui.proxy.forward import Upstream
from serverless_comfyui.proxy.registry import Registry
from serverless_comfyui.proxy.settings import ProxySettings

log = structlog.get_logger("proxy")
QUIET_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
CLIENT_CLOSED = 499
"""Status recorded (never sent) for a request whose client went away."""


def _routing_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    if exc.status == 405:
        return error_response(
            405, "method_not_allowed", f"{request.method} is not allowed on {request.path}"
        )
    return error_response(
        404,
        "not_found",
        f"no such path: {request.path} (ComfyUI's API is under /openai/api/..., /api/... "
        "or at the root; the web UI is at /ui/<model>/)",
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Proxy errors become JSON; every answer is counted and logged."""
    started = time.monotonic()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except ProxyError as exc:
        status = exc.status
        return exc.response()
    except web.HTTPException as exc:
        status = exc.status
        if request.match_info.http_exception is not None:
            return _routing_error(request, exc)
        raise
    except ClientGoneError:
        status = CLIENT_CLOSED
        return web.Response(status=CLIENT_CLOSED)
    except asyncio.CancelledError:
        status = CLIENT_CLOSED
        raise
    except Exception:
        log.exception("request failed", method=request.method, path=request.path)
        return error_response(500, "internal_error", "the proxy failed; see its log")
    finally:
        route = request.get(ROUTE, "unmatched")
        model = request.get(MODEL, "")
        metrics.REQUESTS.labels(route, model, str(status)).inc()
        level = log.debug if request.path in QUIET_PATHS else log.info
        level(
            "request",
            method=request.method,
            path=request.path,
            status=status,
            model=model or None,
            route=route,
            ms=round((time.monotonic() - started) * 1000, 1),
        )


def create_app(settings: ProxySettings, registry: Registry, control: Control) -> web.Application:
    """The proxy as an aiohttp application (not started). Starting it starts `control` and the
    upstream session; cleaning it up stops both."""
    keys = ApiKeys(settings.api_keys_file)
    limiter = RateLimiter(settings.rate_limit_per_minute)
    app = web.Application(
        # Bodies are read (and limited: 413 JSON) by the handlers themselves.
        client_max_size=settings.max_body_bytes + 1024 * 1024,
        middlewares=[error_middleware, auth_middleware(keys, limiter)],
    )
    ctx = ProxyContext(settings=settings, registry=registry, control=control)
    app[CONTEXT] = ctx

    async def on_startup(_: web.Application) -> None:
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            cookie_jar=aiohttp.DummyCookieJar(),  # never carry one client's cookies to another
        )
        ctx.upstream = Upstream(session, settings.upstream_timeout_seconds)
        if not keys.enabled:
            log.warning(
                "no API keys configured: the proxy is open to anyone who can reach it",
                api_keys_file=str(settings.api_keys_file) if settings.api_keys_file else None,
            )
        else:
            log.info("API keys required", keys=keys.count)
        await control.start()
        log.info("proxy started", control=type(control).__name__)

    async def on_shutdown(_: web.Application) -> None:
        ctx.closing = True
        for socket in list(ctx.sockets):
            await socket.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"proxy shutdown")

    async def on_cleanup(_: web.Application) -> None:
        try:
            await control.stop()
        finally:
            if ctx.upstream is not None:
                await ctx.upstream.session.close()
                ctx.upstream = None

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    app.on_cleanup.append(on_cleanup)
    routes_ops.add_routes(app)
    # The generation API (/v1/..., /comfyui-api/...) before the ComfyUI catch-all routes.
    mount_api(
        app,
        ApiSettings(),
        registry,
        control.wake,
        None,
        settings.hold_timeout_seconds,
        settings.max_held_per_model,
        workflow_of=registry.workflow_of,
        synced=lambda: control.synced,
    )
    ui.add_routes(app)
    routes_comfy.add_routes(app)
    return app
