"""Task state transitions shared by the worker and the request handlers: events and the
final state (with its webhook scheduled in the same store transaction)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from serverless_comfyui.api.models import ResultFile, Status, Task, TaskError
from serverless_comfyui.api.store import StoreError, TaskStore
from serverless_comfyui.api.views import task_view

log = structlog.get_logger("api.tasks")


class AbandonedError(Exception):
    """The task is no longer this worker's (another replica took it over, or it vanished)."""


def status_data(task: Task, **extra: Any) -> dict[str, Any]:
    return {
        "status": task.status,
        "phase": task.phase,
        "attempt": task.attempt,
        "pod": task.pod,
        **extra,
    }


async def emit(store: TaskStore, task_id: str, kind: str, data: dict[str, Any]) -> None:
    """Append an event to the task's log (best effort: a lost event is recovered by readers,
    who also look at the task itself)."""
    try:
        await store.append_event(task_id, {"type": kind, "data": data, "at": time.time()})
    except StoreError as exc:
        log.warning("cannot append a task event", task_id=task_id, type=kind, error=str(exc))


def final_event(task: Task) -> tuple[str, dict[str, Any]]:
    """The event that ends a task's stream."""
    if task.status == "completed":
        return "completed", task_view(task)
    if task.status == "failed":
        return "failed", {
            **status_data(task),
            "error": task.error.model_dump() if task.error else None,
        }
    return "cancelled", status_data(task)


async def conclude(
    store: TaskStore,
    task_id: str,
    status: Status,
    *,
    error: TaskError | None = None,
    results: list[ResultFile] | None = None,
    owner: str | None = None,
    attempt_outcome: str | None = None,
    attempt_reason: str | None = None,
    on_concluded: Callable[[Task], None] | None = None,
) -> Task | None:
    """Move a task to its final state once (a no-op on a task already final). With `owner`,
    only while that worker still owns it (else AbandonedError). Schedules its webhook."""
    at = time.time()
    changed = False

    def apply(task: Task) -> Task | None:
        nonlocal changed
        if owner is not None and task.owner != owner:
            raise AbandonedError(f"task {task_id} is owned by {task.owner}")
        if task.terminal:
            return None
        task.status = status
        task.phase = "done"
        task.error = error
        if results is not None:
            task.results = results
        if status == "cancelled":
            task.cancel_requested = True
        task.timings.finished_at = at
        if task.attempts and task.attempts[-1].ended_at is None:
            task.attempts[-1].ended_at = at
            task.attempts[-1].outcome = attempt_outcome or status
            task.attempts[-1].reason = attempt_reason or (error.message if error else None)
        if task.webhook is not None:
            task.webhook.state = "pending"
            task.webhook.message_id = f"msg_{task.id}"
            task.webhook.next_attempt_at = at
        changed = True
        return task

    task = await store.update(task_id, apply, webhook_at=at)
    if task is None or not changed:
        return task
    kind, data = final_event(task)
    await emit(store, task_id, kind, data)
    log.info(
        "task finished",
        task_id=task_id,
        status=status,
        error=error.message if error else None,
        attempts=task.attempt,
    )
    if on_concluded is not None:
        on_concluded(task)
    return task
