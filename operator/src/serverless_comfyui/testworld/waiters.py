"""Async helpers for tests and benchmarks: wait for Kubernetes state by watching, not polling."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from kubernetes_asyncio import client, watch


def pod_ready(pod: Any) -> bool:
    for condition in pod.status.conditions or []:
        if condition.type == "Ready":
            return bool(condition.status == "True")
    return False


async def wait_for_pods(
    core: client.CoreV1Api,
    namespace: str,
    selector: str,
    done: Callable[[dict[str, Any]], bool],
    wait_seconds: float = 60.0,
    on_event: Callable[[str, Any], None] | None = None,
    on_listed: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Watches the pods matching selector until done(pods by name) is true; returns those pods.
    on_event sees every (event type, pod) the watch delivers; on_listed is called once the
    initial list is in (every later change then reaches on_event)."""
    listing = await core.list_namespaced_pod(namespace, label_selector=selector)
    pods = {p.metadata.name: p for p in listing.items}
    if on_listed is not None:
        on_listed()
    if done(pods):
        return pods
    resource_version = listing.metadata.resource_version

    async def follow() -> dict[str, Any]:
        nonlocal resource_version
        while True:
            stream = watch.Watch().stream(
                core.list_namespaced_pod,
                namespace,
                label_selector=selector,
                resource_version=resource_version,
                timeout_seconds=int(wait_seconds) + 5,
            )
            async for event in stream:
                pod = event["object"]
                resource_version = pod.metadata.resource_version
                if on_event is not None:
                    on_event(event["type"], pod)
                if event["type"] == "DELETED":
                    pods.pop(pod.metadata.name, None)
                else:
                    pods[pod.metadata.name] = pod
                if done(pods):
                    return pods

    try:
        return await asyncio.wait_for(follow(), wait_seconds)
    except TimeoutError:
        summary = {
            name: (p.status.phase, p.spec.node_name, p.status.pod_ip, pod_ready(p))
            for name, p in pods.items()
        }
        raise TimeoutError(f"pods {selector} in {namespace} not as expected: {summary}") from None


async def create_hostpath_claim(
    core: client.CoreV1Api, namespace: str, claim: str, host_dir: str, size: str = "100Gi"
) -> None:
    """A PVC statically bound to a hostPath PV: the test world has no storage provisioner, and
    the pod runner maps hostPath PVs to host directories for the processes it runs."""
    pv_name = f"{namespace}-{claim}"
    await core.create_persistent_volume(
        cast(
            Any,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolume",
                "metadata": {"name": pv_name},
                "spec": {
                    "capacity": {"storage": size},
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "persistentVolumeReclaimPolicy": "Retain",
                    "hostPath": {"path": host_dir, "type": "DirectoryOrCreate"},
                    "claimRef": {"namespace": namespace, "name": claim},
                },
            },
        )
    )
    await core.create_namespaced_persistent_volume_claim(
        namespace,
        cast(
            Any,
            {
                "apiVersion": "v1",
                "kind": "PersistentVolumeClaim",
                "metadata": {"name": claim},
                "spec": {
                    "accessModes": ["ReadWriteMany"],
                    "storageClassName": "",
                    "volumeName": pv_name,
                    "resources": {"requests": {"storage": size}},
                },
            },
        ),
    )
