"""WebSocket side of the fake ComfyUI: the socket registry and ComfyUI's message queue.

As in `server.PromptServer`, events are queued with `send_sync(event, data, sid)` and a single
publisher sends them in order: to the socket of `sid`, or to every socket when `sid` is None.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import aiohttp
import structlog
from aiohttp import web

log = structlog.get_logger("comfyui-emulator")


class SocketHub:
    def __init__(self) -> None:
        self.sockets: dict[str, web.WebSocketResponse] = {}
        # The client of the prompt being executed (ComfyUI's `server.client_id`).
        self.client_id: str | None = None
        self.last_node_id: str | None = None
        self._messages: asyncio.Queue[tuple[str, Any, str | None]] = asyncio.Queue()

    def send_sync(self, event: str, data: Any, sid: str | None = None) -> None:
        self._messages.put_nowait((event, data, sid))

    async def send(self, event: str, data: Any, sid: str | None = None) -> None:
        message = {"type": event, "data": data}
        if sid is None:
            targets = list(self.sockets.values())
        elif sid in self.sockets:
            targets = [self.sockets[sid]]
        else:
            return
        for ws in targets:
            try:
                await ws.send_json(message)
            except (aiohttp.ClientError, ConnectionError, RuntimeError) as err:
                log.warning("send error", error=str(err))

    async def publish_loop(self) -> None:
        while True:
            event, data, sid = await self._messages.get()
            try:
                await self.send(event, data, sid)
            finally:
                self._messages.task_done()

    async def drain(self, within: float) -> None:
        """Wait (at most `within` seconds) until every queued message has been sent."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._messages.join(), within)

    def attach(self, sid: str, ws: web.WebSocketResponse) -> None:
        # A reconnect with the same clientId replaces the old socket, as in ComfyUI.
        self.sockets[sid] = ws

    def detach(self, sid: str, ws: web.WebSocketResponse) -> None:
        if self.sockets.get(sid) is ws:
            del self.sockets[sid]

    async def close_all(self) -> None:
        for ws in list(self.sockets.values()):
            with contextlib.suppress(Exception):
                await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"Server shutdown")
        self.sockets.clear()
