"""The generation API's engine, shared by its HTTP sub-applications: the store, the results,
the worker, the webhook dispatcher and the retention sweep of one proxy replica."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import structlog

from serverless_comfyui.api import metrics
from serverless_comfyui.api.comfy import PodClient, PodUnavailableError
from serverless_comfyui.api.lifecycle import conclude, emit, final_event, status_data
from serverless_comfyui.api.models import TERMINAL, Task
from serverless_comfyui.api.requests import WorkflowOf
from serverless_comfyui.api.results import ResultStore
from serverless_comfyui.api.settings import ApiSettings
from serverless_comfyui.api.store import Event, StoreError, TaskStore, open_store
from serverless_comfyui.api.views import comfyui_api_view, iso, task_view
from serverless_comfyui.api.webhooks import WebhookDispatcher
from serverless_comfyui.api.worker import Worker
from serverless_comfyui.proxy.registry import App, Registry
from serverless_comfyui.workflows import WorkflowLibrary, load_library

log = structlog.get_logger("api")

Wake = Callable[[App], Awaitable[None]]
FINAL_EVENTS = frozenset({"completed", "failed", "cancelled"})


class ApiService:
    def __init__(
        self,
        settings: ApiSettings,
        registry: Registry,
        wake: Wake,
        session: aiohttp.ClientSession | None,
        hold_timeout_seconds: float,
        max_held: int,
        *,
        library: WorkflowLibrary | None = None,
        workflow_of: WorkflowOf | None = None,
        store: TaskStore | None = None,
        synced: Callable[[], bool] | None = None,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.wake = wake
        self.hold_timeout_seconds = hold_timeout_seconds
        self.max_held = max_held
        self.library = library if library is not None else load_library()
        self.workflow_of = workflow_of
        self.synced = synced
        self._given_session = session
        self._own_session: aiohttp.ClientSession | None = None
        self._given_store = store
        self._store: TaskStore | None = store
        self.results = ResultStore(settings.results_dir)
        self.worker: Worker | None = None
        self.dispatcher: WebhookDispatcher | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self.started = False
        self.spec: dict[str, Any] | None = None
        """The OpenAPI description, built on first use."""

    # -- lifecycle ----------------------------------------------------------------------------

    @property
    def store(self) -> TaskStore:
        if self._store is None:
            raise RuntimeError("the generation API has not started")
        return self._store

    @property
    def session(self) -> aiohttp.ClientSession:
        session = self._given_session or self._own_session
        if session is None:
            raise RuntimeError("the generation API has not started")
        return session

    async def start(self) -> None:
        if self._given_session is None:
            self._own_session = aiohttp.ClientSession()
        if self._store is None:
            self._store = open_store(
                self.settings.store_url,
                prefix=self.settings.store_prefix,
                retention_seconds=self.settings.retention_seconds,
            )
        self.settings.results_dir.mkdir(parents=True, exist_ok=True)
        secret = self.settings.webhook_secret
        self.dispatcher = WebhookDispatcher(
            self.store,
            self.session,
            self.webhook_payload,
            secret=secret.get_secret_value() if secret else None,
            max_attempts=self.settings.webhook_max_attempts,
            initial_backoff=self.settings.webhook_initial_backoff_seconds,
            max_backoff=self.settings.webhook_max_backoff_seconds,
            timeout=self.settings.webhook_timeout_seconds,
            poll_seconds=self.settings.webhook_poll_seconds,
            block_private=self.settings.webhook_block_private_addresses,
        )
        self.worker = Worker(
            store=self.store,
            results=self.results,
            registry=self.registry,
            library=self.library,
            session=self.session,
            settings=self.settings,
            wake=self.wake,
            hold_timeout_seconds=self.hold_timeout_seconds,
            max_held=self.max_held,
            on_concluded=self._concluded,
            synced=self.synced,
        )
        await self.worker.start()
        self.dispatcher.start()
        self._sweeper = asyncio.create_task(self._sweep_loop(), name="api-sweep")
        self.started = True
        log.info(
            "generation API started",
            store=self.settings.store_url.split("@")[-1],
            results=str(self.settings.results_dir),
            owner=self.worker.owner,
        )
        if self.settings.ephemeral:
            log.warning(
                "generation API tasks are kept in a temporary folder and lost on restart: set "
                "SERVERLESS_COMFYUI_API_STATE_DIR (a volume) or SERVERLESS_COMFYUI_API_STORE_URL"
            )

    async def stop(self, *, crash: bool = False) -> None:
        """Stop (gracefully: hand in-flight work over). `crash=True` stops without telling
        the store anything, as a killed process would (for tests). Idempotent."""
        if not self.started:
            return
        self.started = False
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        if self.dispatcher is not None:
            await self.dispatcher.stop()
        if self.worker is not None:
            if crash:
                await self.worker.abort()
            else:
                await self.worker.stop()
        if self._store is not None and self._given_store is None:
            await self._store.close()
            self._store = None
        if self._own_session is not None:
            await self._own_session.close()
            self._own_session = None

    def _concluded(self, task: Task) -> None:
        metrics.TASKS_FINISHED.labels(task.model, task.status).inc()
        if task.timings.finished_at is not None:
            metrics.TASK_SECONDS.labels(task.model, task.status).observe(
                task.timings.finished_at - task.timings.created_at
            )
        if task.webhook is not None and self.dispatcher is not None:
            self.dispatcher.poke()

    # -- requests -----------------------------------------------------------------------------

    async def submit(self, task: Task) -> tuple[Task, bool]:
        """Store and queue a task; with an idempotency key already used, the earlier task."""
        stored, created = await self.store.create(task)
        if created:
            metrics.TASKS_ACCEPTED.labels(task.model, task.kind).inc()
            await emit(self.store, task.id, "status", status_data(stored))
        return stored, created

    async def get(self, task_id: str) -> Task | None:
        return await self.store.get(task_id)

    async def position(self, task: Task) -> int | None:
        if task.status != "queued" or task.phase != "queued":
            return None
        try:
            return await self.store.queue_position(task.id)
        except StoreError:
            return None

    async def cancel(self, task_id: str) -> Task | None:
        """Cancel a task wherever it is: out of the queue, out of a pod's queue, or
        interrupted while it runs. A final task is returned unchanged."""
        task = await self.store.get(task_id)
        if task is None or task.terminal:
            return task
        await self.store.dequeue(task_id)
        cancelled = await conclude(self.store, task_id, "cancelled", on_concluded=self._concluded)
        if cancelled is not None and cancelled.prompt_id and cancelled.pod:
            app = self.registry.get(cancelled.model)
            pod = app.pods.get(cancelled.pod) if app is not None else None
            if pod is not None:
                try:
                    await PodClient(self.session, pod.url, 10.0).cancel(cancelled.prompt_id)
                except PodUnavailableError as exc:
                    log.info("could not cancel on the pod", task_id=task_id, error=str(exc))
        return cancelled

    async def wait(self, task_id: str, wait_seconds: float) -> Task | None:
        """The task once final, or as it is after `wait_seconds`."""
        deadline = time.monotonic() + wait_seconds
        after: str | None = None
        while True:
            task = await self.store.get(task_id)
            if task is None or task.terminal:
                return task
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return task
            events = await self.store.read_events(task_id, after, min(remaining, 5.0))
            for event_id, event in events:
                after = event_id
                if event.get("type") in FINAL_EVENTS:
                    return await self.store.get(task_id)

    async def events(
        self, task_id: str, after: str | None, keepalive: float
    ) -> AsyncIterator[tuple[str | None, Event]]:
        """The task's events in order (after `after`), ending with its final event. Yields
        (None, {"type": "keepalive"}) every `keepalive` seconds of silence. When the store
        lost the final event (a replica died in between), one is made from the task."""
        while True:
            batch = await self.store.read_events(task_id, after, keepalive)
            for event_id, event in batch:
                after = event_id
                yield event_id, event
                if event.get("type") in FINAL_EVENTS:
                    return
            task = await self.store.get(task_id)
            if task is None:
                return
            if task.terminal:
                late = await self.store.read_events(task_id, after, 0)
                for event_id, event in late:
                    after = event_id
                    yield event_id, event
                    if event.get("type") in FINAL_EVENTS:
                        return
                kind, data = final_event(task)
                yield None, {"type": kind, "data": data, "at": time.time()}
                return
            if not batch:
                yield None, {"type": "keepalive", "data": {}, "at": time.time()}

    # -- views --------------------------------------------------------------------------------

    async def images_base64(self, task: Task) -> dict[str, str]:
        out: dict[str, str] = {}
        for result in task.results:
            data = await self.results.read(task.id, result.filename)
            if data is not None:
                out[result.filename] = base64.b64encode(data).decode()
        return out

    async def view(self, task: Task, *, with_images: bool = False) -> dict[str, Any]:
        images = await self.images_base64(task) if with_images else None
        return task_view(task, queue_position=await self.position(task), images=images)

    async def webhook_payload(self, task: Task) -> dict[str, Any]:
        hook = task.webhook
        if hook is not None and hook.format == "comfyui-api":
            if task.status == "completed":
                images = await self.images_base64(task)
                body = comfyui_api_view(task, [images.get(r.filename, "") for r in task.results])
                return {"type": "prompt.complete", "timestamp": iso(time.time()), **body}
            return {
                "type": "prompt.failed",
                "timestamp": iso(time.time()),
                "id": task.external_id or task.id,
                "task_id": task.id,
                "prompt": task.graph,
                "error": task.error.message if task.error else task.status,
            }
        with_images = task.output.delivery == "base64" and task.status == "completed"
        return {
            "type": f"task.{task.status}",
            "timestamp": iso(time.time()),
            "data": await self.view(task, with_images=with_images),
        }

    # -- retention ----------------------------------------------------------------------------

    async def sweep(self) -> int:
        """Delete tasks and results past their retention; returns result folders deleted."""
        cutoff = time.time() - self.settings.retention_seconds
        try:
            await self.store.sweep(cutoff)
        except StoreError as exc:
            log.warning("task sweep failed", error=str(exc))
        removed = 0
        for task_id in self.results.task_ids():
            if self.results.age_seconds(task_id) < self.settings.retention_seconds:
                continue
            try:
                task = await self.store.get(task_id)
            except StoreError:
                continue
            finished = task.timings.finished_at if task is not None else None
            expired = task is None or (
                task.status in TERMINAL and finished is not None and finished < cutoff
            )
            if expired:
                await self.results.remove(task_id)
                removed += 1
        if removed:
            metrics.RESULTS_SWEPT.inc(removed)
            log.info("expired results deleted", folders=removed)
        return removed

    async def _sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("retention sweep failed")
            await asyncio.sleep(self.settings.sweep_interval_seconds)
