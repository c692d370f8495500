"""Nothing lost: proxy restarts (crash or graceful) with tasks queued and running, pods killed
or removed mid-render, and a replica that dies while its prompt finishes on the pod."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from api_harness import (
    add_pod,
    emulator,
    emulator_process,
    emulator_state,
    fast_settings,
    file_store_url,
    final,
    flux_body,
    serve_api,
    wait_task,
)
from redis_server import RedisServer, RedisServerMissingError
from serverless_comfyui.api import ApiSettings
from serverless_comfyui.proxy.registry import Registry


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(params=["redis", "file"])
def store_url(request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path) -> str:
    return redis_server.url if request.param == "redis" else file_store_url(tmp_path)


async def submit(session: aiohttp.ClientSession, v1: str, body: dict[str, Any]) -> str:
    async with session.post(f"{v1}/generate", json=body) as answer:
        assert answer.status == 202, await answer.text()
        task_id: str = (await answer.json())["id"]
        return task_id


async def all_final(
    session: aiohttp.ClientSession, v1: str, ids: list[str]
) -> list[dict[str, Any]]:
    return [await wait_task(session, v1, i, final) for i in ids]


@pytest.mark.parametrize("how", ["crash", "graceful"])
async def test_restart_with_queued_and_running_tasks_loses_none(
    tmp_path: Path, store_url: str, how: str
) -> None:
    registry = Registry()
    # A crash is noticed when the heartbeat expires (owner_ttl); a graceful stop hands over at
    # once, so with a long TTL only the handover can explain a quick recovery.
    ttl = 1.0 if how == "crash" else 60.0
    settings = fast_settings(
        tmp_path,
        store_url,
        max_prompts_per_pod=1,
        owner_ttl_seconds=ttl,
        store_prefix=f"r{uuid.uuid4().hex[:6]}:",
    )
    async with (
        emulator(tmp_path, "a", step_seconds=0.05) as emu,
        aiohttp.ClientSession() as session,
    ):
        add_pod(registry, "pod-a", emu.url)
        async with serve_api(settings, registry) as first:
            # The first runs long enough to be followed by the next replica; the rest are quick.
            ids = [
                await submit(
                    session, first.v1, flux_body(mode="async", steps=30 if i == 0 else 4, seed=i)
                )
                for i in range(4)
            ]
            await wait_task(session, first.v1, ids[0], lambda t: t["status"] == "running")
            before = {i: (await first.service.get(i)) for i in ids}
            if how == "crash":
                await first.crash()
        stopped_at = time.monotonic()
        assert before[ids[0]] is not None and before[ids[0]].phase == "running"
        assert all(t is not None and t.status == "queued" for t in (before[i] for i in ids[1:]))
        second_settings = ApiSettings(**{**settings.model_dump(), "replica_name": "second"})
        async with serve_api(second_settings, registry) as second:
            done = await all_final(session, second.v1, ids)
            recovered_in = time.monotonic() - stopped_at
        state = await emulator_state(session, emu.url)
    assert [t["status"] for t in done] == ["completed"] * 4, [t["error"] for t in done]
    # The running prompt was followed to its end on the pod, not rendered again.
    assert done[0]["attempt"] == 1 and done[0]["attempts"][0]["outcome"] == "completed"
    assert state["prompts_executed"] == 4
    assert [t["seed"] for t in done] == [0, 1, 2, 3]
    if how == "graceful":
        assert recovered_in < ttl


async def test_results_are_collected_when_the_replica_died_before_the_prompt_ended(
    tmp_path: Path,
) -> None:
    registry = Registry()
    settings = fast_settings(tmp_path, file_store_url(tmp_path))
    async with (
        emulator(tmp_path, "a", step_seconds=0.02) as emu,
        aiohttp.ClientSession() as session,
    ):
        add_pod(registry, "pod-a", emu.url)
        async with serve_api(settings, registry) as first:
            task_id = await submit(session, first.v1, flux_body(mode="async", steps=20))
            await wait_task(session, first.v1, task_id, lambda t: t["status"] == "running")
            await first.crash()
        # The prompt finishes on the pod while no replica follows it.
        for _ in range(100):
            if (await emulator_state(session, emu.url))["prompts_executed"] == 1:
                break
            await asyncio.sleep(0.05)
        async with serve_api(settings, registry) as second:
            done = await wait_task(session, second.v1, task_id, final)
        state = await emulator_state(session, emu.url)
    assert done["status"] == "completed" and done["results"]
    assert state["prompts_executed"] == 1 and done["attempt"] == 1


async def test_pod_killed_mid_render_finishes_on_another_pod(tmp_path: Path) -> None:
    killed, killed_url = emulator_process(
        tmp_path, "a", "--step-seconds", "0.05", "--crash-after-steps", "3"
    )
    healthy, healthy_url = emulator_process(tmp_path, "b", "--step-seconds", "0.02")
    try:
        registry = Registry()
        add_pod(registry, "pod-a", killed_url)  # picked first (same load, name order)
        add_pod(registry, "pod-b", healthy_url)
        settings = fast_settings(tmp_path, file_store_url(tmp_path))
        async with (
            serve_api(settings, registry) as api,
            aiohttp.ClientSession() as session,
            session.post(f"{api.v1}/generate", json=flux_body(steps=10)) as answer,
        ):
            task = await answer.json()
            assert answer.status == 200, task
        assert not killed.alive()
    finally:
        killed.stop()
        healthy.stop()
    assert task["status"] == "completed" and task["results"]
    first, second = task["attempts"]
    assert (first["pod"], first["outcome"]) == ("pod-a", "lost")
    assert "pod-a has not answered" in first["reason"]
    assert (second["pod"], second["outcome"]) == ("pod-b", "completed")
    assert task["pod"] == "pod-b" and task["attempt"] == 2


async def test_task_fails_with_reasons_when_its_pod_is_lost_twice(tmp_path: Path) -> None:
    a, a_url = emulator_process(tmp_path, "a", "--step-seconds", "0.05", "--crash-after-steps", "2")
    b, b_url = emulator_process(tmp_path, "b", "--step-seconds", "0.05", "--crash-after-steps", "2")
    try:
        registry = Registry()
        add_pod(registry, "pod-a", a_url)
        add_pod(registry, "pod-b", b_url)
        settings = fast_settings(tmp_path, file_store_url(tmp_path))
        async with (
            serve_api(settings, registry) as api,
            aiohttp.ClientSession() as session,
            session.post(f"{api.v1}/generate", json=flux_body(steps=10)) as answer,
        ):
            task = await answer.json()
            assert answer.status == 502, task
    finally:
        a.stop()
        b.stop()
    assert task["status"] == "failed" and task["error"]["type"] == "pod_lost"
    message = task["error"]["message"]
    assert "lost 2 time(s)" in message and "pod-a" in message and "pod-b" in message
    assert [x["outcome"] for x in task["attempts"]] == ["lost", "lost"]


async def test_pod_removed_from_registry_mid_render(tmp_path: Path) -> None:
    registry = Registry()
    settings = fast_settings(tmp_path, file_store_url(tmp_path), pod_lost_grace_seconds=30)
    async with (
        emulator(tmp_path, "b", step_seconds=0.01) as emu_b,
        aiohttp.ClientSession() as session,
        serve_api(settings, registry) as api,
    ):
        async with emulator(tmp_path, "a", step_seconds=0.05) as emu_a:
            add_pod(registry, "pod-a", emu_a.url)
            task_id = await submit(session, api.v1, flux_body(mode="async", steps=40))
            await wait_task(session, api.v1, task_id, lambda t: t["status"] == "running")
            add_pod(registry, "pod-b", emu_b.url)
            registry.apps["flux"].remove_pod("pod-a")  # scaled down / deleted
        started = time.monotonic()  # pod-a's server is stopped now
        done = await wait_task(session, api.v1, task_id, final)
        # Removed from the registry and silent: lost at once, not after the grace period.
        assert time.monotonic() - started < 10
    assert done["status"] == "completed"
    assert [(x["pod"], x["outcome"]) for x in done["attempts"]] == [
        ("pod-a", "lost"),
        ("pod-b", "completed"),
    ]
