"""Per-pod queue monitors: how many prompts each ComfyUI pod has queued or running.

For every serving pod the proxy keeps a WebSocket to `/ws?clientId=scui-monitor-<replica>`.
ComfyUI broadcasts a `status` message (`exec_info.queue_remaining`) on connect and on every queue
change; each one sets `pod.queue_remaining` and resets `pod.inflight` (the prompts this replica
submitted are now counted by the pod itself). The socket reconnects with exponential backoff.
Every `cross_check_seconds` a `GET /queue` (running + pending) cross-checks the count, so a lost
message or a broken socket cannot leave a stale value for long.

    monitors = PodMonitors(registry, session, replica="proxy-0")
    task = asyncio.create_task(monitors.run())   # or call monitors.sync() after each change
    ...
    await monitors.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from typing import Any

import aiohttp
import structlog

from serverless_comfyui.proxy.registry import PodState, Registry

log = structlog.get_logger("proxy.monitor")

Key = tuple[str, str, str]
"""(model, pod name, pod URL)."""


def queue_remaining_of(message: Any) -> int | None:
    """`exec_info.queue_remaining` of a ComfyUI `status` message, else None."""
    if not isinstance(message, dict) or message.get("type") != "status":
        return None
    data = message.get("data")
    status = data.get("status") if isinstance(data, dict) else None
    info = status.get("exec_info") if isinstance(status, dict) else None
    value = info.get("queue_remaining") if isinstance(info, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class PodMonitors:
    """Keeps one queue monitor per serving pod of every application in the registry."""

    def __init__(
        self,
        registry: Registry,
        session: aiohttp.ClientSession,
        *,
        replica: str = "",
        cross_check_seconds: float = 10.0,
        max_backoff_seconds: float = 10.0,
    ) -> None:
        self.registry = registry
        self.session = session
        self.client_id = f"scui-monitor-{replica or socket.gethostname()}"
        self.cross_check_seconds = cross_check_seconds
        self.max_backoff_seconds = max_backoff_seconds
        self._tasks: dict[Key, asyncio.Task[None]] = {}

    @property
    def watched(self) -> set[Key]:
        """(model, pod name, pod URL) of every pod monitored now."""
        return set(self._tasks)

    def sync(self) -> None:
        """Start monitors for serving pods that have none, stop those of pods that are gone
        (or no longer serving). Cheap; call it after every change of the registry."""
        desired = {
            (app.name, pod.name, pod.url)
            for app in self.registry.apps.values()
            for pod in app.pods.values()
            if pod.serving
        }
        for key in set(self._tasks) - desired:
            self._tasks.pop(key).cancel()
        for key in desired - set(self._tasks):
            self._tasks[key] = asyncio.create_task(self._monitor(*key), name=f"monitor-{key[1]}")

    async def run(self, poll_seconds: float = 1.0) -> None:
        """sync() whenever an application's pods change, and every `poll_seconds` (new
        applications); until cancelled."""
        while True:
            self.sync()
            waits = [
                asyncio.ensure_future(app.wait_changed(poll_seconds))
                for app in self.registry.apps.values()
            ]
            if not waits:
                await asyncio.sleep(poll_seconds)
                continue
            try:
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    async def close(self) -> None:
        tasks = list(self._tasks.values())
        self._tasks.clear()
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    # -- one pod ----------------------------------------------------------------------------

    def _pod(self, model: str, name: str) -> PodState | None:
        """The pod's current state object (discovery replaces it on every update)."""
        app = self.registry.get(model)
        return app.pods.get(name) if app is not None else None

    def _set(self, model: str, name: str, queue_remaining: int) -> None:
        pod = self._pod(model, name)
        if pod is not None:
            pod.queue_remaining = queue_remaining
            pod.inflight = 0

    async def _monitor(self, model: str, name: str, url: str) -> None:
        checker = asyncio.create_task(self._cross_check(model, name, url))
        try:
            await self._watch(model, name, url)
        finally:
            checker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await checker

    async def _watch(self, model: str, name: str, url: str) -> None:
        backoff = 0.25
        while True:
            try:
                async with self.session.ws_connect(
                    f"{url}/ws",
                    params={"clientId": self.client_id},
                    heartbeat=30,
                    timeout=aiohttp.ClientWSTimeout(ws_close=5),
                ) as ws:
                    log.debug("monitor connected", model=model, pod=name)
                    backoff = 0.25
                    async for message in ws:
                        if message.type != aiohttp.WSMsgType.TEXT:
                            continue
                        try:
                            remaining = queue_remaining_of(json.loads(message.data))
                        except ValueError:
                            continue
                        if remaining is not None:
                            self._set(model, name, remaining)
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                log.info("monitor disconnected", model=model, pod=name, error=str(exc) or type(exc))
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_seconds)

    async def _cross_check(self, model: str, name: str, url: str) -> None:
        while True:
            await asyncio.sleep(self.cross_check_seconds)
            try:
                async with self.session.get(
                    f"{url}/queue", timeout=aiohttp.ClientTimeout(total=10)
                ) as answer:
                    queue = await answer.json(content_type=None) if answer.status == 200 else None
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as exc:
                log.info("queue cross-check failed", model=model, pod=name, error=str(exc))
                continue
            if isinstance(queue, dict):
                running = queue.get("queue_running") or []
                pending = queue.get("queue_pending") or []
                if isinstance(running, list) and isinstance(pending, list):
                    self._set(model, name, len(running) + len(pending))
