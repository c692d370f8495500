"""One contract, two task stores: every test runs against the Redis store (a real
redis-server on a loopback port) and the file store."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from redis_server import RedisServer, RedisServerMissingError
from serverless_comfyui.api.models import Task, WebhookState
from serverless_comfyui.api.store import TaskStore, open_store
from serverless_comfyui.api.store.file import FileStore
from serverless_comfyui.api.store.redis import RedisStore


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    try:
        server = RedisServer.start(tmp_path_factory.mktemp("redis"))
    except RedisServerMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(params=["redis", "file"])
async def store(
    request: pytest.FixtureRequest, redis_server: RedisServer, tmp_path: Path
) -> AsyncIterator[TaskStore]:
    if request.param == "redis":
        made = open_store(
            redis_server.url, prefix=f"c{uuid.uuid4().hex[:8]}:", retention_seconds=60
        )
    else:
        made = open_store(f"file://{tmp_path / 'store'}", retention_seconds=60)
    yield made
    await made.close()


def task(**kwargs: object) -> Task:
    return Task(model="flux", workflow="flux_dev_t5fp8", params={"prompt": "x"}, **kwargs)  # type: ignore[arg-type]


async def test_open_store_picks_the_implementation(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    assert isinstance(open_store(f"file://{tmp_path}", retention_seconds=1), FileStore)
    redis = open_store(redis_server.url, retention_seconds=1)
    assert isinstance(redis, RedisStore)
    await redis.close()
    with pytest.raises(ValueError, match="absolute path"):
        open_store("file://relative/dir", retention_seconds=1)


async def test_create_get_update(store: TaskStore) -> None:
    t = task()
    stored, created = await store.create(t)
    assert created and stored.id == t.id
    got = await store.get(t.id)
    assert got is not None and got.model_dump() == t.model_dump()
    assert await store.get(str(uuid.uuid4())) is None

    def run(x: Task) -> Task:
        x.status, x.phase, x.attempt = "running", "running", 1
        return x

    updated = await store.update(t.id, run)
    assert updated is not None and updated.status == "running"
    assert (await store.get(t.id)).attempt == 1  # type: ignore[union-attr]
    # A mutation returning None leaves the task as it is.
    same = await store.update(t.id, lambda x: None)
    assert same is not None and same.attempt == 1
    assert await store.update(str(uuid.uuid4()), run) is None


async def test_concurrent_updates_are_never_lost(store: TaskStore) -> None:
    t = task()
    await store.create(t)

    def bump(x: Task) -> Task:
        x.attempt += 1
        return x

    await asyncio.gather(*(store.update(t.id, bump) for _ in range(25)))
    assert (await store.get(t.id)).attempt == 25  # type: ignore[union-attr]


async def test_idempotent_create_returns_the_first_task(store: TaskStore) -> None:
    first, second = task(idempotency_hash="h1"), task(idempotency_hash="h1")
    results = await asyncio.gather(store.create(first), store.create(second))
    assert sorted(created for _, created in results) == [False, True]
    assert {r[0].id for r in results} == {first.id} or {r[0].id for r in results} == {second.id}
    assert await store.queue_length() == 1
    _, created = await store.create(task(idempotency_hash="h2"))
    assert created and await store.queue_length() == 2


async def test_queue_is_fifo_and_claims_move_to_the_owner(store: TaskStore) -> None:
    tasks = [task() for _ in range(3)]
    for t in tasks:
        await store.create(t)
    assert [await store.queue_position(t.id) for t in tasks] == [0, 1, 2]
    assert await store.claim("a", 0) == tasks[0].id
    assert await store.claim("b", 0) == tasks[1].id
    assert await store.queue_position(tasks[0].id) is None
    assert await store.queue_position(tasks[2].id) == 0
    assert await store.processing("a") == [tasks[0].id]
    await store.finish("a", tasks[0].id)
    assert await store.processing("a") == []
    # Back to the front of the queue: taken before what was waiting.
    await store.requeue("b", tasks[1].id, front=True)
    assert await store.processing("b") == []
    assert await store.claim("a", 0) == tasks[1].id
    assert await store.claim("a", 0) == tasks[2].id
    assert await store.claim("a", 0) is None


async def test_dequeue_only_removes_queued_tasks(store: TaskStore) -> None:
    a, b = task(), task()
    await store.create(a)
    await store.create(b)
    assert await store.claim("w", 0) == a.id
    assert await store.dequeue(a.id) is False
    assert await store.dequeue(b.id) is True
    assert await store.queue_length() == 0


async def test_claim_waits_for_work(store: TaskStore) -> None:
    t = task()

    async def later() -> None:
        await asyncio.sleep(0.2)
        await store.create(t)

    started = time.monotonic()
    creator = asyncio.create_task(later())
    claimed = await store.claim("w", 5.0)
    await creator
    assert claimed == t.id
    assert time.monotonic() - started < 2.0
    assert await store.claim("w", 0.2) is None


async def test_orphans_of_dead_owners_are_taken_over_once(store: TaskStore) -> None:
    a, b = task(), task()
    await store.create(a)
    await store.create(b)
    await store.heartbeat("dead", 0.3)
    await store.heartbeat("alive", 30)
    assert await store.claim("dead", 0) == a.id
    assert await store.claim("alive", 0) == b.id
    assert await store.take_orphans("rescuer") == []  # heartbeat still fresh
    await asyncio.sleep(0.5)
    takers = await asyncio.gather(store.take_orphans("rescuer"), store.take_orphans("other"))
    assert sorted(takers, key=len) == [[], [a.id]]
    owner = "rescuer" if takers[0] else "other"
    assert await store.processing(owner) == [a.id]
    assert await store.processing("alive") == [b.id]
    # A retiring owner's work can be taken at once.
    await store.retire("alive")
    assert await store.take_orphans("rescuer") == [b.id]


async def test_events_are_ordered_and_reads_wait(store: TaskStore) -> None:
    t = task()
    await store.create(t)
    ids = [
        await store.append_event(t.id, {"type": "progress", "data": {"value": i}}) for i in range(3)
    ]
    events = await store.read_events(t.id, None, 0)
    assert [e[0] for e in events] == ids
    assert [e[1]["data"]["value"] for e in events] == [0, 1, 2]
    assert [e[1]["data"]["value"] for e in await store.read_events(t.id, ids[0], 0)] == [1, 2]
    assert await store.read_events(t.id, ids[-1], 0.1) == []
    # A malformed id (a client's Last-Event-ID) reads from the start.
    assert len(await store.read_events(t.id, "not-an-id", 0)) == 3

    async def later() -> None:
        await asyncio.sleep(0.2)
        await store.append_event(t.id, {"type": "completed", "data": {}})

    started = time.monotonic()
    appender = asyncio.create_task(later())
    waited = await store.read_events(t.id, ids[-1], 5.0)
    await appender
    assert [e[1]["type"] for e in waited] == ["completed"]
    assert time.monotonic() - started < 2.0


async def test_webhook_schedule_leases_due_deliveries(store: TaskStore) -> None:
    now = time.time()
    await store.schedule_webhook("due", now - 1)
    await store.schedule_webhook("later", now + 100)
    assert await store.due_webhooks(now, lease=0.5, limit=10) == ["due"]
    assert await store.due_webhooks(time.time(), lease=0.5, limit=10) == []  # leased
    await asyncio.sleep(0.6)
    assert await store.due_webhooks(time.time(), lease=0.5, limit=10) == ["due"]
    await store.unschedule_webhook("due")
    await asyncio.sleep(0.6)
    assert await store.due_webhooks(time.time(), lease=0.5, limit=10) == []


async def test_final_update_schedules_the_webhook_in_the_same_step(store: TaskStore) -> None:
    with_hook = task(webhook=WebhookState(url="http://127.0.0.1:9/hook"))
    without = task()
    await store.create(with_hook)
    await store.create(without)

    def finish(x: Task) -> Task:
        x.status = "completed"
        x.timings.finished_at = time.time()
        return x

    at = time.time() - 1
    await store.update(with_hook.id, finish, webhook_at=at)
    await store.update(without.id, finish, webhook_at=at)
    assert await store.due_webhooks(time.time(), lease=10, limit=10) == [with_hook.id]


async def test_finished_tasks_expire(store: TaskStore, tmp_path: Path) -> None:
    old, running = task(idempotency_hash="old"), task()
    await store.create(old)
    await store.create(running)

    def finish(x: Task) -> Task:
        x.status = "completed"
        x.timings.finished_at = time.time() - 100
        return x

    await store.update(old.id, finish)
    await store.append_event(old.id, {"type": "completed", "data": {}})
    if isinstance(store, RedisStore):
        # Redis expires them itself: the task, its events and its idempotency key.
        for key in (store._task(old.id), store._events(old.id), store._idem("old")):
            assert 0 < await store.redis.ttl(key) <= 60
        assert await store.redis.ttl(store._task(running.id)) == -1
    else:
        assert await store.sweep(time.time() - 10) == 1
        assert await store.get(old.id) is None
        assert await store.get(running.id) is not None
        assert await store.read_events(old.id, None, 0) == []
        # The idempotency key is free again.
        _, created = await store.create(task(idempotency_hash="old"))
        assert created
