"""Drain before delete: a scale-down never removes a pod with queued or running prompts.

Lowering a FluxWorkflow's replicas makes its ReplicaSet delete pods, lowest-ranked first:
unscheduled < pending < running, not ready < ready, then lower
`controller.kubernetes.io/pod-deletion-cost` first. So before lowering the count the
autoscaler:

1. picks the victims: the pods the ReplicaSet would remove first, among idle pods only (if the
   next one in line has work, it stops there: never below the number of pods with work);
2. annotates every pod of the application with a deletion cost (victims -1, idle pods 0, busy
   pods their outstanding prompts) and the victims with `serverless-comfyui.io/draining=true`,
   which every proxy replica's pod watch turns into `PodState.draining` (no new prompts);
3. one settle period later, if the same victims are still idle, writes the lower count.

The pod's preStop hook (`/drain` on its health port) then waits for its queue to empty, in case
a prompt still slipped in.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog

from serverless_comfyui.proxy.registry import App

log = structlog.get_logger("serverless_comfyui.proxy.drain")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
DRAINING = "serverless-comfyui.io/draining"
SETTLE_SECONDS = 2.0
"""Between marking the victims and lowering the count: every replica's pod watch has seen the
marks, and a prompt another replica sent just before shows in the pod's queue."""
DOOMED_SECONDS = 30.0
"""After lowering the count, the victims keep their marks this long even if the autoscaler
changes its mind (the ReplicaSet is deleting them)."""


@dataclass(frozen=True)
class PodView:
    """What the drain needs to know of one pod."""

    name: str
    scheduled: bool = True
    running: bool = True
    ready: bool = True
    deleting: bool = False
    outstanding: int = 0
    annotations: dict[str, str] = field(default_factory=dict)

    @property
    def rank(self) -> tuple[bool, bool, bool]:
        """The ReplicaSet's order before the deletion cost: lower goes first."""
        return self.scheduled, self.running, self.ready


@dataclass(frozen=True)
class DrainPlan:
    replicas: int
    """The count to write: >= the target asked for and >= the pods with work."""
    victims: tuple[str, ...]
    costs: dict[str, int]


def plan_scale_down(pods: Sequence[PodView], target: int) -> DrainPlan:
    """Which pods go when lowering to `target` replicas (pure)."""
    live = [p for p in pods if not p.deleting]
    with_work = sum(1 for p in live if p.outstanding > 0)
    target = max(target, with_work)
    order = sorted(live, key=lambda p: (p.rank, p.outstanding, p.name))
    victims: list[str] = []
    for pod in order[: max(0, len(live) - target)]:
        if pod.outstanding > 0:
            break  # the ReplicaSet would take this one next: stop above it
        victims.append(pod.name)
    replicas = max(target, len(live) - len(victims))
    costs = {p.name: -1 if p.name in victims else min(p.outstanding, 1_000_000) for p in live}
    return DrainPlan(replicas, tuple(victims), costs)


def wanted_annotations(plan: DrainPlan, pod: str) -> dict[str, str | None]:
    return {
        DELETION_COST: str(plan.costs[pod]),
        DRAINING: "true" if pod in plan.victims else None,
    }


class Cluster(Protocol):
    """What the drain needs from discovery."""

    def pod_views(self, app: App) -> list[PodView]: ...

    async def annotate_pod(self, app: App, pod: str, annotations: dict[str, str | None]) -> None:
        """Merge-patch the pod's annotations (None removes one) and mirror `draining` in the
        registry at once."""


@dataclass
class _Pending:
    plan: DrainPlan
    marked_at: float


class Drainer:
    def __init__(self, cluster: Cluster, settle_seconds: float = SETTLE_SECONDS) -> None:
        self.cluster = cluster
        self.settle_seconds = settle_seconds
        self._pending: dict[str, _Pending] = {}
        self._doomed: dict[str, tuple[set[str], float]] = {}

    async def scale_down(self, app: App, current: int, target: int) -> int | None:
        """The count to write now for a scale-down from current towards target, or None while
        the victims settle (or when no lower count is safe). Call `committed` once written."""
        plan = plan_scale_down(self.cluster.pod_views(app), target)
        if plan.replicas >= current:
            await self.cancel(app)
            return None
        if not plan.victims:  # no pod goes (fewer pods than the new count): nothing to drain
            self._pending.pop(app.name, None)
            return plan.replicas
        pending = self._pending.get(app.name)
        now = time.monotonic()
        if pending is not None and (pending.plan.replicas, pending.plan.victims) == (
            plan.replicas,
            plan.victims,
        ):
            if now - pending.marked_at >= self.settle_seconds:
                return plan.replicas
            return None
        await self._mark(app, plan)
        self._pending[app.name] = _Pending(plan, now)
        log.info(
            "draining before scale-down",
            model=app.name,
            victims=list(plan.victims),
            replicas=plan.replicas,
            current=current,
        )
        return None

    def committed(self, app: App) -> None:
        """The lower count was written: the victims are going (keep their marks)."""
        pending = self._pending.pop(app.name, None)
        if pending is not None:
            self._doomed[app.name] = (set(pending.plan.victims), time.monotonic())

    async def _mark(self, app: App, plan: DrainPlan) -> None:
        for pod in self.cluster.pod_views(app):
            if pod.deleting or pod.name not in plan.costs:
                continue
            wanted = wanted_annotations(plan, pod.name)
            changes = {k: v for k, v in wanted.items() if pod.annotations.get(k) != v}
            if changes:
                await self.cluster.annotate_pod(app, pod.name, changes)

    async def cancel(self, app: App) -> None:
        """No scale-down now: pods marked draining (not being removed) serve again."""
        self._pending.pop(app.name, None)
        doomed, since = self._doomed.get(app.name, (set(), 0.0))
        if time.monotonic() - since > DOOMED_SECONDS:
            self._doomed.pop(app.name, None)
            doomed = set()
        for pod in self.cluster.pod_views(app):
            if DRAINING in pod.annotations and not pod.deleting and pod.name not in doomed:
                await self.cluster.annotate_pod(app, pod.name, {DRAINING: None})
                log.info("drain cancelled", model=app.name, pod=pod.name)

    def forget(self, model: str) -> None:
        self._pending.pop(model, None)
        self._doomed.pop(model, None)
