"""The scale-to-zero proxy end to end on the real control plane: the proxy as a real process
(`python -m serverless_comfyui.proxy`), the operator, and emulated ComfyUI pods that become Ready
only after their warm-up (the image entrypoint with the emulator as its ComfyUI)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from test_proxy_kube import eventually, fw_replicas, warm_workflow

from serverless_comfyui.crd.models import GROUP, PLURAL, VERSION
from serverless_comfyui.proxy import ids
from serverless_comfyui.proxy.kubeapi import parse_time
from serverless_comfyui.testworld import TestWorld
from serverless_comfyui.testworld.processes import ManagedProcess, free_port

WARMUP_GRAPH: dict[str, Any] = json.loads(
    (Path(__file__).parents[2] / "workflows" / "warmup" / "workflow.json").read_text()
)
SETTLE = 2.0  # drain.SETTLE_SECONDS: victims are marked this long before the count drops
SLACK = 2.5  # autoscaler ticks and watch latency on a quiet machine
# Waits return as soon as their event happens; these limits only stop a broken test, and a
# loaded CI machine (load 5-14 on 2 cores) is slow at everything. How fast scaling is on a quiet
# machine is measured by `make bench` (wake_sleep), not asserted here.
PATIENCE = 30.0


@dataclass
class Proxy:
    proc: ManagedProcess
    url: str
    identity: str

    def kill(self) -> None:
        """SIGKILL: no lease release, no last activity publish."""
        assert self.proc.pid is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        assert self.proc.popen is not None
        self.proc.popen.wait(5)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.proc.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    lines.append(json.loads(line))
                except ValueError:
                    continue
        return lines


ProxyFactory = Callable[..., Awaitable[Proxy]]


@pytest.fixture
async def proxies(
    world: TestWorld, namespace: str, operator: ManagedProcess
) -> AsyncIterator[ProxyFactory]:
    """Start proxy processes serving the test namespace (leases there too)."""
    started: list[Proxy] = []

    async def start(identity: str = "proxy-0", port: int | None = None, **env: str) -> Proxy:
        port = port or free_port()
        environment = {
            **os.environ,
            "KUBECONFIG": str(world.kubeconfig),
            "SERVERLESS_COMFYUI_PROXY_HOST": "127.0.0.1",
            "SERVERLESS_COMFYUI_PROXY_PORT": str(port),
            "SERVERLESS_COMFYUI_PROXY_NAMESPACES": json.dumps([namespace]),
            "SERVERLESS_COMFYUI_PROXY_LEASE_NAMESPACE": namespace,
            "SERVERLESS_COMFYUI_PROXY_POD_NAME": identity,
            "SERVERLESS_COMFYUI_PROXY_AUTOSCALE_INTERVAL_SECONDS": "0.25",
            **{f"SERVERLESS_COMFYUI_PROXY_{k.upper()}": v for k, v in env.items()},
        }
        environment.pop("KUBERNETES_SERVICE_HOST", None)
        proc = ManagedProcess(
            f"proxy-{namespace}-{identity}",
            [sys.executable, "-m", "serverless_comfyui.proxy"],
            world.logs / f"proxy-{namespace}-{identity}.log",
            env=environment,
        )
        proc.start()
        world.processes.append(proc)
        proxy = Proxy(proc, f"http://127.0.0.1:{port}", identity)
        started.append(proxy)

        async def ready() -> bool:
            proc.ensure_alive()
            try:
                async with (
                    aiohttp.ClientSession() as session,
                    session.get(f"{proxy.url}/readyz") as answer,
                ):
                    return answer.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(ready, 30, f"proxy {identity} ready")
        return proxy

    yield start
    for proxy in started:
        proxy.proc.stop(grace=10)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        yield session


async def create(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    api = client.CustomObjectsApi(kube)
    await api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


async def pods(kube: client.ApiClient, namespace: str, name: str) -> list[Any]:
    core = client.CoreV1Api(kube)
    listing = await core.list_namespaced_pod(
        namespace, label_selector=f"serverless-comfyui.io/workflow={name}"
    )
    return list(listing.items)


def is_ready(pod: Any) -> bool:
    return (
        any(c.type == "Ready" and c.status == "True" for c in (pod.status.conditions or []))
        and not pod.metadata.deletion_timestamp
    )


async def ready_pods(kube: client.ApiClient, namespace: str, name: str) -> list[Any]:
    return [p for p in await pods(kube, namespace, name) if is_ready(p)]


async def set_step_seconds(http: aiohttp.ClientSession, pod: Any, seconds: float) -> None:
    """Make the pod's emulated ComfyUI take `seconds` per prompt (test-only control API)."""
    url = f"http://{pod.status.pod_ip}:8188/_emulator/faults"
    async with http.post(url, json={"step_seconds": seconds}) as answer:
        assert answer.status == 200, await answer.text()


