"""From zero pods: the request is held while the application wakes (a wake callback that starts
an emulator and registers it after a delay, as discovery would), then completes."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from pathlib import Path

import aiohttp

from api_harness import (
    MODEL,
    add_pod,
    emulator,
    fast_settings,
    file_store_url,
    final,
    flux_body,
    serve_api,
    wait_task,
)
from serverless_comfyui.proxy.registry import App, Registry

START_DELAY = 0.8


async def test_sync_request_from_zero_pods_is_held_then_completes(tmp_path: Path) -> None:
    registry = Registry()
    registry.ensure(MODEL)  # known application, scaled to zero
    wakes: list[float] = []
    async with contextlib.AsyncExitStack() as stack:
        started = asyncio.Event()

        async def start_pod() -> None:
            await asyncio.sleep(START_DELAY)
            emu = await stack.enter_async_context(emulator(tmp_path, "cold"))
            add_pod(registry, "pod-cold", emu.url)
            started.set()

        starter: list[asyncio.Task[None]] = []

        async def wake(app: App) -> None:
            wakes.append(time.monotonic())
            if not starter:  # idempotent, returns at once: like Control.wake
                starter.append(asyncio.create_task(start_pod()))

        settings = fast_settings(tmp_path, file_store_url(tmp_path))
        async with serve_api(settings, registry, wake) as api, aiohttp.ClientSession() as session:
            t0 = time.monotonic()
            async with session.post(f"{api.v1}/generate", json=flux_body()) as answer:
                task = await answer.json()
                assert answer.status == 200, task
            elapsed = time.monotonic() - t0
            assert started.is_set() and wakes
            assert elapsed >= START_DELAY
            assert task["status"] == "completed"
            assert base64.b64decode(task["results"][0]["base64"])[:4] == b"\x89PNG"
            timings = task["timings"]
            assert timings["cold_start"] is True
            assert START_DELAY - 0.1 <= timings["hold_seconds"] <= elapsed
            assert registry.apps[MODEL].held == 0
            # Warm now: the next request is not held.
            async with session.post(f"{api.v1}/generate", json=flux_body()) as answer:
                warm = await answer.json()
            assert warm["timings"]["cold_start"] is False and warm["timings"]["hold_seconds"] < 0.5


async def test_task_fails_clearly_when_no_pod_ever_comes(tmp_path: Path) -> None:
    registry = Registry()
    registry.ensure(MODEL)
    settings = fast_settings(tmp_path, file_store_url(tmp_path), task_hold_seconds=0.6)
    async with serve_api(settings, registry) as api, aiohttp.ClientSession() as session:
        async with session.post(f"{api.v1}/generate", json=flux_body()) as answer:
            task = await answer.json()
            assert answer.status == 503 and answer.headers["Retry-After"]
        assert task["status"] == "failed" and task["error"]["type"] == "no_capacity"
        assert "no ready pod for 'flux'" in task["error"]["message"]


async def test_tasks_wait_for_discovery_and_for_a_missing_application(tmp_path: Path) -> None:
    """Nothing runs before discovery has synced (after a restart the registry fills up
    later); an application that stays missing fails its tasks after a grace period."""
    registry = Registry()
    synced = False
    settings = fast_settings(tmp_path, file_store_url(tmp_path), missing_model_grace_seconds=0.5)
    async with (
        emulator(tmp_path, "a") as emu,
        aiohttp.ClientSession() as session,
    ):
        add_pod(registry, "pod-a", emu.url)
        registry.ensure("gone")
        async with serve_api(settings, registry, synced=lambda: synced) as api:
            ok_id = await _submit(session, api.v1, flux_body(mode="async"))
            gone_id = await _submit(session, api.v1, flux_body(mode="async", model="gone"))
            await asyncio.sleep(0.5)
            assert (await api.service.get(ok_id)).phase == "queued"  # type: ignore[union-attr]
            registry.remove("gone")  # e.g. its FluxWorkflow was deleted meanwhile
            synced = True
            ok = await wait_task(session, api.v1, ok_id, final)
            gone = await wait_task(session, api.v1, gone_id, final)
    assert ok["status"] == "completed"
    assert gone["status"] == "failed" and gone["error"]["type"] == "unknown_model"


async def _submit(session: aiohttp.ClientSession, v1: str, body: dict[str, object]) -> str:
    async with session.post(f"{v1}/generate", json=body) as answer:
        assert answer.status == 202, await answer.text()
        task_id: str = (await answer.json())["id"]
        return task_id
