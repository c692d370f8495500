"""What every handler shares (settings, registry, control, the upstream client) and the two
things most of them do: find the application, and hold a request until a pod serves it."""

from __future__ import annotations

import asyncio
import contextlib
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

from serverless_comfyui.proxy import ids, metrics
from serverless_comfyui.proxy.control import Control
from serverless_comfyui.proxy.errors import ProxyError, not_found
from serverless_comfyui.proxy.forward import Upstream
from serverless_comfyui.proxy.registry import (
    App,
    HoldRejectedError,
    HoldTimeoutError,
    PodState,
    Registry,
)
from serverless_comfyui.proxy.settings import ProxySettings

HOLD_TIMEOUT_RETRY_AFTER = 10.0
HOLD_REJECTED_RETRY_AFTER = 5.0
ROUTE = web.RequestKey("scui_route", str)
"""The route kind of a request, for the requests metric."""
MODEL = web.RequestKey("scui_model", str)
"""The (known) application of a request, for the metric and the log."""


class ClientGoneError(Exception):
    """The client disconnected while its request was held."""


@dataclass
class ProxyContext:
    settings: ProxySettings
    registry: Registry
    control: Control
    upstream: Upstream | None = None
    """Created when the application starts (one ClientSession for all upstream calls)."""
    sockets: weakref.WeakSet[web.WebSocketResponse] = field(default_factory=weakref.WeakSet)
    """Open client WebSockets, closed on shutdown so it does not wait for them."""
    closing: bool = False
    """Shutting down: held requests are answered 503 at once (the client retries elsewhere)."""

    @property
    def up(self) -> Upstream:
        if self.upstream is None:
            raise RuntimeError("the proxy application has not started")
        return self.upstream

    def app_for(self, request: web.Request, model: str) -> App:
        app = self.registry.get(model)
        if app is None:
            known = ", ".join(sorted(self.registry.apps)) or "none"
            raise not_found(f"unknown application {model!r} (known: {known})", kind="unknown_model")
        request[MODEL] = app.name
        return app

    async def hold(
        self,
        request: web.Request,
        app: App,
        *,
        pick: Callable[[App], PodState | None] | None = None,
        limit_seconds: float | None = None,
    ) -> PodState:
        """A serving pod for `request`: at once if there is one, else wake the application and
        hold the request (bounded: 503 + Retry-After past the limit or the hold queue). A client
        that disconnects while held is dropped (ClientGoneError)."""
        choose = pick or (lambda a: a.pick_for_prompt())
        pod = choose(app)
        if pod is None and self.closing:
            raise ProxyError(
                503, "shutting_down", "the proxy is shutting down; retry", retry_after=1
            )
        if pod is None:
            pod = await self._held(request, app, choose, limit_seconds)
        if app.wake_started is not None:
            metrics.COLD_START_SECONDS.labels(app.name).observe(time.monotonic() - app.wake_started)
            app.wake_started = None
        app.touch()
        return pod

    async def _held(
        self,
        request: web.Request,
        app: App,
        choose: Callable[[App], PodState | None],
        limit_seconds: float | None,
    ) -> PodState:
        limit = limit_seconds or self.settings.hold_timeout_seconds
        started = time.monotonic()
        waiter = asyncio.ensure_future(
            app.wait_for_pod(limit, self.settings.max_held_per_model, self.control.wake, choose)
        )
        try:
            while not waiter.done():
                await asyncio.wait({waiter}, timeout=0.25)
                if waiter.done():
                    break
                if client_gone(request):
                    raise ClientGoneError()
                if self.closing:
                    raise ProxyError(
                        503, "shutting_down", "the proxy is shutting down; retry", retry_after=1
                    )
            return waiter.result()
        except HoldTimeoutError as exc:
            raise ProxyError(
                503,
                "hold_timeout",
                f"{exc}: the application is starting (or cannot start); retry later",
                retry_after=HOLD_TIMEOUT_RETRY_AFTER,
            ) from exc
        except HoldRejectedError as exc:
            raise ProxyError(
                503,
                "hold_rejected",
                f"{exc}: too many requests are waiting for the application to start",
                retry_after=HOLD_REJECTED_RETRY_AFTER,
            ) from exc
        finally:
            if not waiter.done():
                waiter.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await waiter
            metrics.HOLD_SECONDS.labels(app.name).observe(time.monotonic() - started)


CONTEXT = web.AppKey("scui_proxy_context", ProxyContext)


def context_of(request: web.Request) -> ProxyContext:
    return request.app[CONTEXT]


def client_gone(request: web.BaseRequest) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


@dataclass(frozen=True)
class Located:
    """Where a prompt id leads within one application."""

    ours: bool
    """Minted by a proxy for this application."""
    pod: PodState | None
    """Its pod, when ours and the pod still exists."""


def locate(app: App, prompt_id: str) -> Located:
    route = ids.decode(prompt_id) if isinstance(prompt_id, str) else None
    if route is None or route.model_hash != app.hash:
        return Located(ours=False, pod=None)
    return Located(ours=True, pod=app.pod_by_hash(route.pod_hash))


def current_pod(app: App, pod: PodState) -> PodState | None:
    """The pod's state object now (discovery replaces it when the pod changes)."""
    return app.pods.get(pod.name)
