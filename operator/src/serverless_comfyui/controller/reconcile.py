"""The one idempotent reconcile of a FluxWorkflow: apply the objects it should own, observe
them, and compute its status. Every handler (create, update, resume, timer, child events) calls
this; running it twice in a row changes nothing the second time."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from serverless_comfyui.controller import builders
from serverless_comfyui.controller.kube import Kube
from serverless_comfyui.controller.profiles import UnknownProfileError, get_profile
from serverless_comfyui.controller.settings import OperatorSettings
from serverless_comfyui.controller.status import (
    Observed,
    compute_status,
    model_states_from_termination,
)
from serverless_comfyui.crd.models import FluxWorkflowSpec, FluxWorkflowStatus, WorkflowSource
from serverless_comfyui.workflows import Workflow, WorkflowError, WorkflowLibrary


class UserError(Exception):
    """A problem only the FluxWorkflow's author can fix; reported in status and events."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class Result:
    status: FluxWorkflowStatus
    events: list[tuple[str, str, str]]
    """(type, reason, message) of the transitions worth a Kubernetes Event."""


# The cheapest run that still loads every model of a workflow into VRAM.
WARMUP_PARAMS = {"prompt": "warm-up", "steps": 1, "width": 256, "height": 256, "seed": 0}


def _warmup_from_library(workflow: Workflow) -> dict[str, Any]:
    known = {p.name for p in workflow.parameters}
    params = {k: v for k, v in WARMUP_PARAMS.items() if k in known}
    return workflow.render(params, prompt_id="warmup").graph


async def _graphs(
    kube: Kube, namespace: str, spec: FluxWorkflowSpec, library: WorkflowLibrary | None
) -> tuple[str, str]:
    """(served workflow, warm-up workflow) as API-format JSON."""
    served = await _workflow_json(kube, namespace, spec.workflow, library)
    if spec.workflow.warmup is not None:
        return served, await _workflow_json(kube, namespace, spec.workflow.warmup, library)
    if spec.workflow.name is not None and library is not None:
        warmup = _warmup_from_library(library.get(spec.workflow.name))
        return served, json.dumps(warmup, indent=2, sort_keys=True)
    return served, served


async def _workflow_json(
    kube: Kube, namespace: str, source: WorkflowSource, library: WorkflowLibrary | None
) -> str:
    if source.config_map_ref is not None:
        ref = source.config_map_ref
        cm = await kube.get("v1", "ConfigMap", namespace, ref.name)
        if cm is None or ref.key not in (cm.get("data") or {}):
            raise UserError(
                "WorkflowNotFound", f"ConfigMap {ref.name!r} with key {ref.key!r} not found"
            )
        return str(cm["data"][ref.key])
    if library is None:
        raise UserError("WorkflowNotFound", "the operator has no workflow library configured")
    try:
        workflow = library.get(str(source.name))
    except (KeyError, WorkflowError) as exc:
        raise UserError("WorkflowNotFound", str(exc).strip("'\"")) from None
    return json.dumps(workflow.template, indent=2, sort_keys=True)


async def _check_claim(kube: Kube, namespace: str, spec: FluxWorkflowSpec) -> None:
    claim = spec.storage.claim_name
    if await kube.get("v1", "PersistentVolumeClaim", namespace, claim) is None:
        raise UserError(
            "ClaimNotFound",
            f"PersistentVolumeClaim {claim!r} (spec.storage.claimName) not found in {namespace}",
        )


async def _check_token_secret(kube: Kube, namespace: str, spec: FluxWorkflowSpec) -> None:
    ref = spec.hugging_face_token_secret
    if ref is None:
        return
    secret = await kube.get("v1", "Secret", namespace, ref.name)
    if secret is None:
        raise UserError("SecretNotFound", f"Secret {ref.name!r} (Hugging Face token) not found")
    if ref.key not in (secret.get("data") or {}):
        raise UserError("SecretNotFound", f"Secret {ref.name!r} has no key {ref.key!r}")


def _job_state(job: dict[str, Any]) -> str:
    for condition in job.get("status", {}).get("conditions") or []:
        if condition.get("status") == "True" and condition.get("type") in ("Complete", "Failed"):
            return str(condition["type"])
    return "Running"


def _termination_message(pods: list[dict[str, Any]]) -> str | None:
    """The newest downloader pod's termination message (its per-model results)."""
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    for pod in reversed(newest):
        for cs in pod.get("status", {}).get("containerStatuses") or []:
            message = (cs.get("state", {}).get("terminated") or {}).get("message")
            if message:
                return str(message)
    return None


