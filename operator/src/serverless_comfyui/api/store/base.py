"""The task store: task documents, the work queue, replica heartbeats, per-task event logs and
the webhook schedule. Two implementations share this contract (and one contract test suite):
`RedisStore` for several proxy replicas and `FileStore` for a single replica.

The queue is reliable: `claim` moves a task id from the queue to the claiming owner's
processing list in one step, so a task is always in exactly one place (queued, or held by one
owner) and a replica that dies holding tasks leaves them for `take_orphans`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable
from typing import Any

from serverless_comfyui.api.models import Task

Event = dict[str, Any]
"""{"type": status|progress|completed|failed|cancelled, "data": {...}, "at": epoch}"""
Mutation = Callable[[Task], Task | None]
"""Gets a copy of the stored task; returns the new task, or None to leave it unchanged."""


class StoreError(Exception):
    """The store cannot be reached or answered unexpectedly."""


class TaskStore(abc.ABC):
    """All methods are coroutines and safe to call concurrently on one event loop."""

    # -- tasks --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def create(self, task: Task) -> tuple[Task, bool]:
        """Store a new task and queue it, atomically. When `task.idempotency_hash` is set and
        already names a task, store nothing and return (that task, False)."""

    @abc.abstractmethod
    async def get(self, task_id: str) -> Task | None: ...

    @abc.abstractmethod
    async def update(
        self, task_id: str, mutate: Mutation, *, webhook_at: float | None = None
    ) -> Task | None:
        """Atomic read-modify-write (retried on conflict). Returns the task as stored after it
        (None if there is no such task). `webhook_at`: when `mutate` changed the task, also
        schedule its webhook delivery (if it has one) at that time, in the same transaction."""

    # -- queue --------------------------------------------------------------------------------

    @abc.abstractmethod
    async def claim(self, owner: str, wait_seconds: float) -> str | None:
        """Move the oldest queued task id to `owner`'s processing list (waits up to
        `wait_seconds` for one)."""

    @abc.abstractmethod
    async def finish(self, owner: str, task_id: str) -> None:
        """Remove a task from `owner`'s processing list (it is done with it)."""

    @abc.abstractmethod
    async def requeue(self, owner: str, task_id: str, *, front: bool = True) -> None:
        """Move a task from `owner`'s processing list back to the queue (front: next)."""

    @abc.abstractmethod
    async def dequeue(self, task_id: str) -> bool:
        """Remove a task from the queue; False when it was not queued (claimed already)."""

    @abc.abstractmethod
    async def queue_position(self, task_id: str) -> int | None:
        """Tasks ahead of this one in the queue (0: next), None when it is not queued."""

    @abc.abstractmethod
    async def queue_length(self) -> int: ...

    @abc.abstractmethod
    async def processing(self, owner: str) -> list[str]: ...

    # -- replicas -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def heartbeat(self, owner: str, ttl: float) -> None:
        """`owner` is alive for `ttl` more seconds."""

    @abc.abstractmethod
    async def retire(self, owner: str) -> None:
        """`owner` stops now: its processing list may be taken over at once."""

    @abc.abstractmethod
    async def take_orphans(self, owner: str) -> list[str]:
        """Move the processing lists of owners whose heartbeat expired to `owner`'s, and
        return the ids moved. Each id goes to exactly one caller."""

    # -- events -------------------------------------------------------------------------------

    @abc.abstractmethod
    async def append_event(self, task_id: str, event: Event) -> str:
        """Append to the task's event log; returns the event's id (ordered)."""

    @abc.abstractmethod
    async def read_events(
        self, task_id: str, after: str | None, wait_seconds: float
    ) -> list[tuple[str, Event]]:
        """Events after id `after` (all when None), in order; waits up to `wait_seconds`
        when there are none yet."""

    # -- webhooks -----------------------------------------------------------------------------

    @abc.abstractmethod
    async def schedule_webhook(self, task_id: str, at: float) -> None: ...

    @abc.abstractmethod
    async def unschedule_webhook(self, task_id: str) -> None: ...

    @abc.abstractmethod
    async def due_webhooks(self, now: float, lease: float, limit: int) -> list[str]:
        """Task ids whose delivery is due; each is re-scheduled at `now + lease` in the same
        step, so a replica that dies while delivering leaves it for another."""

    # -- retention ----------------------------------------------------------------------------

    @abc.abstractmethod
    async def sweep(self, cutoff: float) -> int:
        """Delete finished tasks that finished before `cutoff` (stores without expiry of
        their own); returns how many."""

    @abc.abstractmethod
    async def close(self) -> None: ...


def open_store(url: str, *, prefix: str = "scui:api:", retention_seconds: float) -> TaskStore:
    """A store for `redis://…`, `rediss://…`, `unix://…` or `file:///path`."""
    if url.startswith("file://"):
        from serverless_comfyui.api.store.file import FileStore

        path = url.removeprefix("file://")
        if not path.startswith("/"):
            raise ValueError(f"file store URL needs an absolute path: {url!r}")
        return FileStore(path, retention_seconds=retention_seconds)
    from serverless_comfyui.api.store.redis import RedisStore

    return RedisStore(url, prefix=prefix, retention_seconds=retention_seconds)
