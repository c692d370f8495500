"""A real kubelet node in the test world (realnode.py): it registers Ready, runs real containers
(containerd + runc) with pod IPs from its own namespace's range, serves logs and exec, enforces the
security context, and advertises fake GPUs that the scheduler fits like the KWOK nodes' ones."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import ClientTimeout
from kubernetes_asyncio import client, watch

from serverless_comfyui.testworld import MissingToolError, TestWorld, find_tools_bin
from serverless_comfyui.testworld.kubeclient import kube_api
from serverless_comfyui.testworld.nodeconfig import host_sysctls
from serverless_comfyui.testworld.nodes import FAKE_NODE_ANNOTATION, GPU_TAINT, H100_PRODUCT
from serverless_comfyui.testworld.nodeteardown import leftovers
from serverless_comfyui.testworld.realnode import RealNode
from serverless_comfyui.testworld.waiters import pod_ready, wait_for_pods

pytestmark = pytest.mark.cluster

NODE = "real-h100-0"
TOLERATION = {"key": GPU_TAINT["key"], "operator": "Exists", "effect": GPU_TAINT["effect"]}
# Generous limits: CI machines are busy (load 5-14 on 2 cores).
POD_WAIT = 180.0


@pytest.fixture(scope="module")
def real_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestWorld]:
    try:
        tools = find_tools_bin()
    except MissingToolError as exc:
        pytest.fail(str(exc), pytrace=False)
    sysctls = host_sysctls()
    world = TestWorld(
        state_dir=tmp_path_factory.mktemp("realworld"),
        tools_bin=tools,
        pod_cidr="127.75.0.0/16",
        pod_runner=False,
        real_nodes=1,
    )
    world.start(timeout=300)
    node = world.nodes[0]
    print(f"{NODE}: {node.describe()['timings']} (seconds), memory {node.memory()}")
    try:
        yield world
    finally:
        folder = node.files.root
        world.stop()
        assert leftovers(folder) == []
        assert host_sysctls() == sysctls


@pytest.fixture
def node(real_world: TestWorld) -> RealNode:
    return real_world.nodes[0]


@pytest.fixture
async def core(real_world: TestWorld) -> AsyncIterator[client.CoreV1Api]:
    async with kube_api(real_world.kubeconfig) as api:
        yield client.CoreV1Api(api)


@pytest.fixture
async def ns(core: client.CoreV1Api) -> AsyncIterator[str]:
    name = f"t-real-{uuid.uuid4().hex[:6]}"
    await core.create_namespace({"metadata": {"name": name}})
    yield name
    await core.delete_namespace(name, propagation_policy="Background")


def busybox_pod(node: RealNode, name: str, script: str, **spec: Any) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "main",
        "image": node.images["busybox"].name,
        "imagePullPolicy": "Never",
        "command": ["/bin/sh", "-c", script],
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65534,
            "readOnlyRootFilesystem": True,
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
        },
    }
    if "resources" in spec:
        container["resources"] = spec.pop("resources")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"test": name}},
        "spec": {
            "containers": [container],
            "tolerations": [TOLERATION],
            "terminationGracePeriodSeconds": 1,
            "automountServiceAccountToken": False,
            **spec,
        },
    }


async def watch_node(core: client.CoreV1Api, done: Any, what: str, wait: float = POD_WAIT) -> Any:
    """Watches the real node until done(node) is true; returns the node."""

    async def follow() -> Any:
        while True:
            async for event in watch.Watch().stream(
                core.list_node, field_selector=f"metadata.name={NODE}", timeout_seconds=60
            ):
                if done(event["object"]):
                    return event["object"]

    try:
        return await asyncio.wait_for(follow(), wait)
    except TimeoutError:
        node = await core.read_node(NODE)
        raise AssertionError(f"{NODE} never got {what}: {node.spec.taints} {node.status}") from None


async def test_node_registers_ready_with_gpus_labels_and_taint(
    core: client.CoreV1Api, node: RealNode
) -> None:
    assert node.timings["ready"] < 120, node.timings

    def ready_and_schedulable(obj: Any) -> bool:
        taints = {t.key for t in obj.spec.taints or []}
        gpus = (obj.status.allocatable or {}).get("nvidia.com/gpu")
        return gpus == "8" and "node.kubernetes.io/not-ready" not in taints

    obj = await watch_node(core, ready_and_schedulable, "8 GPUs and no not-ready taint")
    assert obj.status.capacity["nvidia.com/gpu"] == "8"
    assert obj.metadata.labels["nvidia.com/gpu.product"] == H100_PRODUCT
    taints = [(t.key, t.value, t.effect) for t in obj.spec.taints]
    assert (GPU_TAINT["key"], GPU_TAINT["value"], GPU_TAINT["effect"]) in taints
    assert FAKE_NODE_ANNOTATION not in (obj.metadata.annotations or {})  # KWOK leaves it alone
    assert obj.status.node_info.container_runtime_version == "containerd://1.6.20"
    addresses = {a.type: a.address for a in obj.status.addresses}
    assert addresses["InternalIP"] == node.network.node_ip  # type: ignore[union-attr]


async def test_pod_runs_serves_logs_and_exec_and_keeps_root_read_only(
    real_world: TestWorld, core: client.CoreV1Api, node: RealNode, ns: str
) -> None:
    pod = busybox_pod(
        node,
        "hello",
        "echo hello-from-real-node; exec sleep 3600",
        nodeSelector={"kubernetes.io/hostname": NODE},
    )
    started = time.monotonic()
    await core.create_namespaced_pod(ns, pod)
    pods = await wait_for_pods(
        core, ns, "test=hello", lambda p: any(map(pod_ready, p.values())), POD_WAIT
    )
    print(f"pod Ready on {NODE} after {time.monotonic() - started:.1f}s")
    ready = pods["hello"]
    assert ready.spec.node_name == NODE
    assert node.network is not None and node.network.contains(ready.status.pod_ip)

    kubectl = real_world.kubectl
    logs = kubectl("-n", ns, "logs", "hello")
    assert logs.stdout.strip() == "hello-from-real-node", logs.stderr
    whoami = kubectl("-n", ns, "exec", "hello", "--", "id", "-u")
    assert whoami.stdout.strip() == "65534", whoami.stderr
    write = kubectl("-n", ns, "exec", "hello", "--", "sh", "-c", "echo x > /x")
    assert write.returncode != 0
    assert "Read-only file system" in write.stderr + write.stdout


async def test_root_user_is_refused_by_run_as_non_root(
    core: client.CoreV1Api, node: RealNode, ns: str
) -> None:
    pod = busybox_pod(
        node, "rooty", "exec sleep 3600", nodeSelector={"kubernetes.io/hostname": NODE}
    )
    del pod["spec"]["containers"][0]["securityContext"]["runAsUser"]  # the image runs as root
    await core.create_namespaced_pod(ns, pod)

    def refused(pods: dict[str, Any]) -> bool:
        statuses = pods["rooty"].status.container_statuses or [] if "rooty" in pods else []
        waiting = [s.state.waiting for s in statuses if s.state and s.state.waiting]
        return any(w.reason == "CreateContainerConfigError" for w in waiting)

    pods = await wait_for_pods(core, ns, "test=rooty", refused, POD_WAIT)
    message = pods["rooty"].status.container_statuses[0].state.waiting.message
    assert "runAsNonRoot and image will run as root" in message


async def test_gpu_pods_fit_the_real_node(
    real_world: TestWorld, core: client.CoreV1Api, node: RealNode, ns: str
) -> None:
    """The operator's GPU pod shape (H100 nodeSelector, GPU toleration, nvidia.com/gpu limit)
    lands on the real node once the fake H100 node is cordoned; 9 GPUs fit nowhere."""
    assert real_world.kubectl("cordon", "gpu-h100-0").returncode == 0
    try:
        selector = {"nvidia.com/gpu.product": H100_PRODUCT}
        for name, gpus in (("two", 2), ("nine", 9)):
            resources = {"limits": {"nvidia.com/gpu": str(gpus)}}
            pod = busybox_pod(
                node, name, "exec sleep 3600", nodeSelector=selector, resources=resources
            )
            await core.create_namespaced_pod(ns, pod)
        pods = await wait_for_pods(
            core, ns, "test=two", lambda p: any(map(pod_ready, p.values())), POD_WAIT
        )
        assert pods["two"].spec.node_name == NODE
        message = await failed_scheduling(core, ns, "nine")
        assert "Insufficient nvidia.com/gpu" in message
        nine = await core.read_namespaced_pod("nine", ns)
        assert nine.status.phase == "Pending" and not nine.spec.node_name
    finally:
        real_world.kubectl("uncordon", "gpu-h100-0")


async def failed_scheduling(core: client.CoreV1Api, ns: str, pod: str) -> str:
    """The message of the first FailedScheduling event of pod (watched, not polled)."""
    selector = f"involvedObject.name={pod},reason=FailedScheduling"

    async def follow() -> str:
        while True:
            async for event in watch.Watch().stream(
                core.list_namespaced_event, ns, field_selector=selector, timeout_seconds=60
            ):
                return str(event["object"].message)

    return await asyncio.wait_for(follow(), POD_WAIT)


def test_node_files_stay_in_the_state_dir(real_world: TestWorld, node: RealNode) -> None:
    root = node.files.root
    assert root.is_relative_to(real_world.state_dir)
    assert (root / "kubelet" / "pods").is_dir()
    assert Path(node.files.socket).is_socket()


async def test_host_reaches_a_pod_serving_a_secret_volume(
    core: client.CoreV1Api, node: RealNode, ns: str
) -> None:
    """Volumes the kubelet mounts (a Secret is a tmpfs, the ServiceAccount token a projected
    one) reach the container: containerd shares the kubelet's private mount namespace. The
    kubelet's readiness probe reaches the pod, and so does the host, through our veth."""
    await core.create_namespaced_secret(
        ns, {"metadata": {"name": "page"}, "stringData": {"index.html": "served-from-a-secret\n"}}
    )
    pod = busybox_pod(
        node,
        "web",
        "cat /var/run/secrets/kubernetes.io/serviceaccount/namespace; echo;"
        " exec httpd -f -p 8080 -h /www",
        nodeSelector={"kubernetes.io/hostname": NODE},
        automountServiceAccountToken=True,
        volumes=[{"name": "page", "secret": {"secretName": "page"}}],
    )
    container = pod["spec"]["containers"][0]
    container["volumeMounts"] = [{"name": "page", "mountPath": "/www", "readOnly": True}]
    container["readinessProbe"] = {"httpGet": {"path": "/", "port": 8080}, "periodSeconds": 1}
    await core.create_namespaced_pod(ns, pod)
    pods = await wait_for_pods(
        core, ns, "test=web", lambda p: any(map(pod_ready, p.values())), POD_WAIT
    )
    pod_ip = pods["web"].status.pod_ip
    assert node.network is not None and node.network.contains(pod_ip)
    url = f"http://{pod_ip}:8080/"  # our own namespace's address, via our veth
    async with aiohttp.ClientSession() as http, http.get(url, timeout=ClientTimeout(30)) as r:
        assert r.status == 200
        assert await r.text() == "served-from-a-secret\n"
    logs = await core.read_namespaced_pod_log("web", ns)
    assert logs.splitlines()[0] == ns


async def test_gpus_come_back_when_the_status_loses_them(
    real_world: TestWorld, core: client.CoreV1Api
) -> None:
    """As when the kubelet re-registers and drops the extended resource: gpupatch re-adds it."""
    await watch_node(core, lambda n: "nvidia.com/gpu" in (n.status.capacity or {}), "GPUs")
    removed = real_world.kubectl(
        "patch", "node", NODE, "--subresource=status", "--type=json",
        "-p", '[{"op": "remove", "path": "/status/capacity/nvidia.com~1gpu"}]',
    )  # fmt: skip
    assert removed.returncode == 0, removed.stderr
    obj = await watch_node(
        core, lambda n: (n.status.capacity or {}).get("nvidia.com/gpu") == "8", "its GPUs back"
    )
    assert obj.status.allocatable["nvidia.com/gpu"] == "8"
