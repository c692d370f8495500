"""Operational endpoints, never authenticated: liveness, readiness and Prometheus metrics."""

from __future__ import annotations

import contextlib

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from serverless_comfyui.proxy import metrics
from serverless_comfyui.proxy.context import ROUTE, context_of
from serverless_comfyui.proxy.registry import Registry


async def healthz(request: web.Request) -> web.StreamResponse:
    request[ROUTE] = "ops"
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.StreamResponse:
    """Ready once discovery has its initial state (before that every model looks unknown)."""
    request[ROUTE] = "ops"
    ctx = context_of(request)
    if not ctx.control.synced:
        return web.json_response({"status": "syncing"}, status=503)
    return web.json_response({"status": "ready", "applications": sorted(ctx.registry.apps)})


_exported: set[str] = set()
"""Applications whose gauges this process exports."""


def refresh_gauges(registry: Registry) -> None:
    """Set the per-application gauges from the registry (read at scrape time, always current)."""
    known = set(registry.apps)
    for gone in _exported - known:  # applications that went away
        gauges = (metrics.HELD, metrics.OUTSTANDING, metrics.OPEN_SESSIONS, metrics.SERVING_PODS)
        for gauge in gauges:
            with contextlib.suppress(KeyError):
                gauge.remove(gone)
    _exported.clear()
    _exported.update(known)
    for app in registry.apps.values():
        metrics.HELD.labels(app.name).set(app.held)
        metrics.OUTSTANDING.labels(app.name).set(app.outstanding)
        metrics.OPEN_SESSIONS.labels(app.name).set(app.open_sessions)
        metrics.SERVING_PODS.labels(app.name).set(len(app.serving_pods()))


async def metrics_endpoint(request: web.Request) -> web.StreamResponse:
    request[ROUTE] = "ops"
    refresh_gauges(context_of(request).registry)
    return web.Response(
        body=generate_latest(metrics.REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
    )


def add_routes(app: web.Application) -> None:
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
