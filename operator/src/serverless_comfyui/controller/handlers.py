"""kopf handlers. Each is thin: find the FluxWorkflow, call `reconcile`, write its status and
events. FluxWorkflow handlers write status through kopf's `patch`; events of the objects it owns
(download Job, Deployment, pods) re-run the reconcile for their owner and write the status
directly, so `kubectl get fw` follows the cluster within a second, without polling."""

from __future__ import annotations

import asyncio
import logging
import os
from collections import defaultdict
from typing import Any, cast

import kopf
from kubernetes_asyncio import client, config

from serverless_comfyui.controller import builders
from serverless_comfyui.controller.kube import Kube
from serverless_comfyui.controller.reconcile import Result, reconcile
from serverless_comfyui.controller.settings import OperatorSettings
from serverless_comfyui.crd.models import API_VERSION, GROUP, KIND, PLURAL, VERSION
from serverless_comfyui.workflows import WorkflowError, WorkflowLibrary, load_library

log = logging.getLogger("serverless_comfyui.operator")


class State:
    settings: OperatorSettings
    kube: Kube
    api_client: client.ApiClient
    library: WorkflowLibrary | None
    # One reconcile at a time per FluxWorkflow (its own events and its children's race).
    locks: defaultdict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)


state = State()
OWNED = {"app.kubernetes.io/managed-by": builders.MANAGED_BY}


@kopf.on.startup()
async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf would keep its progress in status.kopf, which a structural CRD prunes: use
    # annotations instead.
    prefix = GROUP
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=prefix)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=prefix, key="last-handled-configuration"
    )
    # Our own transition Events are posted explicitly; kopf would add one per handler run.
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 300
    state.settings = OperatorSettings()
    if _in_cluster():
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    else:
        await config.load_kube_config()
    state.api_client = client.ApiClient()
    state.kube = Kube(state.api_client)
    try:
        state.library = load_library()
    except WorkflowError as exc:
        log.warning("no workflow library (%s): only configMapRef workflows will work", exc)
        state.library = None


def _in_cluster() -> bool:
    return "KUBERNETES_SERVICE_HOST" in os.environ


@kopf.on.cleanup()
async def cleanup(**_: Any) -> None:
    await state.api_client.close()


async def _reconcile(body: dict[str, Any], apply_children: bool = True) -> Result:
    key = (body["metadata"]["namespace"], body["metadata"]["name"])
    async with state.locks[key]:
        result = await reconcile(state.kube, body, state.settings, state.library, apply_children)
    for kind, reason, message in result.events:
        kopf.event(cast(kopf.Body, body), type=kind, reason=reason, message=message)
    return result


def _status_dict(result: Result) -> dict[str, Any]:
    return result.status.model_dump(mode="json", by_alias=True, exclude_none=True)


@kopf.on.resume(GROUP, VERSION, PLURAL, backoff=2)
@kopf.on.create(GROUP, VERSION, PLURAL, backoff=2)
@kopf.on.update(GROUP, VERSION, PLURAL, backoff=2)
async def on_change(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    result = await _reconcile(dict(body))
    patch.status.update(_status_dict(result))


# kopf fixes a timer's interval when the handler is registered, so read it at import.
RESYNC_SECONDS = OperatorSettings().resync_seconds


@kopf.timer(
    GROUP, VERSION, PLURAL, interval=RESYNC_SECONDS, initial_delay=RESYNC_SECONDS / 2, backoff=5
)
async def resync(body: kopf.Body, patch: kopf.Patch, **_: Any) -> None:
    """Catches what no event reported (e.g. a deleted owned object during an outage)."""
    result = await _reconcile(dict(body))
    patch.status.update(_status_dict(result))


async def _reconcile_owner(namespace: str, labels: dict[str, str], apply_children: bool) -> None:
    name = labels.get(builders.WORKFLOW_LABEL)
    if not name:
        return
    body = await state.kube.get(API_VERSION, KIND, namespace, name)
    if body is None or body["metadata"].get("deletionTimestamp"):
        return
    result = await _reconcile(body, apply_children)
    await state.kube.patch_status(API_VERSION, KIND, namespace, name, _status_dict(result))


@kopf.on.event("batch", "v1", "jobs", labels=OWNED)
@kopf.on.event("apps", "v1", "deployments", labels=OWNED)
@kopf.on.event("v1", "pods", labels=OWNED)
async def on_owned_event(
    namespace: str | None, labels: kopf.Labels, type: str, resource: kopf.Resource, **_: Any
) -> None:
    """A download Job finishing may allow the Deployment; a deleted child must come back.
    Other pod and Deployment changes only move the status."""
    if namespace:
        converge = resource.plural == "jobs" or type == "DELETED"
        await _reconcile_owner(namespace, dict(labels), converge)
