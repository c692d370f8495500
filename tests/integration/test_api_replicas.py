"""Two proxy replicas sharing one Redis store: either runs the queued work, a task submitted to
one is followed (SSE) and cancelled through the other."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from api_harness import (
    add_pod,
    emulator,
    emulator_state,
    fast_settings,
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


async def test_two_replicas_share_queue_events_and_cancellation(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    settings_a = fast_settings(tmp_path, redis_server.url, replica_name="proxy-a")
    settings_b = ApiSettings(**{**settings_a.model_dump(), "replica_name": "proxy-b"})
    async with (
        emulator(tmp_path, "1", step_seconds=0.02) as emu1,
        emulator(tmp_path, "2", step_seconds=0.02) as emu2,
        aiohttp.ClientSession() as session,
    ):
        # Each replica discovers the same pods.
        registries = [Registry(), Registry()]
        for registry in registries:
            add_pod(registry, "pod-1", emu1.url)
            add_pod(registry, "pod-2", emu2.url)
        async with (
            serve_api(settings_a, registries[0]) as a,
            serve_api(settings_b, registries[1]) as b,
        ):
            ids = []
            for i in range(8):
                async with session.post(
                    f"{a.v1}/generate", json=flux_body(mode="async", steps=6, seed=i)
                ) as answer:
                    ids.append((await answer.json())["id"])
            # Followed through the other replica, from its first event to its end.
            async with session.get(f"{b.v1}/tasks/{ids[-1]}/events") as answer:
                text = await answer.text()
            kinds = [line[7:] for line in text.splitlines() if line.startswith("event: ")]
            assert kinds[0] == "status" and kinds[-1] == "completed"
            done = [await wait_task(session, b.v1, i, final) for i in ids]
            assert [t["status"] for t in done] == ["completed"] * 8
            owners = {(await a.service.get(i)).owner for i in ids}  # type: ignore[union-attr]
            assert owners <= {a.service.worker.owner, b.service.worker.owner}  # type: ignore[union-attr]

            # A long task, cancelled through the replica that does not run it.
            async with session.post(
                f"{a.v1}/generate", json=flux_body(mode="async", steps=100)
            ) as answer:
                long_id = (await answer.json())["id"]
            await wait_task(session, a.v1, long_id, lambda t: t["status"] == "running")
            owner = (await a.service.get(long_id)).owner  # type: ignore[union-attr]
            other = b if owner == a.service.worker.owner else a  # type: ignore[union-attr]
            async with session.delete(f"{other.v1}/tasks/{long_id}") as answer:
                assert answer.status == 200, await answer.text()
            cancelled = await wait_task(session, a.v1, long_id, final)
            assert cancelled["status"] == "cancelled"
            for _ in range(100):
                states = [await emulator_state(session, e.url) for e in (emu1, emu2)]
                if not any(s["queue_running"] for s in states):
                    break
                await asyncio.sleep(0.05)
            assert not any(s["queue_running"] for s in states)
            assert sum(s["steps_executed"] for s in states) < 8 * 6 + 100
            # The running task's worker stopped following it and let it go.
            for _ in range(100):
                if long_id not in json.dumps(
                    [await r.service.store.processing(r.service.worker.owner) for r in (a, b)]  # type: ignore[union-attr]
                ):
                    break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError("the cancelled task stayed in a processing list")
