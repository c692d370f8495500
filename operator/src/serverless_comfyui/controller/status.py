"""From what exists in the cluster to a FluxWorkflow's status: a pure function, so the operator's
answer to "where do things stand" is the same whichever event asked the question."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from serverless_comfyui.crd.models import (
    Condition,
    FluxWorkflowSpec,
    FluxWorkflowStatus,
    ModelStatus,
    Phase,
)

MODELS_READY = "ModelsReady"
READY = "Ready"


@dataclass
class Observed:
    """What the reconcile saw or decided."""

    generation: int | None
    desired_replicas: int
    selector: str
    endpoint: str
    fatal: tuple[str, str] | None = None
    """(reason, message) of a problem only the user can fix (unknown profile, missing Secret)."""
    models: tuple[bool, str, str] = (True, "NoModels", "no models to download")
    """(ready, reason, message) of the model download."""
    model_states: list[ModelStatus] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)


def pod_is_ready(pod: dict[str, Any]) -> bool:
    conditions = pod.get("status", {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def unschedulable_message(pods: list[dict[str, Any]]) -> str | None:
    """The scheduler's reason when a pod cannot be placed (e.g. no node has enough GPUs)."""
    for pod in pods:
        for c in pod.get("status", {}).get("conditions") or []:
            if c.get("type") == "PodScheduled" and c.get("reason") == "Unschedulable":
                return str(c.get("message") or "no node can run the pod")
    return None


def model_states_from_termination(message: str | None) -> list[ModelStatus]:
    """The downloader writes a JSON list of per-model results as its termination message."""
    if not message:
        return []
    try:
        raw = json.loads(message)
        return [ModelStatus.model_validate(item) for item in raw]
    except (ValueError, TypeError):
        return []


def compute_status(
    previous: FluxWorkflowStatus | None, spec: FluxWorkflowSpec, seen: Observed
) -> FluxWorkflowStatus:
    status = (previous or FluxWorkflowStatus()).model_copy(deep=True)
    gen = seen.generation
    live = [p for p in seen.pods if not p.get("metadata", {}).get("deletionTimestamp")]
    ready = sum(1 for p in live if pod_is_ready(p))
    status.replicas = len(seen.pods)
    status.ready_replicas = ready
    status.selector = seen.selector
    status.endpoint = seen.endpoint
    status.observed_generation = gen
    if seen.model_states:
        status.models = seen.model_states
    elif not spec.models:
        status.models = None

    models_ready, models_reason, models_message = seen.models
    status.set_condition(
        Condition.now(MODELS_READY, models_ready, models_reason, models_message, gen)
    )

    if seen.fatal is not None:
        reason, message = seen.fatal
        phase, ready_condition = Phase.FAILED, (False, reason, message)
    elif models_reason == "DownloadFailed":
        phase, ready_condition = Phase.FAILED, (False, models_reason, models_message)
    elif not models_ready:
        phase, ready_condition = Phase.DOWNLOADING, (False, models_reason, models_message)
    elif seen.desired_replicas == 0 and not seen.pods:
        phase = Phase.SCALED_TO_ZERO
        ready_condition = (False, "ScaledToZero", "no pods run; a request wakes the application")
    elif ready == 0:
        phase = Phase.STARTING
        pending = unschedulable_message(live)
        if pending is not None:
            ready_condition = (False, "Unschedulable", pending)
        else:
            ready_condition = (False, "WarmingUp", "waiting for a pod to load its models")
    elif ready < seen.desired_replicas and (pending := unschedulable_message(live)):
        phase = Phase.DEGRADED
        ready_condition = (True, "PartiallyUnschedulable", pending)
    elif ready < seen.desired_replicas:
        phase = Phase.READY
        ready_condition = (True, "ScalingUp", f"{ready}/{seen.desired_replicas} pods ready")
    else:
        phase = Phase.READY
        ready_condition = (True, "Ready", f"{ready} warm pod(s) serving")
    status.phase = phase
    ok, reason, message = ready_condition
    status.set_condition(Condition.now(READY, ok, reason, message, gen))
    return status
