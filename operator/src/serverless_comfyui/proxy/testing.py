"""Test helper: run the proxy in-process on a free loopback port.

async with serve_proxy(ProxySettings(static_backends={"flux": [emu.url]})) as proxy:
    ...  # talk to proxy.url ("http://127.0.0.1:<port>"); proxy.registry is its registry
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from serverless_comfyui.proxy.app import create_app
from serverless_comfyui.proxy.control import Control
from serverless_comfyui.proxy.registry import Registry
from serverless_comfyui.proxy.settings import ProxySettings
from serverless_comfyui.proxy.static import StaticControl


@dataclass
class RunningProxy:
    app: web.Application
    registry: Registry
    control: Control
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"


@asynccontextmanager
async def serve_proxy(
    settings: ProxySettings,
    registry: Registry | None = None,
    control: Control | None = None,
    host: str = "127.0.0.1",
) -> AsyncIterator[RunningProxy]:
    """Serve `create_app` on `host` and a free port; StaticControl unless `control` is given."""
    registry = registry if registry is not None else Registry()
    control = control if control is not None else StaticControl(settings, registry)
    app = create_app(settings, registry, control)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, 0)
        await site.start()
        port = int(runner.addresses[0][1])
        yield RunningProxy(app=app, registry=registry, control=control, host=host, port=port)
    finally:
        await runner.cleanup()
