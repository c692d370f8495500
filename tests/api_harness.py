"""Helpers for the generation API's tests: fast settings, the API served on a loopback port
(mounted like the proxy mounts it), ComfyUI emulators in-process or as processes, and a
webhook receiver."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from serverless_comfyui.api import ApiService, ApiSettings, mount_api
from serverless_comfyui.api.store import TaskStore, open_store
from serverless_comfyui.emulator.settings import EmulatorSettings
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator
from serverless_comfyui.proxy.registry import App, PodState, Registry
from serverless_comfyui.testworld.processes import ManagedProcess, free_port

MODEL = "flux"
FIXTURES = Path(__file__).parent / "fixtures"


def fast_settings(tmp_path: Path, store_url: str, **overrides: Any) -> ApiSettings:
    """Settings with every interval short enough for tests."""
    values: dict[str, Any] = {
        "store_url": store_url,
        "results_dir": tmp_path / "results",
        "poll_seconds": 0.2,
        "owner_ttl_seconds": 1.0,
        "recovery_interval_seconds": 0.2,
        "pod_lost_grace_seconds": 1.0,
        "webhook_initial_backoff_seconds": 0.1,
        "webhook_max_backoff_seconds": 1.0,
        "webhook_poll_seconds": 0.05,
        "webhook_timeout_seconds": 2.0,
        "sync_wait_seconds": 30.0,
        "replica_name": "test",
        "store_prefix": f"t{time.monotonic_ns()}:",
        "upstream_timeout_seconds": 5.0,
    }
    values.update(overrides)
    return ApiSettings(**values)


def file_store_url(tmp_path: Path) -> str:
    return f"file://{tmp_path / 'store'}"


def flux_body(**overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": MODEL,
        "prompt": "a lighthouse on a cliff at dawn",
        "width": 256,
        "height": 256,
        "steps": 4,
        "seed": 7,
    }
    body.update(overrides)
    return {k: v for k, v in body.items() if v is not None}


async def no_wake(app: App) -> None:
    return None


@dataclass
class RunningApi:
    url: str
    """The proxy-like root: the API is at {url}/v1, comfyui-api at {url}/comfyui-api."""
    service: ApiService
    runner: web.AppRunner
    crashed: bool = False

    @property
    def v1(self) -> str:
        return f"{self.url}/v1"

    async def crash(self) -> None:
        """Stop as a killed process would: nothing handed over, the heartbeat just expires."""
        self.crashed = True
        await self.service.stop(crash=True)
        await self.runner.cleanup()


@contextlib.asynccontextmanager
async def serve_api(
    settings: ApiSettings,
    registry: Registry,
    wake: Callable[[App], Awaitable[None]] = no_wake,
    *,
    hold_timeout_seconds: float = 30.0,
    max_held: int = 100,
    store: TaskStore | None = None,
    synced: Callable[[], bool] | None = None,
) -> AsyncIterator[RunningApi]:
    parent = web.Application()
    service = mount_api(
        parent,
        settings,
        registry,
        wake,
        None,
        hold_timeout_seconds,
        max_held,
        store=store,
        synced=synced,
    )
    runner = web.AppRunner(parent, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    api = RunningApi(url=f"http://127.0.0.1:{port}", service=service, runner=runner)
    try:
        yield api
    finally:
        if not api.crashed:
            await runner.cleanup()


def add_pod(registry: Registry, name: str, url: str, model: str = MODEL) -> PodState:
    pod = PodState(name=name, url=url, ready=True)
    registry.ensure(model).set_pod(pod)
    return pod


@contextlib.asynccontextmanager
async def emulator(tmp_path: Path, name: str, **overrides: Any) -> AsyncIterator[RunningEmulator]:
    values: dict[str, Any] = {"data_dir": tmp_path / f"emu-{name}", "step_seconds": 0.01}
    values.update(overrides)
    async with serve_emulator(EmulatorSettings(**values)) as emu:
        yield emu


def emulator_process(tmp_path: Path, name: str, *extra: str) -> tuple[ManagedProcess, str]:
    """A ComfyUI emulator in its own process (for faults that exit the process)."""
    port = free_port()
    args = [
        sys.executable,
        "-m",
        "serverless_comfyui.emulator",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(tmp_path / f"emu-{name}"),
        *extra,
    ]
    proc = ManagedProcess(f"emulator-{name}", args, tmp_path / f"emu-{name}.log")
    proc.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        proc.ensure_alive()
        try:
            with urllib.request.urlopen(f"{url}/system_stats", timeout=0.5) as answer:
                if answer.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.05)
    proc.stop()
    raise TimeoutError(f"emulator {name} did not start:\n{proc.tail()}")


async def emulator_state(session: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with session.get(f"{url}/_emulator/state") as answer:
        data: dict[str, Any] = await answer.json()
        return data


async def wait_task(
    session: aiohttp.ClientSession,
    v1: str,
    task_id: str,
    until: Callable[[dict[str, Any]], bool],
    within: float = 30.0,
) -> dict[str, Any]:
    deadline = time.monotonic() + within
    task: dict[str, Any] = {}
    while time.monotonic() < deadline:
        async with session.get(f"{v1}/tasks/{task_id}") as answer:
            assert answer.status == 200, await answer.text()
            task = await answer.json()
        if until(task):
            return task
        await asyncio.sleep(0.05)
    raise AssertionError(
        f"task {task_id} did not get there in {within}s: {json.dumps(task)[:2000]}"
    )


def final(task: dict[str, Any]) -> bool:
    return task["status"] in ("completed", "failed", "cancelled")


@dataclass
class Receiver:
    """A webhook receiver on loopback that answers the statuses it is told to, in order."""

    url: str = ""
    statuses: list[int] = field(default_factory=list)
    requests: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    default_status: int = 204

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        self.requests.append((time.monotonic(), dict(request.headers), body))
        status = self.statuses.pop(0) if self.statuses else self.default_status
        return web.Response(status=status)


@contextlib.asynccontextmanager
async def webhook_receiver(**kwargs: Any) -> AsyncIterator[Receiver]:
    receiver = Receiver(**kwargs)
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    receiver.url = f"http://127.0.0.1:{runner.addresses[0][1]}/hook"
    try:
        yield receiver
    finally:
        await runner.cleanup()


def make_store(url: str, prefix: str, retention: float = 3600.0) -> TaskStore:
    return open_store(url, prefix=prefix, retention_seconds=retention)
