"""The worker: one per proxy replica. It takes queued tasks from the store and runs each on a
ComfyUI pod until its images are in the results store.

For one task:

1. hold until the application has a ready pod with room (`App.wait_for_pod`, which wakes a
   scaled-to-zero application), preferring pods the task has not been lost on;
2. mint a prompt id that carries the pod (`ids.mint`), render the workflow with the
   filename prefix `<results_subfolder>/<prompt id>`, record both on the task, then open the
   pod's `/ws?clientId=` and `POST /prompt`;
3. follow the prompt: WebSocket messages give start, progress and the end; every
   `poll_seconds` the pod's `/queue` + `/history/<id>` (the authority) are cross-checked, and
   the store is read (a cancel from any replica ends the follow);
4. copy the outputs with `/view` into the results store (converted to JPEG/WebP if asked).

A pod that is lost mid-render (removed, unreachable past a grace period, or restarted and no
longer knowing the prompt) sends the task back to the queue, once by default
(`max_attempts`), excluding that pod; then the task fails with the reasons of each attempt.

Reliability: the store's `claim` moves the task id into this worker's processing list and the
worker keeps a heartbeat. Tasks of a worker whose heartbeat expires (a crashed replica) or that
retired (a stopping replica) are taken over by another: a task that had reached ComfyUI is
looked up on its pod (finished: results collected; still queued or running: followed; pod
gone: re-queued), one that had not is simply run. Every write checks the task's `owner`, so a
worker that lost a task (e.g. after a long pause) stops touching it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import itertools
import json
import re
import secrets
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import aiohttp
import structlog

from serverless_comfyui.api.comfy import (
    NETWORK_ERRORS,
    PodClient,
    PodUnavailableError,
    PromptRejectedError,
    history_error,
    history_images,
)
from serverless_comfyui.api.lifecycle import AbandonedError, conclude, emit, status_data
from serverless_comfyui.api.models import Attempt, ResultFile, Task, TaskError
from serverless_comfyui.api.results import ResultStore
from serverless_comfyui.api.settings import ApiSettings
from serverless_comfyui.api.store import StoreError, TaskStore
from serverless_comfyui.proxy import ids
from serverless_comfyui.proxy import metrics as proxy_metrics
from serverless_comfyui.proxy.registry import (
    App,
    HoldRejectedError,
    HoldTimeoutError,
    PodState,
    Registry,
)
from serverless_comfyui.workflows import WorkflowError, WorkflowLibrary, filename_prefix_for

log = structlog.get_logger("api.worker")

Wake = Callable[[App], Awaitable[None]]
_OWNER_SAFE = re.compile(r"[^A-Za-z0-9_.\-]")
_PROGRESS_WRITE_SECONDS = 0.25
_HISTORY_AFTER_SUCCESS_SECONDS = 5.0


@dataclass
class Outcome:
    kind: Literal["completed", "failed", "cancelled", "lost"]
    results: list[ResultFile] = field(default_factory=list)
    error: TaskError | None = None
    reason: str | None = None


def lost(reason: str) -> Outcome:
    return Outcome("lost", reason=reason)


def failed(kind: str, message: str, details: Any = None) -> Outcome:
    return Outcome("failed", error=TaskError(type=kind, message=message, details=details))


def output_nodes_of_graph(graph: dict[str, Any]) -> list[str]:
    """Nodes of a client's graph whose `filename_prefix` is a literal (SaveImage-like)."""
    found = []
    for node_id, node in graph.items():
        inputs = node.get("inputs") if isinstance(node, dict) else None
        if isinstance(inputs, dict) and isinstance(inputs.get("filename_prefix"), str):
            found.append(str(node_id))
    return found


