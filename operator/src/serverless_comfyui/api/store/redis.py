"""Redis task store, for several proxy replicas sharing one queue.

Keys (all under the configured prefix):

    task:<id>       the Task as JSON (expires `retention` after the task ends)
    idem:<hash>     task id for an idempotency key (same lifetime as its task)
    queue           list of queued task ids: LPUSH to queue, taken from the right
    proc:<owner>    task ids one replica holds (BLMOVE queue -> proc:<owner>)
    owners          set of replica ids that ever held work
    hb:<owner>      heartbeat of a replica (PX ttl); gone: the replica is dead
    ev:<id>         the task's event log (a stream: ordered ids, blocking reads)
    webhooks        sorted set task id -> when its webhook delivery is due

Writes to a task are optimistic transactions (WATCH/MULTI), so concurrent writers (the worker,
a cancel on another replica) never lose each other's changes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Coroutine
from typing import Any, ParamSpec, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError, WatchError

from serverless_comfyui.api.models import TERMINAL, Task
from serverless_comfyui.api.store.base import Event, Mutation, StoreError, TaskStore

P = ParamSpec("P")
T = TypeVar("T")

_DUE_WEBHOOKS = """
local ids = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[3]))
for _, id in ipairs(ids) do
  redis.call('ZADD', KEYS[1], ARGV[2], id)