async def post_prompt(
    http: aiohttp.ClientSession, proxy: Proxy, model: str, **extra: Any
) -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    body = {"model": model, "prompt": WARMUP_GRAPH, **extra}
    async with http.post(f"{proxy.url}/openai/api/prompt", json=body) as answer:
        data = await answer.json(content_type=None)
        return answer.status, data, time.monotonic() - started


async def history(
    http: aiohttp.ClientSession, proxy: Proxy, model: str, prompt_id: str
) -> tuple[int, Any]:
    url = f"{proxy.url}/openai/api/history/{prompt_id}"
    async with http.get(url, params={"model": model}) as answer:
        return answer.status, await answer.json(content_type=None)


async def finished(http: aiohttp.ClientSession, proxy: Proxy, model: str, prompt_id: str) -> bool:
    status, data = await history(http, proxy, model, prompt_id)
    return status == 200 and prompt_id in data and data[prompt_id]["status"]["completed"]


def metric(text: str, name: str, **labels: str) -> float | None:
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
        if all(found.get(k) == v for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return None


async def metrics_of(http: aiohttp.ClientSession, proxy: Proxy) -> str:
    async with http.get(f"{proxy.url}/metrics") as answer:
        return await answer.text()


async def replicas_at_least(kube: client.ApiClient, namespace: str, name: str, n: int) -> bool:
    return await fw_replicas(kube, namespace, name) >= n


async def test_cold_start_holds_the_prompt_until_a_warm_pod_and_history_never_wakes(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    await create(kube, namespace, warm_workflow("cold", scaleDownDelaySeconds=60))
    proxy = await proxies()

    # A prompt-bound read at zero replicas is answered without starting a GPU.
    foreign = ids.mint("cold", "cold-comfyui-gone-00000")
    status, _ = await history(http, proxy, "cold", foreign)
    assert status == 404
    await asyncio.sleep(1.5)  # several autoscaler ticks
    assert await fw_replicas(kube, namespace, "cold") == 0

    # The prompt is held while the application wakes, then forwarded to the warm pod.
    request = asyncio.create_task(post_prompt(http, proxy, "cold"))
    woke = await eventually(
        lambda: replicas_at_least(kube, namespace, "cold", 1),
        10,
        "the FluxWorkflow scaled to 1",
    )
    assert not request.done()
    status, data, seconds = await request
    assert status == 200, data
    prompt_id = data["prompt_id"]
    print(f"scale-up written after {woke:.2f}s; cold start served in {seconds:.1f}s")
    (pod,) = await ready_pods(kube, namespace, "cold")
    assert ids.decode(prompt_id) == ids.Route(
        ids.model_hash("cold"), ids.pod_hash(pod.metadata.name)
    )
    await eventually(lambda: finished(http, proxy, "cold", prompt_id), 10, "the prompt done")
    text = await metrics_of(http, proxy)
    assert metric(text, "scui_proxy_scale_events_total", model="cold", direction="up") == 1
    assert metric(text, "scui_proxy_held_requests", model="cold") == 0


async def stays(
    check: Callable[[], Awaitable[bool]], seconds: float, what: str, every: float = 0.2
) -> None:
    """check() holds for the whole time."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert await check(), what
        await asyncio.sleep(every)


async def test_idle_to_zero_after_the_delay_never_under_a_running_prompt_or_open_socket(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    delay = 4.0
    await create(kube, namespace, warm_workflow("idle", scaleDownDelaySeconds=int(delay)))
    proxy = await proxies()
    up = lambda: replicas_at_least(kube, namespace, "idle", 1)  # noqa: E731

    # The seed's documented wake-up: GET /api/system_stats through the proxy.
    async with http.get(f"{proxy.url}/openai/api/system_stats", params={"model": "idle"}) as r:
        assert r.status == 200
    (pod,) = await ready_pods(kube, namespace, "idle")

    # A prompt that runs twice the delay: the application stays up all along.
    await set_step_seconds(http, pod, 2 * delay)
    status, data, _ = await post_prompt(http, proxy, "idle")
    assert status == 200, data
    prompt_id = data["prompt_id"]
    await stays(up, 2 * delay - 0.5, "scaled down under a running prompt")
    await eventually(lambda: finished(http, proxy, "idle", prompt_id), PATIENCE, "the prompt done")
    await set_step_seconds(http, pod, 0.05)

    # An open WebSocket keeps it up as long as it is open, however quiet.
    ws_url = f"{proxy.url.replace('http', 'ws')}/ws"
    async with http.ws_connect(ws_url, params={"clientId": "idle-test", "model": "idle"}) as ws:
        await stays(up, 2 * delay, "scaled down under an open WebSocket")
        closed = time.monotonic()
        await ws.close()

    # Then idle: zero after scaleDownDelaySeconds, not before, within the stated bound.
    await stays(up, delay - 0.5, "scaled to zero before scaleDownDelaySeconds")
    await eventually(
        lambda: replicas_is(kube, namespace, "idle", 0), SETTLE + SLACK + PATIENCE, "zero"
    )
    idle_for = time.monotonic() - closed
    print(f"idle to zero: {idle_for:.1f}s (delay {delay}s)")
    assert idle_for >= delay
    await eventually(lambda: pods_gone(kube, namespace, "idle"), 30, "the pod removed")
    text = await metrics_of(http, proxy)
    assert metric(text, "scui_proxy_scale_events_total", model="idle", direction="down") == 1


async def replicas_is(kube: client.ApiClient, namespace: str, name: str, n: int) -> bool:
    return await fw_replicas(kube, namespace, name) == n


async def pods_gone(kube: client.ApiClient, namespace: str, name: str) -> bool:
    return not await pods(kube, namespace, name)


async def scale_to(kube: client.ApiClient, namespace: str, name: str, replicas: int) -> None:
    """What `kubectl scale fw/<name> --replicas=n` does."""
    api = client.CustomObjectsApi(kube)
    await api.patch_namespaced_custom_object_scale(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        name,
        {"spec": {"replicas": replicas}},
        _content_type="application/merge-patch+json",
    )


async def test_scale_down_drains_the_idle_pod_and_keeps_the_one_with_work(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    delay = 6.0
    # A long delay while the two pods start (on a loaded machine that takes longer than 6 s,
    # and the autoscaler would remove one before both are warm); the real one once they are.
    body = warm_workflow("pair", maxReplicas=2, targetRequests=1, scaleDownDelaySeconds=600)
    await create(kube, namespace, body)
    proxy = await proxies()
    await scale_to(kube, namespace, "pair", 2)
    scaled_up = time.monotonic()

    async def two_serving() -> bool:
        serving = metric(await metrics_of(http, proxy), "scui_proxy_serving_pods", model="pair")
        return serving == 2  # as the proxy sees them (its pod watch may lag the apiserver)

    await eventually(two_serving, 30 + PATIENCE, "two serving pods")
    older, newer = sorted(
        await ready_pods(kube, namespace, "pair"), key=lambda p: p.metadata.creation_timestamp
    )
    # Work on the pod the ReplicaSet would remove first by default (the newest): a prompt id
    # minted for that pod routes there through the proxy.
    # The prompt outlasts the scale-down by far, even on a loaded machine.
    await set_step_seconds(http, newer, 3 * delay + PATIENCE)
    prompt_id = ids.mint("pair", newer.metadata.name)
    status, data, _ = await post_prompt(http, proxy, "pair", prompt_id=prompt_id)
    assert status == 200 and data["prompt_id"] == prompt_id, data
    # Now the real delay; the prompt keeps one pod in use, so the idle one is the victim.
    await client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "pair", {"spec": {"scaleDownDelaySeconds": int(delay)}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip

    # One prompt for targetRequests 1: one pod is enough, after the delay and the drain.
    async def one_replica() -> bool:
        return await fw_replicas(kube, namespace, "pair") == 1

    await eventually(one_replica, delay + SETTLE + SLACK + PATIENCE, "scale down to 1")
    down_after = time.monotonic() - scaled_up
    assert down_after >= delay
    names = {p.metadata.name for p in await ready_pods(kube, namespace, "pair")}
    assert newer.metadata.name in names

    async def older_gone() -> bool:
        return older.metadata.name not in {
            p.metadata.name for p in await pods(kube, namespace, "pair")
        }

    await eventually(older_gone, 30, "the idle pod removed")
    (kept,) = await pods(kube, namespace, "pair")
    assert kept.metadata.name == newer.metadata.name
    assert kept.metadata.deletion_timestamp is None
    assert int(kept.metadata.annotations["controller.kubernetes.io/pod-deletion-cost"]) >= 1
    assert "serverless-comfyui.io/draining" not in kept.metadata.annotations
    drains = [e for e in proxy.log_lines() if e.get("event") == "draining before scale-down"]
    assert drains and drains[0]["victims"] == [older.metadata.name], drains

    # The prompt finishes on the pod that was kept; then the application goes to zero.
    await eventually(
        lambda: finished(http, proxy, "pair", prompt_id), 3 * delay + 2 * PATIENCE, "prompt done"
    )
    done = time.monotonic()
    await eventually(
        lambda: replicas_is(kube, namespace, "pair", 0),
        delay + SETTLE + SLACK + PATIENCE,
        "scale to zero",
    )
    assert time.monotonic() - done >= delay - 0.5  # activity ended when the queue emptied


async def test_a_hold_that_cannot_be_served_is_bounded_503_with_retry_after(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    # No node has 9 GPUs: the pod never schedules.
    body = warm_workflow("huge", resourceProfile="gpu-h100-80gb-hbm3:9", scaleDownDelaySeconds=3)
    await create(kube, namespace, body)
    proxy = await proxies(hold_timeout_seconds="3")

    async def held_prompt() -> tuple[int, str | None, float]:
        started = time.monotonic()
        body = {"model": "huge", "prompt": WARMUP_GRAPH}
        async with http.post(f"{proxy.url}/openai/api/prompt", json=body) as answer:
            await answer.read()
            return answer.status, answer.headers.get("Retry-After"), time.monotonic() - started

    requests = [asyncio.create_task(held_prompt()) for _ in range(3)]
    await eventually(lambda: replicas_at_least(kube, namespace, "huge", 1), PATIENCE, "woken")
    text = await metrics_of(http, proxy)
    assert metric(text, "scui_proxy_held_requests", model="huge") == 3
    for status, retry_after, seconds in await asyncio.gather(*requests):
        assert status == 503
        assert retry_after is not None and int(retry_after) >= 1
        assert 3.0 <= seconds <= 3.0 + PATIENCE, seconds  # the 3 s hold, not the 600 s default
    text = await metrics_of(http, proxy)
    assert metric(text, "scui_proxy_held_requests", model="huge") == 0
    (pod,) = await pods(kube, namespace, "huge")
    scheduled = next(c for c in pod.status.conditions if c.type == "PodScheduled")
    assert scheduled.reason == "Unschedulable"
    # Nobody waits any more: the unschedulable pod goes away after the delay.
    await eventually(
        lambda: replicas_is(kube, namespace, "huge", 0), 3 + SETTLE + PATIENCE, "back to zero"
    )


def pod_of(prompt_id: str, names: list[str]) -> str:
    route = ids.decode(prompt_id)
    assert route is not None
    return next(n for n in names if ids.pod_hash(n) == route.pod_hash)


async def test_prompts_spread_by_outstanding_work_and_keep_their_pod_across_a_restart(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    body = warm_workflow("spread", maxReplicas=2, targetRequests=1, scaleDownDelaySeconds=60)
    await create(kube, namespace, body)
    port = free_port()
    proxy = await proxies(port=port)
    # Demand wakes it and then asks for a second pod: two slow prompts on the first one.
    async with http.get(f"{proxy.url}/openai/api/system_stats", params={"model": "spread"}) as r:
        assert r.status == 200
    (first,) = await ready_pods(kube, namespace, "spread")
    await set_step_seconds(http, first, 3)
    early = [await post_prompt(http, proxy, "spread") for _ in range(2)]
    assert all(status == 200 for status, _, _ in early)
    await eventually(lambda: replicas_at_least(kube, namespace, "spread", 2), 5, "scale to 2")

    async def two_ready() -> bool:
        return len(await ready_pods(kube, namespace, "spread")) == 2

    await eventually(two_ready, 30, "a second ready pod")
    for pod in await ready_pods(kube, namespace, "spread"):
        await set_step_seconds(http, pod, 3)
    for _, data, _ in early:
        await eventually(lambda d=data: finished(http, proxy, "spread", d["prompt_id"]), 15, "done")

    # Both idle: four prompts go two and two (fewest outstanding first).
    names = [p.metadata.name for p in await ready_pods(kube, namespace, "spread")]
    prompt_ids = []
    for _ in range(4):
        status, data, _ = await post_prompt(http, proxy, "spread")
        assert status == 200, data
        prompt_ids.append(data["prompt_id"])
    placed = [pod_of(p, names) for p in prompt_ids]
    assert sorted(placed.count(n) for n in names) == [2, 2], placed

    # Restart the proxy (SIGKILL) while they run: every prompt is still found on its pod.
    proxy.kill()
    proxy = await proxies(port=port)
    for prompt_id in prompt_ids:
        await eventually(lambda p=prompt_id: finished(http, proxy, "spread", p), 20, "history")
    assert await fw_replicas(kube, namespace, "spread") == 2
    # A prompt of a pod that is gone answers 404 at once (no wake, no hang).
    status, _ = await history(http, proxy, "spread", ids.mint("spread", "spread-comfyui-gone"))
    assert status == 404


async def lease_holder(kube: client.ApiClient, namespace: str) -> str | None:
    api = client.CoordinationV1Api(kube)
    lease = await api.read_namespaced_lease("serverless-comfyui-proxy-autoscaler", namespace)
    return lease.spec.holder_identity  # type: ignore[no-any-return]


def scaled(proxy: Proxy, direction: str) -> list[dict[str, Any]]:
    return [
        e
        for e in proxy.log_lines()
        if e.get("event") == "scaled" and e.get("direction") == direction
    ]


async def test_one_leader_writes_scale_decisions_and_another_takes_over_when_it_dies(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    delay = 3.0
    await create(kube, namespace, warm_workflow("led", scaleDownDelaySeconds=int(delay)))
    leader = await proxies("proxy-a")
    await eventually(lambda: _holder_is(kube, namespace, "proxy-a"), 10, "proxy-a leads")
    follower = await proxies("proxy-b")

    # The follower wakes the app (any replica may) and holds a WebSocket open on it: the
    # leader keeps the app up on the follower's published activity.
    params = {"model": "led"}
    async with http.get(f"{follower.url}/openai/api/system_stats", params=params) as r:
        assert r.status == 200
    ws_url = f"{follower.url.replace('http', 'ws')}/ws"
    async with http.ws_connect(ws_url, params={"clientId": "led-test", "model": "led"}) as ws:
        await stays(
            lambda: replicas_at_least(kube, namespace, "led", 1),
            3 * delay,
            "the leader scaled down under the follower's open WebSocket",
        )
        await ws.close()
    await eventually(
        lambda: replicas_is(kube, namespace, "led", 0), delay + SETTLE + SLACK + PATIENCE, "zero"
    )
    await eventually(lambda: len(scaled(leader, "down")) == 1, PATIENCE, "the leader's log")
    assert not scaled(follower, "down") and not scaled(follower, "up")

    # Wake it again, then kill the leader: the follower takes over and scales it down.
    await eventually(lambda: pods_gone(kube, namespace, "led"), 30, "the drained pod gone")
    async with http.get(f"{follower.url}/openai/api/system_stats", params=params) as r:
        assert r.status == 200
    assert await fw_replicas(kube, namespace, "led") == 1
    leader.kill()
    killed = time.monotonic()
    # The lease lasts 10 s and is retried every 2 s: a quiet machine takes over in ~12 s (make
    # bench); the limit allows for a loaded one.
    takeover = await eventually(
        lambda: _holder_is(kube, namespace, "proxy-b"), 10.0 + 2.0 + PATIENCE, "takeover"
    )
    print(f"takeover {takeover:.1f}s after the leader was killed")
    await eventually(lambda: replicas_is(kube, namespace, "led", 0), PATIENCE, "zero by the new")
    print(f"zero {time.monotonic() - killed:.1f}s after the leader was killed")
    # The log line follows the scale write: wait for it rather than race it.
    await eventually(lambda: len(scaled(follower, "down")) == 1, PATIENCE, "the follower's log")


async def _holder_is(kube: client.ApiClient, namespace: str, identity: str) -> bool:
    try:
        return await lease_holder(kube, namespace) == identity
    except client.exceptions.ApiException:
        return False


async def test_a_replaced_proxy_neither_forgets_recent_activity_nor_restarts_the_delay(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,
    http: aiohttp.ClientSession,
) -> None:
    """A rolling restart of the proxy: the new replica (another name) reads the activity the
    old one published, so the app goes to zero scaleDownDelaySeconds after the last request,
    neither at once (forgotten activity) nor a full delay after the restart."""
    delay = 12.0
    await create(kube, namespace, warm_workflow("mem", scaleDownDelaySeconds=int(delay)))
    old = await proxies("proxy-old")
    params = {"model": "mem"}
    async with http.get(f"{old.url}/openai/api/system_stats", params=params) as r:
        assert r.status == 200
    await asyncio.sleep(1)
    before_last = time.time()
    async with http.get(f"{old.url}/openai/api/object_info/EmptyImage", params=params) as r:
        assert r.status == 200
    last_request, last_request_wall = time.monotonic(), time.time()
    await asyncio.sleep(6)
    old.proc.stop(grace=10)  # SIGTERM: it publishes its activity and releases the lease
    new = await proxies("proxy-new")
    await eventually(lambda: _holder_is(kube, namespace, "proxy-new"), PATIENCE, "new leads")
    remaining = delay - 0.5 - (time.monotonic() - last_request)
    await stays(
        lambda: replicas_at_least(kube, namespace, "mem", 1), remaining, "forgot the activity"
    )
    await eventually(
        lambda: replicas_is(kube, namespace, "mem", 0), SETTLE + SLACK + PATIENCE, "zero"
    )
    print(f"zero {time.monotonic() - last_request:.1f}s after the last request (delay {delay}s)")
    await eventually(lambda: len(scaled(new, "down")) == 1, PATIENCE, "the new proxy's log")
    # Not a delay counted from the restart: the new leader's decision names the activity it
    # counted from, and that is the old proxy's last request, not the new one's start. (A
    # wall-clock bound here failed on a loaded CI machine by 0.1 s; the log is exact.)
    counted_from = parse_time(scaled(new, "down")[0]["last_activity"])
    assert counted_from is not None
    assert before_last <= counted_from <= last_request_wall, (before_last, counted_from)
    assert not scaled(old, "down")
