"""The queue-aware autoscaler: one decision per application every `autoscale_interval_seconds`,
written through the FluxWorkflow's `scale` subresource by the one replica holding the Lease.

Demand is held requests plus prompts queued or running on the application's pods (architecture
decision 1), summed over all proxy replicas (`activity`). The rules, in `decide` (pure, time
injected):

- desired = clamp(ceil(demand / targetRequests), minReplicas, maxReplicas);
- at least 1 while busy (a held request, an open WebSocket/UI session, an outstanding prompt);
- at least 1, when already running, while the last activity is younger than
  scaleDownDelaySeconds (a request, the end of a busy moment, or a scale-up of the count);
- up: at once;
- down to n >= 1: once the desired value has stayed below the current count for
  scaleDownDelaySeconds, to the highest desired value seen meanwhile;
- down to 0: once idle (not busy, no request) for scaleDownDelaySeconds; the idle time is itself
  the delay, so 0 comes scaleDownDelaySeconds after the last activity, not twice that.

Every scale-down goes through the drain (`drain.Drainer`): never below the number of pods with
work, victims marked and settled first.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog

from serverless_comfyui.proxy import metrics
from serverless_comfyui.proxy.activity import Activity, ActivityBoard, latest
from serverless_comfyui.proxy.drain import Drainer
from serverless_comfyui.proxy.kubeapi import micro_time, parse_time, time_now
from serverless_comfyui.proxy.lease import LeaderElector
from serverless_comfyui.proxy.registry import App, Registry

log = structlog.get_logger("serverless_comfyui.proxy.autoscaler")

TAKEOVER_GRACE_SECONDS = 5.0
"""A new leader scales nothing down this long: the pod monitors and the other replicas'
activity reach it first."""
GARBAGE_EVERY_SECONDS = 300.0


@dataclass(frozen=True)
class Limits:
    min_replicas: int = 0
    max_replicas: int = 1
    target_requests: int = 5
    scale_down_delay: float = 30.0


@dataclass(frozen=True)
class Demand:
    held: int = 0
    """Requests waiting for a ready pod (all replicas)."""
    outstanding: int = 0
    """Prompts queued or running on the pods, and submitted but not yet reported."""
    sessions: int = 0
    """Open WebSocket and UI sessions (all replicas)."""
    last_activity: float | None = None
    """Wall-clock seconds of the last request, busy moment or scale-up; None: never."""

    @property
    def busy(self) -> bool:
        return self.held > 0 or self.outstanding > 0 or self.sessions > 0


@dataclass(frozen=True)
class Window:
    """A pending scale-down from `replicas`: the desired value has been lower since `since`
    (wall clock); `peak` is the highest desired value seen meanwhile."""

    replicas: int
    since: float
    peak: int

    def wire(self) -> dict[str, Any]:
        return {"replicas": self.replicas, "since": micro_time(self.since), "peak": self.peak}

    @classmethod
    def from_wire(cls, data: Any) -> Window | None:
        if not isinstance(data, dict):
            return None
        since = parse_time(data.get("since"))
        replicas, peak = data.get("replicas"), data.get("peak")
        if since is None or not isinstance(replicas, int) or not isinstance(peak, int):
            return None
        return cls(replicas, since, peak)


@dataclass(frozen=True)
class Decision:
    replicas: int
    """The count wanted now (== current: no change)."""
    window: Window | None
    reason: str


def desired_replicas(current: int, limits: Limits, demand: Demand, now: float) -> tuple[int, str]:
    """What the demand asks for right now, before any delay."""
    load = demand.held + demand.outstanding
    wanted = math.ceil(load / max(1, limits.target_requests))
    desired = min(max(wanted, limits.min_replicas), limits.max_replicas)
    reason = f"demand {load} for {limits.target_requests} per pod"
    if desired < 1 and demand.busy:
        desired, reason = 1, "busy"
    idle_for = math.inf if demand.last_activity is None else now - demand.last_activity
    if desired < 1 and current >= 1 and idle_for < limits.scale_down_delay:
        desired, reason = 1, f"active {idle_for:.1f}s ago"
    return desired, reason


def decide(
    current: int, limits: Limits, demand: Demand, window: Window | None, now: float
) -> Decision:
    desired, reason = desired_replicas(current, limits, demand, now)
    if desired >= current:
        return Decision(desired, None, reason)
    if desired == 0:
        return Decision(0, None, f"idle for {limits.scale_down_delay:g}s or more")
    if window is None or window.replicas != current:
        window = Window(current, now, desired)
    else:
        window = Window(current, window.since, max(window.peak, desired))
    waited = now - window.since
    if waited >= limits.scale_down_delay:
        return Decision(window.peak, window, f"{reason}; lower for {waited:.1f}s")
    return Decision(current, window, f"{reason}; lower for {waited:.1f}s, waiting")


def limits_of(app: App) -> Limits:
    spec = app.spec
    return Limits(
        spec.min_replicas, spec.max_replicas, spec.target_requests, spec.scale_down_delay_seconds
    )


class Scaler(Protocol):
    """What the autoscaler needs from discovery besides the drain."""

    @property
    def synced(self) -> bool: ...

    def scaled_up_at(self, model: str) -> float | None:
        """When this replica saw the application's count go up (wall clock)."""

    async def scale(self, app: App, replicas: int, *, conditional: bool) -> bool:
        """Write spec.replicas through the scale subresource; conditional: only if the
        FluxWorkflow has not changed since discovery saw it. True when written."""

    def record(self, app: App, reason: str, message: str) -> None:
        """Report a decision as a Kubernetes Event on the FluxWorkflow (best effort)."""


