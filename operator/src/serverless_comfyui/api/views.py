"""Public JSON shapes of tasks (API answers, SSE `completed` events, webhook payloads)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from serverless_comfyui.api.models import Attempt, Task, Timings, WebhookState


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, tz=dt.UTC).isoformat(timespec="milliseconds")


def result_url(task: Task, filename: str) -> str:
    return f"{task.base_url}/results/{task.id}/{filename}"


def task_url(task: Task) -> str:
    return f"{task.base_url}/tasks/{task.id}"


def _seconds(start: float | None, end: float | None) -> float | None:
    if start is None or end is None:
        return None
    return round(max(0.0, end - start), 3)


def timings_view(t: Timings) -> dict[str, Any]:
    return {
        "created_at": iso(t.created_at),
        "pod_ready_at": iso(t.pod_ready_at),
        "submitted_at": iso(t.submitted_at),
        "started_at": iso(t.started_at),
        "finished_at": iso(t.finished_at),
        "queued_seconds": _seconds(t.created_at, t.started_at or t.finished_at),
        "hold_seconds": round(t.hold_seconds, 3),
        "cold_start": t.cold_start,
        "run_seconds": _seconds(t.started_at, t.finished_at),
        "total_seconds": _seconds(t.created_at, t.finished_at),
    }


def _attempt_view(a: Attempt) -> dict[str, Any]:
    return {
        "number": a.number,
        "pod": a.pod,
        "prompt_id": a.prompt_id,
        "submitted_at": iso(a.submitted_at),
        "ended_at": iso(a.ended_at),
        "outcome": a.outcome,
        "reason": a.reason,
    }


def webhook_view(w: WebhookState | None) -> dict[str, Any] | None:
    if w is None:
        return None
    return {
        "url": w.url,
        "format": w.format,
        "state": w.state,
        "message_id": w.message_id,
        "next_attempt_at": iso(w.next_attempt_at),
        "failure": w.failure,
        "deliveries": [
            {
                "attempt": d.attempt,
                "at": iso(d.at),
                "status": d.status,
                "error": d.error,
                "duration_ms": d.duration_ms,
            }
            for d in w.deliveries
        ],
    }


def task_view(
    task: Task,
    *,
    queue_position: int | None = None,
    images: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The task as the API shows it. `images`: filename -> base64, added to the results."""
    results = []
    for r in task.results:
        item: dict[str, Any] = {
            "filename": r.filename,
            "url": result_url(task, r.filename),
            "content_type": r.content_type,
            "size": r.size,
            "width": r.width,
            "height": r.height,
            "node": r.node,
        }
        if images is not None and r.filename in images:
            item["base64"] = images[r.filename]
        results.append(item)
    progress = task.progress
    percent = round(100.0 * progress.value / progress.max, 1) if progress.max else None
    if task.status == "completed":
        percent = 100.0
    return {
        "id": task.id,
        "object": "task",
        "kind": task.kind,
        "model": task.model,
        "workflow": task.workflow,
        "status": task.status,
        "phase": task.phase,
        "queue_position": queue_position,
        "progress": {
            "value": progress.value,
            "max": progress.max,
            "percent": percent,
            "node": progress.node,
        },
        "seed": task.seed,
        "warnings": list(task.warnings),
        "ignored": list(task.ignored),
        "params": dict(task.params),
        "output": task.output.model_dump(),
        "results": results,
        "error": task.error.model_dump() if task.error else None,
        "attempt": task.attempt,
        "max_attempts": task.max_attempts,
        "attempts": [_attempt_view(a) for a in task.attempts],
        "prompt_id": task.prompt_id,
        "pod": task.pod,
        "webhook": webhook_view(task.webhook),
        "idempotency_key": task.idempotency_key,
        "timings": timings_view(task.timings),
        "links": {"self": task_url(task), "events": f"{task_url(task)}/events"},
    }


def comfyui_api_view(task: Task, images: list[str]) -> dict[str, Any]:
    """A finished comfyui task as comfyui-api answers `POST /prompt` (and as its
    `prompt.complete` webhook): `{id, prompt, images, filenames, stats}`."""
    t = task.timings
    start = t.started_at or t.submitted_at
    end = t.finished_at
    stats: dict[str, Any] = {
        "comfy_execution": {
            "total": {
                "start": int(start * 1000) if start else None,
                "end": int(end * 1000) if end else None,
                "duration": int((end - start) * 1000) if start and end else None,
            },
        },
        "preprocess_time": int(t.hold_seconds * 1000),
        "total_time": int(((end or t.created_at) - t.created_at) * 1000),
        "cold_start": t.cold_start,
    }
    return {
        "id": task.external_id or task.id,
        "prompt": task.graph,
        "images": images,
        "filenames": [r.filename for r in task.results],
        "stats": stats,
        "task_id": task.id,
        "seed": task.seed,
    }
