"""Static mode: fixed ComfyUI backends from `settings.static_backends`, no Kubernetes.

`{"flux": ["http://127.0.0.1:8188", "http://127.0.0.1:8189"]}` gives application `flux` with
pods `flux-0` and `flux-1`, all ready. Nothing scales: wake is a no-op, and a model with an empty
list holds its requests until the hold limit (503). Pod names are stable, so prompt ids minted
before a restart still route after it. Queue monitors keep each pod's outstanding count.
"""

from __future__ import annotations

import asyncio
import contextlib

import aiohttp
import structlog

from serverless_comfyui.proxy.monitor import PodMonitors
from serverless_comfyui.proxy.registry import App, PodState, Registry
from serverless_comfyui.proxy.settings import ProxySettings

log = structlog.get_logger("proxy.static")


def static_pod_name(model: str, index: int) -> str:
    return f"{model}-{index}"


class StaticControl:
    def __init__(self, settings: ProxySettings, registry: Registry) -> None:
        self.settings = settings
        self.registry = registry
        self._synced = False
        self._session: aiohttp.ClientSession | None = None
        self._monitors: PodMonitors | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def synced(self) -> bool:
        return self._synced

    async def start(self) -> None:
        for model, urls in self.settings.static_backends.items():
            app = self.registry.ensure(model)
            app.spec.min_replicas = app.spec.max_replicas = app.spec.replicas = len(urls)
            for index, url in enumerate(urls):
                name = static_pod_name(model, index)
                app.set_pod(PodState(name=name, url=url.rstrip("/"), ready=True))
            log.info("static application", model=model, pods=len(urls))
        self._session = aiohttp.ClientSession()
        self._monitors = PodMonitors(self.registry, self._session, replica=self.settings.pod_name)
        self._task = asyncio.create_task(self._monitors.run(), name="static-pod-monitors")
        self._synced = True

    async def stop(self) -> None:
        self._synced = False
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._monitors is not None:
            await self._monitors.close()
            self._monitors = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def wake(self, app: App) -> None:
        """Static backends are always on (or never there): nothing to wake."""
        return None