class Autoscaler:
    def __init__(
        self,
        registry: Registry,
        scaler: Scaler,
        drainer: Drainer,
        elector: LeaderElector,
        board: ActivityBoard,
        interval: float,
    ) -> None:
        self.registry = registry
        self.scaler = scaler
        self.drainer = drainer
        self.elector = elector
        self.board = board
        self.interval = interval
        self.windows: dict[str, Window] = {}
        self._leading_since: float | None = None
        self._garbage_at = 0.0

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.tick()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("autoscaler tick failed")

    def demand(self, app: App) -> Demand:
        """This replica's view plus the other replicas' published activity."""
        local: Activity = self.board.local(app)
        fresh, any_last = self.board.others(app.name)
        return Demand(
            held=app.held + fresh.held,
            outstanding=app.outstanding - app.held + fresh.outstanding_local,
            sessions=app.open_sessions + fresh.sessions,
            last_activity=latest(local.last_activity, any_last, self.scaler.scaled_up_at(app.name)),
        )

    def _update_metrics(self) -> None:
        for app in self.registry.apps.values():
            metrics.OUTSTANDING.labels(app.name).set(app.outstanding)
            metrics.HELD.labels(app.name).set(app.held)
            metrics.OPEN_SESSIONS.labels(app.name).set(app.open_sessions)

    async def tick(self) -> None:
        self._update_metrics()
        if not (self.scaler.synced and self.elector.is_leader):
            self._leading_since = None
            return
        if self._leading_since != self.elector.acquired_at:
            self._leading_since = self.elector.acquired_at
            self.windows = _windows_from(self.elector.inherited_state)
        for app in list(self.registry.apps.values()):
            if not app.spec.namespace:
                continue
            try:
                await self._tick_app(app)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one application's trouble must not stall the others
                log.warning("autoscaling failed", model=app.name, error=str(exc)[:300])
        for model in [m for m in self.windows if m not in self.registry.apps]:
            del self.windows[model]
            self.drainer.forget(model)
        self.elector.state = {"windows": {m: w.wire() for m, w in sorted(self.windows.items())}}
        if time.monotonic() - self._garbage_at > GARBAGE_EVERY_SECONDS:
            self._garbage_at = time.monotonic()
            await self.board.collect_garbage(_longest_delay(self.registry.apps.values()))

    async def _tick_app(self, app: App) -> None:
        current = app.spec.replicas
        demand = self.demand(app)
        decision = decide(current, limits_of(app), demand, self.windows.get(app.name), time_now())
        if decision.window is None:
            self.windows.pop(app.name, None)
        else:
            self.windows[app.name] = decision.window
        target = decision.replicas
        if target >= current:
            await self.drainer.cancel(app)
            if target > current:
                await self._write(app, current, target, "up", decision.reason, demand)
            return
        acquired = self.elector.acquired_at or 0.0
        if time.monotonic() - acquired < TAKEOVER_GRACE_SECONDS:
            return
        replicas = await self.drainer.scale_down(app, current, target)
        if replicas is None or replicas >= current:
            return
        if await self._write(app, current, replicas, "down", decision.reason, demand):
            self.drainer.committed(app)

    async def _write(
        self, app: App, current: int, replicas: int, direction: str, reason: str, demand: Demand
    ) -> bool:
        # Scale-downs only apply to the state they were decided on: a wake by another replica
        # in between makes the write fail, and the next tick decides again.
        if not await self.scaler.scale(app, replicas, conditional=direction == "down"):
            return False
        metrics.SCALE_EVENTS.labels(app.name, direction).inc()
        self.scaler.record(
            app,
            "ScaledUp" if direction == "up" else "ScaledDown",
            f"{current} -> {replicas} replicas: {reason}",
        )
        log.info(
            "scaled",
            model=app.name,
            namespace=app.spec.namespace,
            direction=direction,
            replicas=replicas,
            previous=current,
            reason=reason,
            held=demand.held,
            outstanding=demand.outstanding,
            sessions=demand.sessions,
            last_activity=None
            if demand.last_activity is None
            else micro_time(demand.last_activity),
        )
        return True


def _windows_from(state: dict[str, Any]) -> dict[str, Window]:
    windows = {}
    for model, data in dict(state.get("windows") or {}).items():
        window = Window.from_wire(data)
        if window is not None:
            windows[str(model)] = window
    return windows


def _longest_delay(apps: Iterable[App]) -> float:
    return max((a.spec.scale_down_delay_seconds for a in apps), default=0.0)
