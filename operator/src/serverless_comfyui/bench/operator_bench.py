"""Operator benchmarks on the test world's real control plane.

- apply -> Deployment created, p50/p95, against the baseline of creating a Deployment directly
  (what the API server and its watch cost anyway);
- reconcile throughput with 200 FluxWorkflows (all applied at once, until every one has its
  Deployment and a ScaledToZero status), against creating 200 Deployments directly;
- the operator's resident memory with 200 FluxWorkflows.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client, config, watch

from serverless_comfyui.bench.stats import rss_mib, summary
from serverless_comfyui.crd.generate import CHART_PATH
from serverless_comfyui.crd.models import GROUP, PLURAL, VERSION
from serverless_comfyui.testworld import TestWorld
from serverless_comfyui.testworld.components import install_crd, start_operator
from serverless_comfyui.testworld.processes import ManagedProcess
from serverless_comfyui.testworld.waiters import create_hostpath_claim

CRD_FILE = Path(__file__).parents[4] / CHART_PATH


def _workflow(name: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FluxWorkflow",
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/serverless-comfyui/comfyui:bench",
            "resourceProfile": "gpu-h100-80gb-hbm3:1",
            "workflow": {"name": "warmup"},
        },
    }


def _deployment(name: str) -> Any:  # a V1Deployment body
    labels = {"app": name}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "labels": {"bench": "direct"}},
        "spec": {
            "replicas": 0,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {"containers": [{"name": "c", "image": "example/none:1"}]},
            },
        },
    }


class DeploymentWatch:
    """Records when each Deployment is first seen by a watch (the moment a client could know)."""

    def __init__(self, apps: client.AppsV1Api, namespace: str) -> None:
        self.apps, self.namespace = apps, namespace
        self.seen: dict[str, float] = {}
        self._task: asyncio.Task[None] | None = None
        self._started = asyncio.Event()

    async def __aenter__(self) -> DeploymentWatch:
        self._task = asyncio.create_task(self._run())
        await self._started.wait()
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()

    async def _run(self) -> None:
        listing = await self.apps.list_namespaced_deployment(self.namespace)
        self._started.set()
        stream = watch.Watch().stream(
            self.apps.list_namespaced_deployment,
            self.namespace,
            resource_version=listing.metadata.resource_version,
        )
        async for event in stream:
            self.seen.setdefault(event["object"].metadata.name, time.perf_counter())

    async def wait_for(self, names: list[str], limit: float) -> None:
        deadline = time.perf_counter() + limit
        while not all(n in self.seen for n in names):
            if time.perf_counter() > deadline:
                missing = [n for n in names if n not in self.seen]
                raise TimeoutError(f"{len(missing)} Deployments never appeared")
            await asyncio.sleep(0.005)


async def _namespace(core: client.CoreV1Api, name: str) -> None:
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))


async def _measure(world: TestWorld, operator: ManagedProcess, samples: int) -> dict[str, Any]:
    configuration = client.Configuration()
    await config.load_kube_config(str(world.kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        core, apps = client.CoreV1Api(api), client.AppsV1Api(api)
        custom = client.CustomObjectsApi(api)
        for ns in ("bench-direct", "bench-latency", "bench-bulk", "bench-bulk-direct"):
            await _namespace(core, ns)
            await create_hostpath_claim(
                core, ns, "pvc-capacity-userdata", str(world.state_dir / "pvc" / ns)
            )
        await asyncio.sleep(1)  # let the ServiceAccount controller catch up

        direct, via_operator = [], []
        async with (
            DeploymentWatch(apps, "bench-direct") as seen_direct,
            DeploymentWatch(apps, "bench-latency") as seen_operator,
        ):
            for i in range(samples):
                start = time.perf_counter()
                await apps.create_namespaced_deployment("bench-direct", _deployment(f"d{i}"))
                await seen_direct.wait_for([f"d{i}"], 30)
                direct.append(seen_direct.seen[f"d{i}"] - start)

                start = time.perf_counter()
                await custom.create_namespaced_custom_object(
                    GROUP, VERSION, "bench-latency", PLURAL, _workflow(f"w{i}")
                )
                await seen_operator.wait_for([f"w{i}-comfyui"], 30)
                via_operator.append(seen_operator.seen[f"w{i}-comfyui"] - start)

        bulk = 200
        async with DeploymentWatch(apps, "bench-bulk-direct") as seen:
            start = time.perf_counter()
            await asyncio.gather(
                *(
                    apps.create_namespaced_deployment("bench-bulk-direct", _deployment(f"d{i}"))
                    for i in range(bulk)
                )
            )
            await seen.wait_for([f"d{i}" for i in range(bulk)], 120)
            direct_bulk_seconds = max(seen.seen.values()) - start

        start = time.perf_counter()
        await asyncio.gather(
            *(
                custom.create_namespaced_custom_object(
                    GROUP, VERSION, "bench-bulk", PLURAL, _workflow(f"w{i}")
                )
                for i in range(bulk)
            )
        )
        while True:
            items = (
                await custom.list_namespaced_custom_object(GROUP, VERSION, "bench-bulk", PLURAL)
            )["items"]
            done = sum(1 for o in items if o.get("status", {}).get("phase") == "ScaledToZero")
            if done == bulk:
                break
            if time.perf_counter() - start > 600:
                raise TimeoutError(f"only {done}/{bulk} FluxWorkflows reconciled in 600 s")
            await asyncio.sleep(0.2)
        operator_bulk_seconds = time.perf_counter() - start
        assert operator.pid is not None
        return {
            "apply_to_deployment_seconds": summary(via_operator),
            "direct_create_seconds": summary(direct),
            "bulk": {
                "count": bulk,
                "operator_seconds": operator_bulk_seconds,
                "operator_per_second": bulk / operator_bulk_seconds,
                "direct_seconds": direct_bulk_seconds,
                "direct_per_second": bulk / direct_bulk_seconds,
            },
            "operator_rss_mib": rss_mib(operator.pid),
        }


def run(state_dir: Path, samples: int = 30) -> dict[str, Any]:
    world = TestWorld(state_dir=state_dir, pod_cidr="127.69.0.0/16")
    world.start()
    try:
        install_crd(world)
        operator = start_operator(world)
        return asyncio.run(_measure(world, operator, samples))
    finally:
        world.stop()


if __name__ == "__main__":
    print(json.dumps(run(Path(sys.argv[1])), indent=2))
