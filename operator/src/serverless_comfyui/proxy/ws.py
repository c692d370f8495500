"""ComfyUI's WebSocket through the proxy.

`/ws?clientId=X&model=M` fans in: the proxy connects to `/ws?clientId=X` on EVERY serving pod of
the application (and on pods that become ready later; a pod's socket goes when the pod leaves
the registry) and forwards every message, text and binary, to the client; what the client sends
goes to every pod. Because the client hears all pods, its prompts can go to the least loaded pod
whatever their `client_id`. Two messages are merged so the client sees one ComfyUI:
`status` carries the sum of `queue_remaining` over the pods, and the `feature_flags` answer is
sent once. Without `clientId` the proxy picks one (as ComfyUI would) so all pods share it.

An open socket is activity (`app.session()`): the application does not scale to zero under it.
The model comes from the query or the `X-Model` header; without one the answer is 400 JSON,
before upgrading. With no serving pod the upgrade waits (held, bounded) while the app wakes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid

import aiohttp
import structlog
from aiohttp import web

from serverless_comfyui.proxy.context import ProxyContext, context_of
from serverless_comfyui.proxy.forward import upstream_headers
from serverless_comfyui.proxy.incoming import (
    MODEL_FIELD,
    TOKEN_QUERY,
    model_from_query_or_header,
    require_model,
)
from serverless_comfyui.proxy.monitor import queue_remaining_of
from serverless_comfyui.proxy.registry import App, PodState

log = structlog.get_logger("proxy.ws")

HEARTBEAT_SECONDS = 30.0
RECONCILE_SECONDS = 5.0
RECONNECT_DELAY_SECONDS = 1.0
WS_DROP = frozenset({"sec-websocket-protocol"})


def upstream_ws_headers(request: web.Request) -> dict[str, str]:
    return {k: v for k, v in upstream_headers(request).items() if k.lower() not in WS_DROP}


class FanIn:
    """One client WebSocket joined to the WebSockets of all serving pods of an application."""

    def __init__(
        self,
        ctx: ProxyContext,
        request: web.Request,
        app: App,
        client: web.WebSocketResponse,
        params: dict[str, str],
    ) -> None:
        self.ctx = ctx
        self.app = app
        self.client = client
        self.params = params
        self.headers = upstream_ws_headers(request)
        self.upstreams: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}
        self.failed_at: dict[str, float] = {}
        self.queue_remaining: dict[str, int] = {}
        self.sent_feature_flags = False
        self.lock = asyncio.Lock()

    async def run(self) -> None:
        watcher = asyncio.create_task(self._watch(), name="ws-fan-in-watch")
        try:
            async for message in self.client:
                if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                    await self._to_pods(message.data)
        finally:
            watcher.cancel()
            tasks = list(self.tasks.values())
            for task in tasks:
                task.cancel()
            for task in [watcher, *tasks]:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for upstream in list(self.upstreams.values()):
                with contextlib.suppress(Exception):
                    await upstream.close()

    async def _to_pods(self, data: str | bytes) -> None:
        for name, upstream in list(self.upstreams.items()):
            try:
                if isinstance(data, str):
                    await upstream.send_str(data)
                else:
                    await upstream.send_bytes(data)
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
                log.info("ws send to pod failed", pod=name, error=str(exc))

    async def _watch(self) -> None:
        while not self.client.closed:
            if self.ctx.registry.get(self.app.name) is not self.app:
                log.info("ws closed: application removed", model=self.app.name)
                await self.client.close(
                    code=aiohttp.WSCloseCode.GOING_AWAY, message=b"application removed"
                )
                return
            self._reconcile()
            await self.app.wait_changed(RECONCILE_SECONDS)

    def _reconcile(self) -> None:
        now = time.monotonic()
        for pod in self.app.serving_pods():
            if pod.name in self.tasks:
                continue
            if now - self.failed_at.get(pod.name, -1e9) < RECONNECT_DELAY_SECONDS:
                continue
            self.tasks[pod.name] = asyncio.create_task(self._pod(pod), name=f"ws-{pod.name}")
        for name, task in list(self.tasks.items()):
            if name not in self.app.pods:  # a pod being drained still reports its prompts
                task.cancel()

    async def _pod(self, pod: PodState) -> None:
        try:
            async with self.ctx.up.session.ws_connect(
                f"{pod.url}/ws",
                params=self.params,
                headers=self.headers,
                heartbeat=HEARTBEAT_SECONDS,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ) as upstream:
                self.upstreams[pod.name] = upstream
                log.debug("ws fan-in connected", pod=pod.name)
                async for message in upstream:
                    if message.type == aiohttp.WSMsgType.TEXT:
                        await self._text_from_pod(pod.name, message.data)
                    elif message.type == aiohttp.WSMsgType.BINARY:
                        async with self.lock:
                            await self.client.send_bytes(message.data)
        except (aiohttp.ClientError, OSError, TimeoutError, RuntimeError) as exc:
            log.info("ws fan-in: pod socket ended", pod=pod.name, error=str(exc) or type(exc))
        finally:
            self.upstreams.pop(pod.name, None)
            self.queue_remaining.pop(pod.name, None)
            self.tasks.pop(pod.name, None)
            self.failed_at[pod.name] = time.monotonic()

    async def _text_from_pod(self, pod: str, text: str) -> None:
        out = text
        try:
            message = json.loads(text)
        except ValueError:
            message = None
        if isinstance(message, dict):
            kind = message.get("type")
            remaining = queue_remaining_of(message)
            if remaining is not None:
                self.queue_remaining[pod] = remaining
                message["data"]["status"]["exec_info"]["queue_remaining"] = sum(
                    self.queue_remaining.values()
                )
                out = json.dumps(message)
            elif kind == "feature_flags":
                if self.sent_feature_flags:
                    return
                self.sent_feature_flags = True
        async with self.lock:
            await self.client.send_str(out)


def _params(request: web.Request, client_id: str) -> dict[str, str]:
    query = request.rel_url.query
    params = {k: v for k, v in query.items() if k not in (MODEL_FIELD, TOKEN_QUERY)}
    params["clientId"] = client_id
    return params


async def comfy_ws(request: web.Request) -> web.StreamResponse:
    ctx = context_of(request)
    model = require_model(model_from_query_or_header(request.rel_url.query, request.headers))
    app = ctx.app_for(request, model)
    client_id = request.rel_url.query.get("clientId") or uuid.uuid4().hex
    await ctx.hold(request, app)  # a serving pod exists (the app is awake) before upgrading
    client = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=0)
    await client.prepare(request)
    ctx.sockets.add(client)
    log.info("ws opened", model=app.name, client_id=client_id)
    with app.session():
        try:
            await FanIn(ctx, request, app, client, _params(request, client_id)).run()
        finally:
            await client.close()
    log.info("ws closed", model=app.name, client_id=client_id)
    return client


async def pipe(
    ctx: ProxyContext, request: web.Request, app: App, pod: PodState, path_qs: str
) -> web.WebSocketResponse:
    """A client WebSocket joined 1:1 to one pod's (the UI's socket to its pinned pod)."""
    client = web.WebSocketResponse(heartbeat=HEARTBEAT_SECONDS, max_msg_size=0)
    await client.prepare(request)
    ctx.sockets.add(client)
    with app.session():
        try:
            async with ctx.up.session.ws_connect(
                pod.url + path_qs,
                headers=upstream_ws_headers(request),
                heartbeat=HEARTBEAT_SECONDS,
                max_msg_size=0,
                timeout=aiohttp.ClientWSTimeout(ws_close=5),
            ) as upstream:

                async def down() -> None:
                    try:
                        async for message in upstream:
                            if message.type == aiohttp.WSMsgType.TEXT:
                                await client.send_str(message.data)
                            elif message.type == aiohttp.WSMsgType.BINARY:
                                await client.send_bytes(message.data)
                            app.touch()
                    finally:
                        await client.close()  # the pod went away: so does the page's socket

                task = asyncio.create_task(down())
                try:
                    async for message in client:
                        if message.type == aiohttp.WSMsgType.TEXT:
                            await upstream.send_str(message.data)
                        elif message.type == aiohttp.WSMsgType.BINARY:
                            await upstream.send_bytes(message.data)
                        app.touch()
                finally:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await task
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("ui ws: pod socket ended", pod=pod.name, error=str(exc) or type(exc))
        finally:
            await client.close()
    return client
