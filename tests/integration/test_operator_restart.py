"""Killing the operator mid-reconcile and starting it again leaves the same objects: nothing
duplicated, nothing that was already right changed."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client

from conftest import create_namespace, start_operator
from serverless_comfyui.crd.models import GROUP, PLURAL, VERSION
from serverless_comfyui.testworld import TestWorld
from serverless_comfyui.testworld.waiters import create_hostpath_claim

COUNT = 60


def workflow(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FluxWorkflow",
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/serverless-comfyui/comfyui:test",
            "resourceProfile": "gpu-h100-80gb-hbm3:1",
            "workflow": {"name": "warmup"},
        },
    }


async def owned(kube: client.ApiClient, namespace: str) -> dict[str, dict[str, tuple[str, int]]]:
    """{kind: {name: (uid, generation)}} of what the operator made."""
    selector = "app.kubernetes.io/managed-by=serverless-comfyui"
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    listings = {
        "Deployment": await apps.list_namespaced_deployment(namespace, label_selector=selector),
        "Service": await core.list_namespaced_service(namespace, label_selector=selector),
        "ConfigMap": await core.list_namespaced_config_map(namespace, label_selector=selector),
    }
    return {
        kind: {o.metadata.name: (o.metadata.uid, o.metadata.generation or 0) for o in lst.items}
        for kind, lst in listings.items()
    }


async def phases(kube: client.ApiClient, namespace: str) -> list[str | None]:
    api = client.CustomObjectsApi(kube)
    items = (await api.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL))["items"]
    return [item.get("status", {}).get("phase") for item in items]


async def test_operator_killed_mid_reconcile_converges_without_duplicates(
    kube: client.ApiClient, world: TestWorld, crd: Path, tmp_path: Path
) -> None:
    namespace = await create_namespace(kube, "r")
    core = client.CoreV1Api(kube)
    await create_hostpath_claim(core, namespace, "pvc-capacity-userdata", str(tmp_path / "pvc"))
    operator = start_operator(world, "operator-restart", namespaces="r-*")
    api = client.CustomObjectsApi(kube)
    try:
        await asyncio.gather(
            *(
                api.create_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, workflow(f"app{i}")
                )
                for i in range(COUNT)
            )
        )
        # Kill it as soon as it has started working through them (SIGKILL: no cleanup at all).
        apps = client.AppsV1Api(kube)
        selector = "app.kubernetes.io/managed-by=serverless-comfyui"
        for _ in range(500):
            made = await apps.list_namespaced_deployment(namespace, label_selector=selector)
            if made.items:
                break
            await asyncio.sleep(0.01)
        assert operator.pid is not None
        os.killpg(operator.pid, signal.SIGKILL)
        operator.stop()
        before = await owned(kube, namespace)
        assert len(before["Deployment"]) < COUNT, "the kill came too late to be mid-reconcile"

        operator = start_operator(world, "operator-restart-2", namespaces="r-*")
        for _ in range(600):
            if (await phases(kube, namespace)) == ["ScaledToZero"] * COUNT:
                break
            await asyncio.sleep(0.1)
        assert await phases(kube, namespace) == ["ScaledToZero"] * COUNT
        after = await owned(kube, namespace)
        for kind, suffix in (
            ("Deployment", "-comfyui"),
            ("Service", ""),
            ("ConfigMap", "-workflow"),
        ):
            assert sorted(after[kind]) == sorted(f"app{i}{suffix}" for i in range(COUNT)), kind
            # What existed before the kill is the same object, unchanged (same uid, no new
            # spec generation): the restart changed nothing that was already right.
            for name, (uid, generation) in before[kind].items():
                assert after[kind][name] == (uid, generation), (kind, name)
    finally:
        operator.stop()
        await core.delete_namespace(namespace, propagation_policy="Background")
        await core.delete_persistent_volume(f"{namespace}-pvc-capacity-userdata")
