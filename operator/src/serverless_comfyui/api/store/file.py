"""File-backed task store for a single proxy replica: a directory on a volume.

    <root>/tasks/<id>.json       the Task documents
    <root>/idem/<hash>           task id of an idempotency key
    <root>/queue.json            queued task ids, oldest first
    <root>/proc/<owner>.json     task ids one worker holds
    <root>/owners/<owner>.json   {"expires": epoch}: the worker's heartbeat (0: retired)
    <root>/events/<id>.jsonl     the task's event log (event id = line number)
    <root>/webhooks.json         {task id: when its webhook delivery is due}

Every change is written to a temporary file and renamed over the old one, so a crash never
leaves a half-written file. Changes are serialized by an asyncio lock and, across processes
sharing the directory, by `flock` on `<root>/.lock`. Waiters (claim, event reads) are woken
within the process at once and poll twice a second for changes made by other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import re
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from serverless_comfyui.api.models import TERMINAL, Task
from serverless_comfyui.api.store.base import Event, Mutation, StoreError, TaskStore

_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")
_POLL = 0.5


def _safe(name: str) -> str:
    if not _NAME.match(name) or ".." in name:
        raise StoreError(f"unsafe name for the file store: {name!r}")
    return name


def _write(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return default
    except ValueError as exc:
        raise StoreError(f"corrupt store file {path}: {exc}") from exc


def _append_line(path: Path, line: str) -> int:
    """Append one line (durably); returns the number of lines in the file now."""
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())
    with open(path, encoding="utf-8") as handle:
        return sum(1 for _ in handle)


class FileStore(TaskStore):
    def __init__(self, root: str | os.PathLike[str], *, retention_seconds: float) -> None:
        self.root = Path(root)
        self.retention = retention_seconds
        for sub in ("tasks", "idem", "proc", "owners", "events"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        self._lock: asyncio.Lock | None = None
        self._changed: asyncio.Event | None = None

    # -- plumbing -----------------------------------------------------------------------------

    @contextlib.contextmanager
    def _flock(self) -> Iterator[None]:
        with open(self.root / ".lock", "a+") as handle:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    @contextlib.asynccontextmanager
    async def _locked(self) -> AsyncIterator[None]:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            try:
                with self._flock():
                    yield
            except OSError as exc:
                raise StoreError(f"file store {self.root}: {exc}") from exc

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_change(self, wait_seconds: float) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._changed.wait(), min(wait_seconds, _POLL))

    def _task_path(self, task_id: str) -> Path:
        return self.root / "tasks" / f"{_safe(task_id)}.json"

    def _events_path(self, task_id: str) -> Path:
        return self.root / "events" / f"{_safe(task_id)}.jsonl"

    def _proc_path(self, owner: str) -> Path:
        return self.root / "proc" / f"{_safe(owner)}.json"

    def _owner_path(self, owner: str) -> Path:
        return self.root / "owners" / f"{_safe(owner)}.json"

    @property
    def _queue_path(self) -> Path:
        return self.root / "queue.json"

    @property
    def _webhooks_path(self) -> Path:
        return self.root / "webhooks.json"

    def _load_task(self, task_id: str) -> Task | None:
        try:
            return Task.load(self._task_path(task_id).read_bytes())
        except FileNotFoundError:
            return None

    def _queue(self) -> list[str]:
        return list(_read_json(self._queue_path, []))

    def _proc(self, owner: str) -> list[str]:
        return list(_read_json(self._proc_path(owner), []))

    # -- tasks --------------------------------------------------------------------------------

    async def create(self, task: Task) -> tuple[Task, bool]:
        async with self._locked():
            idem = (
                self.root / "idem" / _safe(task.idempotency_hash) if task.idempotency_hash else None
            )
            if idem is not None and idem.exists():
                existing = self._load_task(idem.read_text().strip())
                if existing is not None:
                    return existing, False
            _write(self._task_path(task.id), task.dump())
            if idem is not None:
                _write(idem, task.id)
            _write(self._queue_path, json.dumps([*self._queue(), task.id]))
        self._notify()
        return task, True

    async def get(self, task_id: str) -> Task | None:
        try:
            return self._load_task(task_id)
        except ValueError as exc:
            raise StoreError(f"corrupt task {task_id}: {exc}") from exc

    async def update(
        self, task_id: str, mutate: Mutation, *, webhook_at: float | None = None
    ) -> Task | None:
        async with self._locked():
            current = self._load_task(task_id)
            if current is None:
                return None
            new = mutate(current.model_copy(deep=True))
            if new is None:
                return current
            _write(self._task_path(task_id), new.dump())
            if webhook_at is not None and new.webhook is not None:
                hooks = dict(_read_json(self._webhooks_path, {}))
                hooks[task_id] = webhook_at
                _write(self._webhooks_path, json.dumps(hooks))
        return new

    # -- queue --------------------------------------------------------------------------------

    async def claim(self, owner: str, wait_seconds: float) -> str | None:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            async with self._locked():
                queue = self._queue()
                if queue:
                    task_id = queue.pop(0)
                    _write(self._proc_path(owner), json.dumps([*self._proc(owner), task_id]))
                    _write(self._queue_path, json.dumps(queue))
                    return task_id
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            await self._wait_change(remaining)

    async def finish(self, owner: str, task_id: str) -> None:
        async with self._locked():
            proc = self._proc(owner)
            if task_id in proc:
                _write(self._proc_path(owner), json.dumps([t for t in proc if t != task_id]))

    async def requeue(self, owner: str, task_id: str, *, front: bool = True) -> None:
        async with self._locked():
            proc = self._proc(owner)
            _write(self._proc_path(owner), json.dumps([t for t in proc if t != task_id]))
            queue = [t for t in self._queue() if t != task_id]
            queue = [task_id, *queue] if front else [*queue, task_id]
            _write(self._queue_path, json.dumps(queue))
        self._notify()

    async def dequeue(self, task_id: str) -> bool:
        async with self._locked():
            queue = self._queue()
            if task_id not in queue:
                return False
            _write(self._queue_path, json.dumps([t for t in queue if t != task_id]))
            return True

    async def queue_position(self, task_id: str) -> int | None:
        queue = self._queue()
        return queue.index(task_id) if task_id in queue else None

    async def queue_length(self) -> int:
        return len(self._queue())

    async def processing(self, owner: str) -> list[str]:
        return self._proc(owner)

    # -- replicas -----------------------------------------------------------------------------

    async def heartbeat(self, owner: str, ttl: float) -> None:
        async with self._locked():
            _write(self._owner_path(owner), json.dumps({"expires": time.time() + ttl}))

    async def retire(self, owner: str) -> None:
        async with self._locked():
            if self._owner_path(owner).exists():
                _write(self._owner_path(owner), json.dumps({"expires": 0}))

    async def take_orphans(self, owner: str) -> list[str]:
        moved: list[str] = []
        async with self._locked():
            now = time.time()
            for beat_path in sorted((self.root / "owners").glob("*.json")):
                other = beat_path.stem
                beat = _read_json(beat_path, None)
                if other == owner or not isinstance(beat, dict):
                    continue
                if float(beat.get("expires", 0)) > now:
                    continue
                taken = self._proc(other)
                if taken:
                    _write(self._proc_path(owner), json.dumps([*self._proc(owner), *taken]))
                    moved += taken
                with contextlib.suppress(FileNotFoundError):
                    self._proc_path(other).unlink()
                beat_path.unlink()
        return moved

    # -- events -------------------------------------------------------------------------------

    async def append_event(self, task_id: str, event: Event) -> str:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        async with self._locked():
            count = _append_line(self._events_path(task_id), line)
        self._notify()
        return str(count)

    def _events_after(self, task_id: str, after: str | None) -> list[tuple[str, Event]]:
        start = int(after) if after and after.isdigit() else 0
        try:
            with open(self._events_path(task_id), encoding="utf-8") as handle:
                lines = handle.readlines()
        except FileNotFoundError:
            return []
        events = []
        for number, line in enumerate(lines[start:], start=start + 1):
            if not line.endswith("\n"):
                break  # being written by another process
            events.append((str(number), json.loads(line)))
        return events

    async def read_events(
        self, task_id: str, after: str | None, wait_seconds: float
    ) -> list[tuple[str, Event]]:
        deadline = time.monotonic() + max(0.0, wait_seconds)
        while True:
            events = self._events_after(task_id, after)
            remaining = deadline - time.monotonic()
            if events or remaining <= 0:
                return events
            await self._wait_change(remaining)

    # -- webhooks -----------------------------------------------------------------------------

    async def schedule_webhook(self, task_id: str, at: float) -> None:
        async with self._locked():
            hooks = dict(_read_json(self._webhooks_path, {}))
            hooks[task_id] = at
            _write(self._webhooks_path, json.dumps(hooks))

    async def unschedule_webhook(self, task_id: str) -> None:
        async with self._locked():
            hooks = dict(_read_json(self._webhooks_path, {}))
            if hooks.pop(task_id, None) is not None:
                _write(self._webhooks_path, json.dumps(hooks))

    async def due_webhooks(self, now: float, lease: float, limit: int) -> list[str]:
        async with self._locked():
            hooks = dict(_read_json(self._webhooks_path, {}))
            due = sorted((at, tid) for tid, at in hooks.items() if at <= now)[:limit]
            if not due:
                return []
            for _, tid in due:
                hooks[tid] = now + lease
            _write(self._webhooks_path, json.dumps(hooks))
            return [tid for _, tid in due]

    # -- retention ----------------------------------------------------------------------------

    async def sweep(self, cutoff: float) -> int:
        removed = 0
        for path in sorted((self.root / "tasks").glob("*.json")):
            try:
                task = Task.load(path.read_bytes())
            except (OSError, ValueError):
                continue
            finished = task.timings.finished_at
            if task.status not in TERMINAL or finished is None or finished >= cutoff:
                continue
            async with self._locked():
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                with contextlib.suppress(FileNotFoundError):
                    self._events_path(task.id).unlink()
                if task.idempotency_hash:
                    with contextlib.suppress(FileNotFoundError):
                        (self.root / "idem" / _safe(task.idempotency_hash)).unlink()
                hooks = dict(_read_json(self._webhooks_path, {}))
                if hooks.pop(task.id, None) is not None:
                    _write(self._webhooks_path, json.dumps(hooks))
            removed += 1
        return removed

    async def close(self) -> None:
        self._notify()