end
return ids
"""
_EVENTS_MAXLEN = 5000
_STREAM_ID = re.compile(r"^\d{1,20}-\d{1,20}$")
_TERMINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})


def _guarded(method: Callable[P, Coroutine[Any, Any, T]]) -> Callable[P, Coroutine[Any, Any, T]]:
    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (RedisError, OSError) as exc:
            raise StoreError(f"redis: {exc}") from exc

    return wrapper


class RedisStore(TaskStore):
    def __init__(self, url: str, *, prefix: str = "scui:api:", retention_seconds: float) -> None:
        self.url = url
        self.prefix = prefix
        self.retention = max(1, int(retention_seconds))
        # redis-py's annotations (bytes | str everywhere, untyped pipelines) are too loose to
        # help; the replies are strings (decode_responses).
        self.redis: Any = aioredis.Redis.from_url(
            url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
        self._due = self.redis.register_script(_DUE_WEBHOOKS)

    # -- keys ---------------------------------------------------------------------------------

    def _task(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    def _idem(self, digest: str) -> str:
        return f"{self.prefix}idem:{digest}"

    def _proc(self, owner: str) -> str:
        return f"{self.prefix}proc:{owner}"

    def _hb(self, owner: str) -> str:
        return f"{self.prefix}hb:{owner}"

    def _events(self, task_id: str) -> str:
        return f"{self.prefix}ev:{task_id}"

    @property
    def _queue(self) -> str:
        return f"{self.prefix}queue"

    @property
    def _owners(self) -> str:
        return f"{self.prefix}owners"

    @property
    def _webhooks(self) -> str:
        return f"{self.prefix}webhooks"

    # -- tasks --------------------------------------------------------------------------------

    @_guarded
    async def create(self, task: Task) -> tuple[Task, bool]:
        idem = self._idem(task.idempotency_hash) if task.idempotency_hash else None
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    if idem is not None:
                        await pipe.watch(idem)
                        existing = await pipe.get(idem)
                        if existing:
                            raw = await pipe.get(self._task(existing))
                            if raw is not None:
                                await pipe.reset()
                                return Task.load(raw), False
                    pipe.multi()
                    pipe.set(self._task(task.id), task.dump())
                    if idem is not None:
                        pipe.set(idem, task.id, ex=self.retention * 2)
                    pipe.lpush(self._queue, task.id)
                    await pipe.execute()
                    return task, True
                except WatchError:
                    continue

    @_guarded
    async def get(self, task_id: str) -> Task | None:
        raw = await self.redis.get(self._task(task_id))
        return Task.load(raw) if raw is not None else None

    @_guarded
    async def update(
        self, task_id: str, mutate: Mutation, *, webhook_at: float | None = None
    ) -> Task | None:
        key = self._task(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    await pipe.watch(key)
                    raw = await pipe.get(key)
                    if raw is None:
                        await pipe.reset()
                        return None
                    new = mutate(Task.load(raw))
                    if new is None:
                        await pipe.reset()
                        return Task.load(raw)
                    pipe.multi()
                    if new.status in TERMINAL:
                        pipe.set(key, new.dump(), ex=self.retention)
                        pipe.expire(self._events(task_id), self.retention)
                        if new.idempotency_hash:
                            pipe.expire(self._idem(new.idempotency_hash), self.retention)
                    else:
                        pipe.set(key, new.dump())
                    if webhook_at is not None and new.webhook is not None:
                        pipe.zadd(self._webhooks, {task_id: webhook_at})
                    await pipe.execute()
                    return new
                except WatchError:
                    continue

    # -- queue --------------------------------------------------------------------------------

    @_guarded
    async def claim(self, owner: str, wait_seconds: float) -> str | None:
        if wait_seconds <= 0:
            found = await self.redis.lmove(self._queue, self._proc(owner), "RIGHT", "LEFT")
        else:
            found = await self.redis.blmove(
                self._queue, self._proc(owner), wait_seconds, "RIGHT", "LEFT"
            )
        return found if found is None else str(found)

    @_guarded
    async def finish(self, owner: str, task_id: str) -> None:
        await self.redis.lrem(self._proc(owner), 0, task_id)

    @_guarded
    async def requeue(self, owner: str, task_id: str, *, front: bool = True) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lrem(self._proc(owner), 0, task_id)
            pipe.lrem(self._queue, 0, task_id)
            if front:
                pipe.rpush(self._queue, task_id)
            else:
                pipe.lpush(self._queue, task_id)
            await pipe.execute()

    @_guarded
    async def dequeue(self, task_id: str) -> bool:
        removed = await self.redis.lrem(self._queue, 0, task_id)
        return bool(removed)

    @_guarded
    async def queue_position(self, task_id: str) -> int | None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.lpos(self._queue, task_id)
            pipe.llen(self._queue)
            index, length = await pipe.execute()
        if index is None:
            return None
        return int(length) - 1 - int(index)

    @_guarded
    async def queue_length(self) -> int:
        return int(await self.redis.llen(self._queue))

    @_guarded
    async def processing(self, owner: str) -> list[str]:
        return list(await self.redis.lrange(self._proc(owner), 0, -1))

    # -- replicas -----------------------------------------------------------------------------

    @_guarded
    async def heartbeat(self, owner: str, ttl: float) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.set(self._hb(owner), "1", px=max(1, int(ttl * 1000)))
            pipe.sadd(self._owners, owner)
            await pipe.execute()

    @_guarded
    async def retire(self, owner: str) -> None:
        await self.redis.delete(self._hb(owner))

    @_guarded
    async def take_orphans(self, owner: str) -> list[str]:
        moved: list[str] = []
        for other in sorted(await self.redis.smembers(self._owners)):
            if other == owner or await self.redis.exists(self._hb(other)):
                continue
            while True:
                found = await self.redis.lmove(
                    self._proc(other), self._proc(owner), "RIGHT", "LEFT"
                )
                if found is None:
                    break
                moved.append(str(found))
            await self.redis.srem(self._owners, other)
        return moved

    # -- events -------------------------------------------------------------------------------

    @_guarded
    async def append_event(self, task_id: str, event: Event) -> str:
        key = self._events(task_id)
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.xadd(key, {"e": json.dumps(event)}, maxlen=_EVENTS_MAXLEN, approximate=True)
            if event.get("type") in _TERMINAL_EVENTS:
                pipe.expire(key, self.retention)
            results = await pipe.execute()
        return str(results[0])

    @_guarded
    async def read_events(
        self, task_id: str, after: str | None, wait_seconds: float
    ) -> list[tuple[str, Event]]:
        key = self._events(task_id)
        block = max(1, int(wait_seconds * 1000)) if wait_seconds > 0 else None
        start = after if after and _STREAM_ID.match(after) else "0-0"
        answer: Any = await self.redis.xread({key: start}, count=500, block=block)
        events: list[tuple[str, Event]] = []
        for _stream, entries in answer or []:
            for entry_id, fields in entries:
                events.append((str(entry_id), json.loads(fields["e"])))
        return events

    # -- webhooks -----------------------------------------------------------------------------

    @_guarded
    async def schedule_webhook(self, task_id: str, at: float) -> None:
        await self.redis.zadd(self._webhooks, {task_id: at})

    @_guarded
    async def unschedule_webhook(self, task_id: str) -> None:
        await self.redis.zrem(self._webhooks, task_id)

    @_guarded
    async def due_webhooks(self, now: float, lease: float, limit: int) -> list[str]:
        ids = await self._due(keys=[self._webhooks], args=[now, now + lease, limit])
        return [str(i) for i in ids]

    # -- retention ----------------------------------------------------------------------------

    async def sweep(self, cutoff: float) -> int:
        return 0  # finished tasks, their events and idempotency keys expire in Redis itself

    async def close(self) -> None:
        await self.redis.aclose()

    @_guarded
    async def ping(self) -> bool:
        return bool(await self.redis.ping())
