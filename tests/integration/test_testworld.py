"""The test world behaves like a GPU cluster: the real scheduler fits GPU limits, node selectors
and taints; Deployments really scale; emulated ComfyUI pods answer on their loopback pod IPs."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import uuid
from typing import Any

import aiohttp
from kubernetes_asyncio import client

from serverless_comfyui.testworld import TestWorld
from serverless_comfyui.testworld.nodes import GPU_TAINT, H100_PRODUCT
from serverless_comfyui.testworld.waiters import pod_ready, wait_for_pods

GPU_TOLERATION = {
    "key": GPU_TAINT["key"],
    "operator": "Equal",
    "value": GPU_TAINT["value"],
    "effect": GPU_TAINT["effect"],
}


def deployment(
    name: str,
    replicas: int,
    gpus: int = 0,
    node_selector: dict[str, str] | None = None,
    tolerations: list[dict[str, str]] | None = None,
    component: str = "comfyui",
) -> dict[str, Any]:
    labels = {"app": name, "app.kubernetes.io/component": component}
    container: dict[str, Any] = {
        "name": "comfyui",
        "image": "ghcr.io/example/comfyui:test",
        "ports": [{"name": "http", "containerPort": 8188}],
        "readinessProbe": {
            "httpGet": {"path": "/system_stats", "port": "http"},
            "periodSeconds": 1,
        },
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "containers": [container],
                    "nodeSelector": node_selector or {},
                    "tolerations": tolerations or [],
                    "terminationGracePeriodSeconds": 5,
                },
            },
        },
    }


async def test_gpu_deployment_lands_on_h100_node_only(
    kube: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    body = deployment(
        "h100",
        replicas=3,
        gpus=1,
        node_selector={"nvidia.com/gpu.product": H100_PRODUCT},
        tolerations=[GPU_TOLERATION],
        component="batch",
    )
    await apps.create_namespaced_deployment(namespace, body)
    pods = await wait_for_pods(
        core,
        namespace,
        "app=h100",
        lambda pods: len(pods) == 3 and all(pod_ready(p) for p in pods.values()),
    )
    assert {p.spec.node_name for p in pods.values()} == {"gpu-h100-0"}
    for pod in pods.values():
        assert pod.spec.containers[0].resources.limits["nvidia.com/gpu"] == "1"


async def test_gpu_pod_without_toleration_never_lands_anywhere(
    kube: client.ApiClient, namespace: str
) -> None:
    """Without the toleration the GPU nodes are tainted off, and the CPU node has no GPUs."""
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    await apps.create_namespaced_deployment(
        namespace, deployment("notol", replicas=1, gpus=1, component="batch")
    )
    await _wait_for_failed_scheduling(core, namespace, "app=notol")
    pods = await core.list_namespaced_pod(namespace, label_selector="app=notol")
    assert [p.spec.node_name for p in pods.items] == [None]


async def test_cpu_pod_avoids_tainted_gpu_nodes(kube: client.ApiClient, namespace: str) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    await apps.create_namespaced_deployment(
        namespace, deployment("cpu", replicas=4, component="batch")
    )
    pods = await wait_for_pods(
        core,
        namespace,
        "app=cpu",
        lambda pods: len(pods) == 4 and all(map(pod_ready, pods.values())),
    )
    assert {p.spec.node_name for p in pods.values()} == {"cpu-0"}


async def test_too_many_gpus_stays_pending_with_event(
    kube: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    await apps.create_namespaced_deployment(
        namespace,
        deployment("huge", replicas=1, gpus=9, tolerations=[GPU_TOLERATION], component="batch"),
    )
    message = await _wait_for_failed_scheduling(core, namespace, "app=huge")
    assert "Insufficient nvidia.com/gpu" in message
    pods = await core.list_namespaced_pod(namespace, label_selector="app=huge")
    assert [p.status.phase for p in pods.items] == ["Pending"]


async def _wait_for_failed_scheduling(core: client.CoreV1Api, namespace: str, selector: str) -> str:
    for _ in range(150):
        events = await core.list_namespaced_event(namespace)
        for event in events.items:
            if event.reason == "FailedScheduling":
                return str(event.message)
        await asyncio.sleep(0.2)
    raise AssertionError(f"no FailedScheduling event for {selector}")


async def test_scale_zero_two_zero_seen_by_pod_watch(
    kube: client.ApiClient, namespace: str, world: TestWorld
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    body = deployment(
        "scale",
        replicas=0,
        gpus=1,
        node_selector={"nvidia.com/gpu.product": H100_PRODUCT},
        tolerations=[GPU_TOLERATION],
    )
    await apps.create_namespaced_deployment(namespace, body)
    seen: list[tuple[str, str, bool, str | None]] = []

    def record(kind: str, pod: Any) -> None:
        seen.append((kind, pod.metadata.name, pod_ready(pod), pod.status.pod_ip))

    # The watch has listed before the scale-up, so it sees every pod from its creation,
    # however slowly a loaded machine runs this test.
    listed = asyncio.Event()
    watching = asyncio.create_task(
        wait_for_pods(
            core,
            namespace,
            "app=scale",
            lambda pods: len(pods) == 2 and all(map(pod_ready, pods.values())),
            on_event=record,
            on_listed=listed.set,
        )
    )
    await asyncio.wait_for(listed.wait(), 60)
    await apps.patch_namespaced_deployment_scale("scale", namespace, {"spec": {"replicas": 2}})
    pods = await watching
    ips = {p.status.pod_ip for p in pods.values()}
    assert len(ips) == 2
    pod_net = ipaddress.ip_network(world.pod_cidr)
    for ip in ips:
        assert ipaddress.ip_address(ip).is_loopback and ipaddress.ip_address(ip) in pod_net
        assert ip != "127.0.0.1"
    # The watch saw each pod first unready (created, not yet started) and then Ready.
    for name in pods:
        states = [ready for kind, pod_name, ready, _ in seen if pod_name == name]
        assert states[0] is False and states[-1] is True, states

    await apps.patch_namespaced_deployment_scale("scale", namespace, {"spec": {"replicas": 0}})
    await wait_for_pods(core, namespace, "app=scale", lambda pods: not pods, on_event=record)
    deleted = {name for kind, name, *_ in seen if kind == "DELETED"}
    assert deleted == set(pods)
    # The emulators are gone with their pods.
    for ip in ips:
        try:
            _, writer = await asyncio.open_connection(ip, 8188)
        except OSError:
            continue
        writer.close()
        raise AssertionError(f"something still listens on {ip}:8188 after its pod went away")


async def test_request_to_pod_ip_reaches_emulator_and_renders_png(
    kube: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    body = deployment(
        "render",
        replicas=1,
        gpus=1,
        node_selector={"nvidia.com/gpu.product": H100_PRODUCT},
        tolerations=[GPU_TOLERATION],
    )
    await apps.create_namespaced_deployment(namespace, body)
    pods = await wait_for_pods(
        core, namespace, "app=render", lambda p: len(p) == 1 and all(map(pod_ready, p.values()))
    )
    (pod,) = pods.values()
    base = f"http://{pod.status.pod_ip}:8188"
    prompt_id = str(uuid.uuid4())
    client_id = "test-client"
    graph = {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 48, "batch_size": 1, "color": 255},
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": f"out/{prompt_id}"},
        },
    }
    async with aiohttp.ClientSession() as http:
        stats = await (await http.get(f"{base}/api/system_stats")).json()
        assert stats["system"]["comfyui_version"] == "0.8.0"
        async with http.ws_connect(f"{base}/ws?clientId={client_id}") as ws:
            response = await http.post(
                f"{base}/prompt",
                json={"prompt": graph, "client_id": client_id, "prompt_id": prompt_id},
            )
            assert response.status == 200
            assert (await response.json())["prompt_id"] == prompt_id
            types = []
            while True:
                message = await asyncio.wait_for(ws.receive(), 20)
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                event = json.loads(message.data)
                types.append(event["type"])
                data = event["data"]
                if (
                    event["type"] == "executing"
                    and data.get("node") is None
                    and data.get("prompt_id") == prompt_id
                ):
                    break
        assert "execution_start" in types and "execution_success" in types
        assert types.index("execution_start") < types.index("execution_success")
        history = await (await http.get(f"{base}/history/{prompt_id}")).json()
        image = history[prompt_id]["outputs"]["2"]["images"][0]
        assert image["subfolder"] == "out" and image["filename"] == f"{prompt_id}_00001_.png"
        view = await http.get(
            f"{base}/view",
            params={"filename": image["filename"], "subfolder": "out", "type": "output"},
        )
        assert view.status == 200
        png = await view.read()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    assert len(png) > 60