async def _models(
    kube: Kube,
    name: str,
    namespace: str,
    uid: str,
    spec: FluxWorkflowSpec,
    settings: OperatorSettings,
    apply: bool = True,
) -> tuple[tuple[bool, str, str], list[Any]]:
    """Ensure the download Job (unless apply is False: observe only); report
    (ready, reason, message) and per-model states."""
    if not spec.models:
        return (True, "NoModels", "no models to download"), []
    await _check_token_secret(kube, namespace, spec)
    desired = builders.download_job(name, namespace, uid, spec, settings)
    job_name = desired["metadata"]["name"]
    job = await kube.get("batch/v1", "Job", namespace, job_name)
    current_hash = (
        (job or {}).get("metadata", {}).get("annotations", {}).get(builders.MODELS_HASH_ANNOTATION)
    )
    if apply and job is not None and current_hash != builders.models_hash(spec):
        # A Job's pod template is immutable: the model list changed, start a new download.
        await kube.delete("batch/v1", "Job", namespace, job_name)
        return (False, "Downloading", "model list changed; restarting the download"), []
    if job is None:
        if apply:
            await kube.apply(desired)
        return (False, "Downloading", f"Job {job_name} started"), []
    selector = f"job-name={job_name}"
    pods = await kube.list("v1", "Pod", namespace, selector)
    states = model_states_from_termination(_termination_message(pods))
    state = _job_state(job)
    if state == "Complete":
        return (
            True,
            "Downloaded",
            f"{len(spec.models)} model file(s) present and verified",
        ), states
    if state == "Failed":
        errors = "; ".join(f"{m.name}: {m.error}" for m in states if m.error)
        return (False, "DownloadFailed", errors or f"Job {job_name} failed"), states
    return (False, "Downloading", f"Job {job_name} is downloading"), states


async def reconcile(
    kube: Kube,
    body: dict[str, Any],
    settings: OperatorSettings,
    library: WorkflowLibrary | None,
    apply_children: bool = True,
) -> Result:
    """apply_children=False only observes (for events of pods and Deployments, whose changes
    never call for different children); every other caller converges the children too."""
    meta = body["metadata"]
    name, namespace, uid = meta["name"], meta["namespace"], meta["uid"]
    spec = FluxWorkflowSpec.model_validate(body.get("spec") or {})
    previous = FluxWorkflowStatus.model_validate(body["status"]) if body.get("status") else None
    desired_replicas = spec.effective_replicas()
    seen = Observed(
        generation=meta.get("generation"),
        desired_replicas=desired_replicas,
        selector=builders.selector_string(name),
        endpoint=f"{settings.proxy_url.rstrip('/')}/openai/api (model: {name})",
    )
    try:
        profile_name, _ = spec.gpu_profile()
        try:
            profile = get_profile(settings.profiles, profile_name)
        except UnknownProfileError as exc:
            raise UserError("UnknownProfile", exc.message) from None
        if apply_children:
            await _check_claim(kube, namespace, spec)
            served, warmup = await _graphs(kube, namespace, spec, library)
            await kube.apply(
                builders.workflow_configmap(name, namespace, uid, spec, served, warmup)
            )
        seen.models, seen.model_states = await _models(
            kube, name, namespace, uid, spec, settings, apply_children
        )
        if seen.models[0] and apply_children:
            # Only now may GPU pods start: no GPU is held while the models download.
            await kube.apply(
                builders.comfyui_deployment(
                    name, namespace, uid, spec, profile, settings, desired_replicas
                )
            )
            await kube.apply(builders.comfyui_service(name, namespace, uid, spec))
    except UserError as exc:
        seen.fatal = (exc.reason, exc.message)
    seen.pods = await kube.list("v1", "Pod", namespace, builders.selector_string(name))
    status = compute_status(previous, spec, seen)
    return Result(status=status, events=transition_events(previous, status))


def transition_events(
    previous: FluxWorkflowStatus | None, current: FluxWorkflowStatus
) -> list[tuple[str, str, str]]:
    """One Event per condition whose status or reason changed."""
    events = []
    for condition in current.conditions or []:
        before = previous.condition(condition.type) if previous else None
        if before is not None and (before.status, before.reason) == (
            condition.status,
            condition.reason,
        ):
            continue
        healthy = condition.status == "True" or condition.reason in (
            "ScaledToZero",
            "WarmingUp",
            "Downloading",
            "NoModels",
        )
        kind = "Normal" if healthy else "Warning"
        events.append((kind, condition.reason, f"{condition.type}: {condition.message}"))
    return events
