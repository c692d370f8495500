"""Assembly of the fake ComfyUI: the aiohttp application and the server loop."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from serverless_comfyui.emulator import control, routes_files, routes_prompt, routes_server
from serverless_comfyui.emulator.executor import Executor
from serverless_comfyui.emulator.keys import STATE
from serverless_comfyui.emulator.middleware import fault_middleware, origin_only_middleware
from serverless_comfyui.emulator.settings import EmulatorSettings
from serverless_comfyui.emulator.state import build_state
from serverless_comfyui.emulator.worker import prompt_worker

log = structlog.get_logger("comfyui-emulator")


def _comfy_routes() -> list[web.RouteDef]:
    """Every ComfyUI route, bare and under `/api`, as `PromptServer.add_routes` registers them."""
    bare: list[web.RouteDef] = []
    for table in (routes_server.routes, routes_prompt.routes, routes_files.routes):
        bare += [r for r in table if isinstance(r, web.RouteDef)]
    api = [web.RouteDef(r.method, "/api" + r.path, r.handler, r.kwargs) for r in bare]
    return api + bare


async def _background(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    executor = Executor(state)
    tasks = [
        asyncio.create_task(state.hub.publish_loop(), name="comfyui-emulator-publisher"),
        asyncio.create_task(prompt_worker(state, executor), name="comfyui-emulator-worker"),
    ]
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    if state.tmpdir is not None:
        state.tmpdir.cleanup()


async def _close_sockets(app: web.Application) -> None:
    await app[STATE].hub.close_all()


def create_app(settings: EmulatorSettings) -> web.Application:
    """A fake ComfyUI 0.8.0 as an aiohttp application (not started)."""
    state = build_state(settings)
    app = web.Application(
        client_max_size=round(settings.max_upload_size_mb * 1024 * 1024),
        middlewares=[fault_middleware, origin_only_middleware],
    )
    app[STATE] = state
    app.add_routes(_comfy_routes())
    app.add_routes(control.routes)
    app.cleanup_ctx.append(_background)
    app.on_shutdown.append(_close_sockets)
    return app


async def run_emulator(settings: EmulatorSettings) -> None:
    """Serve a fake ComfyUI on settings.host:settings.port until cancelled."""
    if settings.startup_delay_seconds > 0:
        log.info("delaying start-up", seconds=settings.startup_delay_seconds)
        await asyncio.sleep(settings.startup_delay_seconds)
    app = create_app(settings)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        state = app[STATE]
        log.info(
            "comfyui emulator listening",
            address=[str(a) for a in runner.addresses],
            data_dir=str(state.dirs.input).rsplit("/", 1)[0],
            step_seconds=state.controls.step_seconds,
            model_load_seconds=state.controls.model_load_seconds,
        )
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()
        log.info("comfyui emulator stopped")