class Worker:
    def __init__(
        self,
        *,
        store: TaskStore,
        results: ResultStore,
        registry: Registry,
        library: WorkflowLibrary,
        session: aiohttp.ClientSession,
        settings: ApiSettings,
        wake: Wake,
        hold_timeout_seconds: float,
        max_held: int,
        on_concluded: Callable[[Task], None] | None = None,
        synced: Callable[[], bool] | None = None,
    ) -> None:
        self.store = store
        self.results = results
        self.registry = registry
        self.library = library
        self.session = session
        self.settings = settings
        self.wake = wake
        self.hold_limit = settings.task_hold_seconds or hold_timeout_seconds
        self.max_held = max_held
        self.on_concluded = on_concluded
        self.synced = synced or (lambda: True)
        base = _OWNER_SAFE.sub("-", settings.replica_name)[:60] or "replica"
        self.owner = f"{base}-{secrets.token_hex(4)}"
        self._slots = asyncio.Semaphore(settings.worker_concurrency)
        self._handlers: dict[str, asyncio.Task[None]] = {}
        self._submitted: defaultdict[str, int] = defaultdict(int)
        """Prompts this worker has on each pod (by pod name), for max_prompts_per_pod."""
        self._sequence = itertools.count()
        self._before_pod: dict[str, tuple[int, str | None]] = {}
        """Tasks taken but without a pod yet: task id -> (order taken, model once known).
        Pods go to them in that order (first come, first served)."""
        self._loops: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.heartbeat(self.owner, self.settings.owner_ttl_seconds)
        self._loops = [
            asyncio.create_task(self._heartbeat_loop(), name="api-heartbeat"),
            asyncio.create_task(self._recovery_loop(), name="api-recovery"),
            asyncio.create_task(self._claim_loop(), name="api-claim"),
        ]
        log.info("worker started", owner=self.owner)

    @property
    def active(self) -> int:
        return len(self._handlers)

    async def stop(self) -> None:
        """Graceful: stop taking work, put back what has not reached a pod, and retire, so
        another replica (or this one's successor) takes over the prompts in flight at once."""
        await self._cancel_all()
        try:
            for task_id in await self.store.processing(self.owner):
                task = await self.store.get(task_id)
                if task is None or task.terminal:
                    await self.store.finish(self.owner, task_id)
                elif task.prompt_id is None or task.phase in ("queued", "waiting_for_pod"):
                    await self.store.update(task_id, _back_to_queue)
                    await self.store.requeue(self.owner, task_id, front=True)
            await self.store.retire(self.owner)
        except StoreError as exc:
            log.warning("could not hand over tasks on stop", error=str(exc))
        log.info("worker stopped", owner=self.owner)

    async def abort(self) -> None:
        """Stop at once without touching the store, as a crash would (for tests)."""
        await self._cancel_all()

    async def _cancel_all(self) -> None:
        tasks = [*self._loops, *self._handlers.values()]
        self._loops = []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._handlers.clear()

    # -- loops --------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        ttl = self.settings.owner_ttl_seconds
        while True:
            await asyncio.sleep(ttl / 3)
            try:
                await self.store.heartbeat(self.owner, ttl)
            except StoreError as exc:
                log.warning("heartbeat failed", error=str(exc))

    async def _until_synced(self) -> None:
        """Discovery has filled the registry (a task must not fail for an application or a
        pod that is merely not discovered yet)."""
        while True:
            if self.synced():
                return
            await asyncio.sleep(0.2)

    async def _recovery_loop(self) -> None:
        await self._until_synced()
        while True:
            try:
                orphans = await self.store.take_orphans(self.owner)
            except StoreError as exc:
                log.warning("cannot look for orphaned tasks", error=str(exc))
                orphans = []
            for task_id in orphans:
                if task_id not in self._handlers:
                    log.info("recovering task of a dead replica", task_id=task_id)
                    self._spawn(task_id, slot=False)
            await asyncio.sleep(self.settings.recovery_interval_seconds)

    async def _claim_loop(self) -> None:
        await self._until_synced()
        while True:
            await self._slots.acquire()
            try:
                task_id = await self.store.claim(self.owner, 1.0)
            except StoreError as exc:
                self._slots.release()
                log.warning("cannot claim tasks", error=str(exc))
                await asyncio.sleep(1.0)
                continue
            except BaseException:
                self._slots.release()
                raise
            if task_id is None:
                self._slots.release()
                continue
            self._spawn(task_id, slot=True)

    def _spawn(self, task_id: str, *, slot: bool) -> None:
        self._before_pod[task_id] = (next(self._sequence), None)
        handler = asyncio.create_task(self._handle(task_id), name=f"api-task-{task_id}")
        self._handlers[task_id] = handler

        def done(_: asyncio.Task[None]) -> None:
            if self._handlers.get(task_id) is handler:
                del self._handlers[task_id]
            self._got_pod(task_id)
            if slot:
                self._slots.release()

        handler.add_done_callback(done)

    async def _handle(self, task_id: str) -> None:
        delay = 0.5
        while True:
            try:
                requeued = await self._run(task_id)
                if not requeued:
                    await self.store.finish(self.owner, task_id)
                return
            except AbandonedError as exc:
                log.info("task abandoned", task_id=task_id, reason=str(exc))
                return
            except StoreError as exc:
                log.warning(
                    "store error while running a task; retrying", task_id=task_id, error=str(exc)
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("task crashed", task_id=task_id)
                with contextlib.suppress(Exception):
                    await self._conclude(
                        task_id,
                        Outcome("failed", error=TaskError(type="internal", message=repr(exc))),
                    )
                    await self.store.finish(self.owner, task_id)
                return

    # -- one task -----------------------------------------------------------------------------

    async def _mutate(self, task_id: str, change: Callable[[Task], None]) -> Task:
        """Apply `change` while this worker owns the task (a no-op once the task is final)."""

        def apply(task: Task) -> Task | None:
            if task.owner != self.owner:
                raise AbandonedError(f"task {task_id} is now owned by {task.owner}")
            if task.terminal:
                return None
            change(task)
            return task

        task = await self.store.update(task_id, apply)
        if task is None:
            raise AbandonedError(f"task {task_id} no longer exists")
        return task

    async def _run(self, task_id: str) -> bool:
        """Run (or resume) a task; True when it went back to the queue."""
        task = await self.store.get(task_id)
        if task is None or task.terminal:
            return False

        def take(t: Task) -> Task | None:
            if t.terminal:
                return None
            t.owner = self.owner
            t.timings.claimed_at = time.time()
            return t

        task = await self.store.update(task_id, take) or task
        if task.terminal:
            return False
        if task_id in self._before_pod:
            self._before_pod[task_id] = (self._before_pod[task_id][0], task.model)
        app = await self._app_for(task)
        if isinstance(app, Outcome):
            await self._conclude(task_id, app)
            return False
        resumable = ("submitting", "submitted", "running", "collecting")
        if task.prompt_id and task.pod and task.phase in resumable:
            self._got_pod(task_id)
            outcome = await self._resume(app, task)
        else:
            outcome = await self._attempt(app, task)
        return await self._settle(task_id, outcome)

    async def _settle(self, task_id: str, outcome: Outcome) -> bool:
        if outcome.kind != "lost":
            await self._conclude(task_id, outcome)
            return False
        task = await self.store.get(task_id)
        if task is None or task.terminal:
            return False
        reason = outcome.reason or "the pod was lost"
        if task.attempt >= task.max_attempts:
            reasons = [f"attempt {a.number} on {a.pod}: {a.reason}" for a in task.attempts[:-1]]
            reasons.append(f"attempt {task.attempt} on {task.pod}: {reason}")
            await self._conclude(
                task_id,
                failed(
                    "pod_lost",
                    f"the pod rendering this task was lost {task.attempt} time(s), giving up ("
                    + "; ".join(reasons)
                    + ")",
                ),
                attempt_outcome="lost",
                attempt_reason=reason,
            )
            return False
        pod = task.pod

        def back(t: Task) -> None:
            if t.attempts and t.attempts[-1].ended_at is None:
                t.attempts[-1].ended_at = time.time()
                t.attempts[-1].outcome = "lost"
                t.attempts[-1].reason = reason
            if pod and pod not in t.excluded_pods:
                t.excluded_pods.append(pod)
            _back_to_queue(t)

        task = await self._mutate(task_id, back)
        await emit(self.store, task_id, "status", status_data(task, requeued=True, reason=reason))
        log.warning("pod lost; task re-queued", task_id=task_id, pod=pod, reason=reason)
        await self.store.requeue(self.owner, task_id, front=True)
        return True

    async def _conclude(
        self,
        task_id: str,
        outcome: Outcome,
        *,
        attempt_outcome: str | None = None,
        attempt_reason: str | None = None,
    ) -> None:
        status = {"completed": "completed", "failed": "failed", "cancelled": "cancelled"}.get(
            outcome.kind, "failed"
        )
        await conclude(
            self.store,
            task_id,
            status,  # type: ignore[arg-type]
            error=outcome.error,
            results=outcome.results if outcome.kind == "completed" else None,
            owner=self.owner,
            attempt_outcome=attempt_outcome,
            attempt_reason=attempt_reason,
            on_concluded=self.on_concluded,
        )

    # -- holding for a pod --------------------------------------------------------------------

    def _got_pod(self, task_id: str) -> None:
        """The task no longer waits for a pod: the next in line may take one."""
        entry = self._before_pod.pop(task_id, None)
        if entry is not None and entry[1] is not None:
            app = self.registry.get(entry[1])
            if app is not None:
                app.changed()

    def _release(self, app: App, pod: PodState) -> None:
        """A prompt of this worker left `pod`: tasks held for room on it may go."""
        self._submitted[pod.name] -= 1
        app.touch()
        app.changed()

    def _pick(self, app: App, task: Task) -> PodState | None:
        mine = self._before_pod.get(task.id, (-1, None))[0]
        for other, (order, model) in self._before_pod.items():
            if other != task.id and order < mine and model in (None, app.name):
                return None  # an earlier task goes first
        serving = [p for p in app.serving_pods() if not p.draining] or app.serving_pods()
        preferred = [p for p in serving if p.name not in task.excluded_pods] or serving
        limit = self.settings.max_prompts_per_pod
        if limit:
            preferred = [p for p in preferred if self._submitted[p.name] < limit]
        if not preferred:
            return None
        return min(preferred, key=lambda p: (self._submitted[p.name], p.outstanding, p.name))

    async def _still_mine(self, task_id: str) -> bool:
        """False when the task was cancelled meanwhile; AbandonedError if taken over."""
        current = await self.store.get(task_id)
        if current is None or current.terminal:
            return False
        if current.owner != self.owner:
            raise AbandonedError(f"task {task_id} is now owned by {current.owner}")
        return True

    async def _app_for(self, task: Task) -> App | Outcome:
        """The task's application; one that is not (yet) in the registry is waited for a
        while (discovery may still be catching up after a restart)."""
        grace = self.settings.missing_model_grace_seconds
        deadline = time.monotonic() + grace
        while True:
            app = self.registry.get(task.model)
            if app is not None:
                return app
            if time.monotonic() >= deadline:
                return failed(
                    "unknown_model",
                    f"application {task.model!r} is not served (not found for {grace:.0f}s)",
                )
            await asyncio.sleep(min(self.settings.poll_seconds, 1.0))
            if not await self._still_mine(task.id):
                return Outcome("cancelled")

    async def _wait_for_pod(self, app: App, task: Task) -> tuple[App, PodState] | Outcome:
        """A pod for the task: held while the application starts (bounded by the hold limit
        while no pod is ready at all) or while its ready pods are full."""
        poll = self.settings.poll_seconds
        no_pod_since: float | None = None
        while True:
            if self.registry.get(task.model) is not app:
                found = await self._app_for(task)
                if isinstance(found, Outcome):
                    return found
                app = found
            try:
                pod = await app.wait_for_pod(
                    poll, self.max_held, self.wake, lambda a: self._pick(a, task)
                )
                # Taken at once (no await in between), so the next in line sees it taken.
                self._submitted[pod.name] += 1
                self._got_pod(task.id)
                if app.wake_started is not None:  # as the proxy's request path does
                    proxy_metrics.COLD_START_SECONDS.labels(app.name).observe(
                        time.monotonic() - app.wake_started
                    )
                    app.wake_started = None
                app.touch()
                return app, pod
            except HoldTimeoutError:
                pass
            except HoldRejectedError:
                await asyncio.sleep(poll)
            if not await self._still_mine(task.id):
                return Outcome("cancelled")
            if app.serving_pods():
                no_pod_since = None
                continue
            no_pod_since = no_pod_since or time.monotonic() - poll
            if time.monotonic() - no_pod_since >= self.hold_limit:
                return failed(
                    "no_capacity",
                    f"no ready pod for {task.model!r} after {self.hold_limit:.0f}s (the "
                    "application did not start; see the FluxWorkflow's status)",
                )

    # -- one attempt --------------------------------------------------------------------------

    def _render(self, task: Task, prompt_id: str) -> dict[str, Any]:
        subfolder = self.settings.results_subfolder
        if task.kind == "generate":
            workflow = self.library.get(task.workflow or "")
            return workflow.render(task.params, prompt_id=prompt_id, output_prefix=subfolder).graph
        graph = copy.deepcopy(task.graph or {})
        prefix = filename_prefix_for(prompt_id, subfolder)
        nodes = output_nodes_of_graph(graph)
        for index, node_id in enumerate(nodes):
            suffix = f"_{index}" if len(nodes) > 1 else ""
            graph[node_id]["inputs"]["filename_prefix"] = prefix + suffix
        return graph

    def _output_nodes(self, task: Task) -> list[str] | None:
        if task.kind == "generate":
            try:
                return list(self.library.get(task.workflow or "").spec.outputs)
            except WorkflowError:
                return None
        return output_nodes_of_graph(task.graph or {})

    async def _attempt(self, app: App, task: Task) -> Outcome:
        def waiting(t: Task) -> None:
            t.phase = "waiting_for_pod"

        task = await self._mutate(task.id, waiting)
        if task.terminal:
            return Outcome("cancelled")
        await emit(self.store, task.id, "status", status_data(task))
        cold = not app.serving_pods()
        started = time.monotonic()
        got = await self._wait_for_pod(app, task)
        if isinstance(got, Outcome):
            return got
        app, pod = got  # the pod is counted in self._submitted: released below
        try:
            held = time.monotonic() - started
            if held >= 0.01:  # it was held (the proxy observes held requests only)
                proxy_metrics.HOLD_SECONDS.labels(app.name).observe(held)
            prompt_id = ids.mint(task.model, pod.name)
            client_id = f"scui-api-{prompt_id}"
            try:
                graph = self._render(task, prompt_id)
            except (WorkflowError, ValueError) as exc:
                return failed("render", f"cannot render the workflow: {exc}")
            at = time.time()

            def submitting(t: Task) -> None:
                t.attempt += 1
                t.prompt_id, t.client_id, t.pod = prompt_id, client_id, pod.name
                t.phase = "submitting"
                t.progress.value, t.progress.max, t.progress.node = 0, 0, None
                t.attempts.append(
                    Attempt(number=t.attempt, pod=pod.name, prompt_id=prompt_id, submitted_at=at)
                )
                t.timings.pod_ready_at = at
                t.timings.hold_seconds += held
                t.timings.cold_start = t.timings.cold_start or cold

            task = await self._mutate(task.id, submitting)
            if task.terminal:
                return Outcome("cancelled")
            return await self._submit_and_follow(app, pod, task, graph)
        finally:
            self._release(app, pod)

    async def _submit_and_follow(
        self, app: App, pod: PodState, task: Task, graph: dict[str, Any]
    ) -> Outcome:
        assert task.prompt_id is not None and task.client_id is not None
        client = PodClient(self.session, pod.url, self.settings.upstream_timeout_seconds)
        async with contextlib.AsyncExitStack() as stack:
            ws = await self._connect(stack, client, task.client_id)
            try:
                await client.submit(graph, task.prompt_id, task.client_id)
            except PromptRejectedError as exc:
                return failed(
                    "comfyui_rejected", f"ComfyUI refused the prompt: {exc}", details=exc.body
                )
            except PodUnavailableError as exc:
                try:
                    found = await client.find(task.prompt_id)
                except PodUnavailableError:
                    return lost(f"pod {pod.name} did not take the prompt: {exc}")
                if found.where == "absent":
                    return lost(f"pod {pod.name} did not take the prompt: {exc}")
            pod.inflight += 1

            def submitted(t: Task) -> None:
                t.phase = "submitted"
                t.timings.submitted_at = time.time()

            task = await self._mutate(task.id, submitted)
            if task.terminal:
                return await self._stop_on_pod(client, task.prompt_id or "")
            await emit(self.store, task.id, "status", status_data(task))
            return await self._follow(app, pod, client, ws, stack, task)

    async def _resume(self, app: App, task: Task) -> Outcome:
        """A task that had reached a pod under a worker that is gone."""
        assert task.prompt_id is not None and task.pod is not None
        pod = app.pods.get(task.pod)
        deadline = time.monotonic() + self.settings.pod_lost_grace_seconds
        while pod is None and time.monotonic() < deadline:  # discovery may lag behind
            await app.wait_changed(min(self.settings.poll_seconds, deadline - time.monotonic()))
            app = self.registry.get(task.model) or app
            pod = app.pods.get(task.pod)
        if pod is None:
            return lost(f"pod {task.pod} is gone (found after a proxy replica was lost)")
        self._submitted[pod.name] += 1
        try:
            client = PodClient(self.session, pod.url, self.settings.upstream_timeout_seconds)
            try:
                found = await client.find(task.prompt_id)
            except PodUnavailableError:
                found = None
            if found is not None and found.where == "history" and found.entry is not None:
                return await self._from_history(app, pod, client, task, found.entry)
            if found is not None and found.where == "absent":
                if task.phase != "submitting":
                    return lost(f"pod {pod.name} no longer knows prompt {task.prompt_id}")
                # The previous owner died before its POST reached the pod: post it now.
                try:
                    graph = self._render(task, task.prompt_id)
                except (WorkflowError, ValueError) as exc:
                    return failed("render", f"cannot render the workflow: {exc}")
                return await self._submit_and_follow(app, pod, task, graph)
            async with contextlib.AsyncExitStack() as stack:
                client_id = task.client_id or f"scui-api-{task.prompt_id}"
                ws = await self._connect(stack, client, client_id)
                return await self._follow(app, pod, client, ws, stack, task)
        finally:
            self._release(app, pod)

    async def _connect(
        self, stack: contextlib.AsyncExitStack, client: PodClient, client_id: str
    ) -> aiohttp.ClientWebSocketResponse | None:
        try:
            ws: aiohttp.ClientWebSocketResponse = await stack.enter_async_context(
                client.websocket(client_id)
            )
            return ws
        except NETWORK_ERRORS as exc:
            log.info(
                "no WebSocket to the pod; following by polling", pod=client.base_url, error=str(exc)
            )
            return None

    # -- following ----------------------------------------------------------------------------

    async def _follow(
        self,
        app: App,
        pod: PodState,
        client: PodClient,
        ws: aiohttp.ClientWebSocketResponse | None,
        stack: contextlib.AsyncExitStack,
        task: Task,
    ) -> Outcome:
        prompt_id = task.prompt_id
        assert prompt_id is not None
        poll = self.settings.poll_seconds
        deadline = (task.timings.submitted_at or time.time()) + self.settings.render_timeout_seconds
        next_check = time.monotonic() + poll
        unreachable_since: float | None = None
        last_progress_write = 0.0
        while True:
            wait = max(0.01, next_check - time.monotonic())
            message: dict[str, Any] | None = None
            if ws is not None and not ws.closed:
                try:
                    msg = await ws.receive(timeout=wait)
                except TimeoutError:
                    msg = None
                except NETWORK_ERRORS:
                    msg, ws = None, None
                if msg is not None:
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        with contextlib.suppress(ValueError):
                            decoded = json.loads(msg.data)
                            message = decoded if isinstance(decoded, dict) else None
                    elif msg.type in (
                        aiohttp.WSMsgType.CLOSE,
                        aiohttp.WSMsgType.CLOSED,
                        aiohttp.WSMsgType.CLOSING,
                        aiohttp.WSMsgType.ERROR,
                    ):
                        ws = None
                        next_check = time.monotonic()  # look at the pod now
            else:
                await asyncio.sleep(wait)

            if message is not None:
                kind = message.get("type")
                data = message.get("data") if isinstance(message.get("data"), dict) else {}
                assert isinstance(data, dict)
                if data.get("prompt_id") == prompt_id:
                    if kind == "execution_start":
                        task = await self._mutate(task.id, _running)
                        if task.terminal:
                            return await self._stop_on_pod(client, prompt_id)
                        await emit(self.store, task.id, "status", status_data(task))
                    elif kind == "progress":
                        value, maximum = data.get("value"), data.get("max")
                        if isinstance(value, int) and isinstance(maximum, int):
                            node = data.get("node")
                            await emit(
                                self.store,
                                task.id,
                                "progress",
                                {"value": value, "max": maximum, "node": node},
                            )
                            now = time.monotonic()
                            if (
                                now - last_progress_write >= _PROGRESS_WRITE_SECONDS
                                or value >= maximum
                            ):
                                last_progress_write = now
                                task = await self._mutate(
                                    task.id,
                                    _progress(
                                        value, maximum, node if isinstance(node, str) else None
                                    ),
                                )
                                if task.terminal:
                                    return await self._stop_on_pod(client, prompt_id)
                    elif kind in ("execution_success", "executing") and (
                        kind == "execution_success" or data.get("node", "") is None
                    ):
                        entry = await self._history_soon(client, prompt_id)
                        if entry is not None:
                            return await self._from_history(app, pod, client, task, entry)
                        next_check = time.monotonic()
                    elif kind == "execution_error":
                        return failed(
                            "execution_error",
                            _ws_error_message(data),
                            details={
                                k: data.get(k)
                                for k in (
                                    "node_id",
                                    "node_type",
                                    "exception_type",
                                    "exception_message",
                                )
                            },
                        )
                    elif kind == "execution_interrupted":
                        return await self._interrupted(task.id)

            if time.monotonic() < next_check:
                continue
            next_check = time.monotonic() + poll
            current = await self.store.get(task.id)
            if current is None or current.terminal:
                return await self._stop_on_pod(client, prompt_id)
            if current.owner != self.owner:
                raise AbandonedError(f"task {task.id} is now owned by {current.owner}")
            if time.time() > deadline:
                await self._stop_on_pod(client, prompt_id)
                return failed(
                    "timeout",
                    f"the prompt ran longer than {self.settings.render_timeout_seconds:.0f}s",
                )
            try:
                found = await client.find(prompt_id)
            except PodUnavailableError as exc:
                now = time.monotonic()
                unreachable_since = unreachable_since or now
                if app.pods.get(pod.name) is None:
                    return lost(f"pod {pod.name} was removed and does not answer ({exc})")
                silent = now - unreachable_since
                if silent >= self.settings.pod_lost_grace_seconds:
                    return lost(f"pod {pod.name} has not answered for {silent:.0f}s ({exc})")
                continue
            unreachable_since = None
            if found.where == "history" and found.entry is not None:
                return await self._from_history(app, pod, client, task, found.entry)
            if found.where == "absent":
                return lost(f"pod {pod.name} no longer knows prompt {prompt_id} (restarted?)")
            if found.where == "running" and task.status != "running":
                task = await self._mutate(task.id, _running)
                await emit(self.store, task.id, "status", status_data(task))
            if ws is None or ws.closed:
                ws = await self._connect(stack, client, task.client_id or f"scui-api-{prompt_id}")

    async def _history_soon(self, client: PodClient, prompt_id: str) -> dict[str, Any] | None:
        """The history record right after the end message (ComfyUI writes it a moment later)."""
        deadline = time.monotonic() + _HISTORY_AFTER_SUCCESS_SECONDS
        delay = 0.02
        while True:
            try:
                entry = await client.history(prompt_id)
            except PodUnavailableError:
                return None
            if entry is not None or time.monotonic() >= deadline:
                return entry
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.5)

    async def _interrupted(self, task_id: str) -> Outcome:
        current = await self.store.get(task_id)
        if current is None or current.terminal or current.cancel_requested:
            return Outcome("cancelled")
        return failed("interrupted", "the prompt was interrupted on the pod")

    async def _stop_on_pod(self, client: PodClient, prompt_id: str) -> Outcome:
        """The task was cancelled (by any replica): make sure the pod drops the prompt."""
        with contextlib.suppress(PodUnavailableError):
            await client.cancel(prompt_id)
        return Outcome("cancelled")

    async def _from_history(
        self, app: App, pod: PodState, client: PodClient, task: Task, entry: dict[str, Any]
    ) -> Outcome:
        error = history_error(entry)
        if error is not None:
            kind, message, details = error
            if kind == "interrupted":
                return await self._interrupted(task.id)
            return failed(kind, message, details)
        return await self._collect(pod, client, task, entry)

    async def _collect(
        self, pod: PodState, client: PodClient, task: Task, entry: dict[str, Any]
    ) -> Outcome:
        def collecting(t: Task) -> None:
            t.phase = "collecting"

        task = await self._mutate(task.id, collecting)
        images = history_images(entry, self._output_nodes(task))
        if not images:
            return failed("no_output", "the prompt finished without saving any image")
        results: list[ResultFile] = []
        for node, item in images:
            try:
                data = await client.view(
                    str(item["filename"]),
                    str(item.get("subfolder", "")),
                    str(item.get("type", "output")),
                )
            except PodUnavailableError as exc:
                return lost(f"cannot copy the outputs from pod {pod.name}: {exc}")
            results.append(
                await self.results.save(
                    task.id,
                    str(item["filename"]),
                    data,
                    fmt=task.output.format,
                    quality=task.output.quality,
                    node=node,
                )
            )
        return Outcome("completed", results=results)


def _running(t: Task) -> None:
    t.status = "running"
    t.phase = "running"
    if t.timings.started_at is None:
        t.timings.started_at = time.time()


def _progress(value: int, maximum: int, node: str | None) -> Callable[[Task], None]:
    def apply(t: Task) -> None:
        if t.status != "running":
            _running(t)
        t.progress.value, t.progress.max, t.progress.node = value, maximum, node

    return apply


def _back_to_queue(t: Task) -> Task:
    t.status = "queued"
    t.phase = "queued"
    t.owner = None
    t.prompt_id = None
    t.client_id = None
    t.pod = None
    t.progress.value, t.progress.max, t.progress.node = 0, 0, None
    t.timings.started_at = None
    t.timings.submitted_at = None
    return t


def _ws_error_message(data: dict[str, Any]) -> str:
    node = data.get("node_type") or "a node"
    text = str(data.get("exception_message") or "unknown error").strip()
    return f"{node} (node {data.get('node_id')}) failed: {text}"
