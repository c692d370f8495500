"""Test helper: run a fake ComfyUI in-process on a free loopback port.

async with serve_emulator(EmulatorSettings(data_dir=tmp_path)) as emu:
    ...  # talk to emu.url ("http://127.0.0.1:<port>")
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

from aiohttp import web

from serverless_comfyui.emulator.app import create_app
from serverless_comfyui.emulator.keys import STATE
from serverless_comfyui.emulator.settings import EmulatorSettings
from serverless_comfyui.emulator.state import EmulatorState


@dataclass
class RunningEmulator:
    app: web.Application
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def state(self) -> EmulatorState:
        return self.app[STATE]


@asynccontextmanager
async def serve_emulator(settings: EmulatorSettings) -> AsyncIterator[RunningEmulator]:
    """Serve `create_app(settings)` on settings.host and a free port (settings.port is ignored)."""
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, 0)
        await site.start()
        port = int(runner.addresses[0][1])
        settings.port = port
        yield RunningEmulator(app=app, host=settings.host, port=port)
    finally:
        await runner.cleanup()
