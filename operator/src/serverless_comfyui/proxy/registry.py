"""What the proxy knows: applications (FluxWorkflows) and their pods.

Discovery (a watch of FluxWorkflows and Pods, or a static list) writes here; the request path
reads from here to pick a pod, hold a request until one is ready, and resolve a prompt id to its
pod; the autoscaler reads the demand (held requests, outstanding prompts, open sessions, last
activity). All of it lives on one event loop: no locks, and waiters are woken by broadcast.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

from serverless_comfyui.proxy import ids


class HoldRejectedError(Exception):
    """The hold queue of the application is full."""


class HoldTimeoutError(Exception):
    """No ready pod appeared within the hold limit."""


@dataclass
class PodState:
    name: str
    url: str
    """Base URL of ComfyUI in the pod, e.g. http://127.66.0.3:8188."""
    ready: bool = False
    deleting: bool = False
    draining: bool = False
    """Chosen for removal by the autoscaler: gets no new prompts."""
    queue_remaining: int = 0
    """Prompts queued or running on the pod, as its ComfyUI last reported."""
    inflight: int = 0
    """Prompts this replica submitted that the pod has not reported yet."""
    hash: int = 0

    def __post_init__(self) -> None:
        self.hash = ids.pod_hash(self.name)

    @property
    def outstanding(self) -> int:
        return self.queue_remaining + self.inflight

    @property
    def serving(self) -> bool:
        return self.ready and not self.deleting


@dataclass
class AppSpec:
    namespace: str = ""
    min_replicas: int = 0
    max_replicas: int = 1
    target_requests: int = 5
    scale_down_delay_seconds: float = 30.0
    replicas: int = 0
    """The FluxWorkflow's spec.replicas (what the scale subresource says now)."""
    workflow: str | None = None
    """The library workflow it serves (spec.workflow.name; None for a ConfigMap's): what the
    generation API runs for the application when a request names none."""


@dataclass
class App:
    name: str
    spec: AppSpec = field(default_factory=AppSpec)
    pods: dict[str, PodState] = field(default_factory=dict)
    held: int = 0
    open_sessions: int = 0
    """Open WebSockets and UI sessions: activity that keeps the application awake."""
    last_activity: float = field(default_factory=time.monotonic)
    wake_started: float | None = None
    """When a request found no ready pod and woke the application (monotonic); the request
    path observes the cold-start time when it first forwards, then clears it."""
    hash: int = 0
    _changed: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.hash = ids.model_hash(self.name)

    # -- discovery writes ---------------------------------------------------------------------

    def set_pod(self, pod: PodState) -> None:
        previous = self.pods.get(pod.name)
        if previous is not None:
            # Keep what the monitors and the request path learned about the pod.
            pod.queue_remaining, pod.inflight = previous.queue_remaining, previous.inflight
            pod.draining = previous.draining or pod.draining
        self.pods[pod.name] = pod
        self.changed()

    def remove_pod(self, name: str) -> None:
        if self.pods.pop(name, None) is not None:
            self.changed()

    def changed(self) -> None:
        """Wake everyone waiting for this application's pods to change (broadcast)."""
        event, self._changed = self._changed, asyncio.Event()
        event.set()

    async def wait_changed(self, within: float | None = None) -> bool:
        """Wait for the next change of this application's pods (the broadcast above); True if
        one came within `within` seconds. For watchers such as WebSocket fan-in and monitors."""
        try:
            await asyncio.wait_for(self._changed.wait(), within)
        except TimeoutError:
            return False
        return True

    # -- request path reads -------------------------------------------------------------------

    def touch(self) -> None:
        self.last_activity = time.monotonic()

    def serving_pods(self) -> list[PodState]:
        return [p for p in self.pods.values() if p.serving]

    def pick_for_prompt(self) -> PodState | None:
        """The serving pod with the fewest outstanding prompts (ComfyUI runs one at a time).
        Pods being drained only when nothing else serves, and never once the application is
        going to zero (their results would leave with them): then the request is held."""
        serving = self.serving_pods()
        candidates = [p for p in serving if not p.draining]
        if not candidates and self.spec.replicas > 0:
            candidates = serving
        if not candidates:
            return None
        return min(candidates, key=lambda p: (p.outstanding, p.name))

    def pod_by_hash(self, pod_hash: int) -> PodState | None:
        return next((p for p in self.pods.values() if p.hash == pod_hash), None)

    @property
    def outstanding(self) -> int:
        """Demand for the autoscaler: held requests plus prompts queued or running."""
        return self.held + sum(p.outstanding for p in self.pods.values() if not p.deleting)

    @property
    def busy(self) -> bool:
        return self.held > 0 or self.open_sessions > 0 or self.outstanding > 0

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """An open WebSocket or UI session: the application stays awake while it lasts."""
        self.open_sessions += 1
        self.touch()
        try:
            yield
        finally:
            self.open_sessions -= 1
            self.touch()

    async def wait_for_pod(
        self,
        limit_seconds: float,
        max_held: int,
        wake: Callable[[App], Awaitable[None]],
        pick: Callable[[App], PodState | None] | None = None,
    ) -> PodState:
        """A serving pod, waiting (held) up to limit_seconds for one to become ready.
        Calls wake(app) once when there is none, so a scaled-to-zero application starts."""
        choose = pick or (lambda app: app.pick_for_prompt())
        pod = choose(self)
        if pod is not None:
            return pod
        if self.held >= max_held:
            raise HoldRejectedError(f"{self.held} requests already wait for {self.name}")
        self.held += 1
        self.touch()
        if self.wake_started is None:
            self.wake_started = time.monotonic()
        deadline = asyncio.get_running_loop().time() + limit_seconds
        try:
            await wake(self)
            while (pod := choose(self)) is None:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    raise HoldTimeoutError(
                        f"no ready pod for {self.name} after {limit_seconds:.0f}s"
                    )
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), remaining)
            return pod
        finally:
            self.held -= 1
            self.touch()


@dataclass
class Registry:
    apps: dict[str, App] = field(default_factory=dict)
    """By model name (the FluxWorkflow's name)."""

    def get(self, model: str) -> App | None:
        return self.apps.get(model)

    def workflow_of(self, model: str) -> str | None:
        """The library workflow the application serves (its FluxWorkflow's), if known."""
        app = self.apps.get(model)
        return app.spec.workflow if app is not None else None

    def ensure(self, model: str) -> App:
        app = self.apps.get(model)
        if app is None:
            app = self.apps[model] = App(name=model)
        return app

    def remove(self, model: str) -> None:
        app = self.apps.pop(model, None)
        if app is not None:
            app.changed()

    def route(self, prompt_id: str) -> tuple[App, PodState | None] | None:
        """The application and pod a proxy-minted prompt id belongs to. The pod is None when
        it is gone; the whole answer is None when the id is not ours or its app is unknown."""
        route = ids.decode(prompt_id)
        if route is None:
            return None
        app = next((a for a in self.apps.values() if a.hash == route.model_hash), None)
        if app is None:
            return None
        return app, app.pod_by_hash(route.pod_hash)
