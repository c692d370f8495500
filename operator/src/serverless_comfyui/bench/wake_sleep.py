"""Waking up and going back to sleep, on the test world: the real control plane, the operator,
the proxy in Kubernetes mode (its own process, production defaults: the autoscaler ticks every
second), and emulated ComfyUI pods that turn Ready only after their warm-up run.

One FluxWorkflow (warm-up workflow, scaleDownDelaySeconds 3). Each sample starts at zero
replicas with no pod left, and POSTs a prompt through the proxy, which holds it, wakes the
application and forwards it once a pod is Ready; the benchmark then waits for the prompt to
finish, for the autoscaler to scale back to zero and for the pod to be gone. Timestamps, all
from the one wall clock of this machine:

- arrival: the client's send time (loopback; the proxy sees it within a fraction of a ms);
- scale written: the proxy's own structured log line `woke` (written right after the merge
  patch of the FluxWorkflow's scale subresource returned); the moment a watch of the
  FluxWorkflow delivers the new spec.replicas is recorded too;
- pod Ready in the API: the earliest of three observers of the write that set Ready=True: the
  pod runner's log line `<pod> Ready=True` (the test world's kubelet, logged once its status
  patch returned), the proxy's log line `pod` with ready=true (its watch delivered it) and the
  benchmark's own watch of the pods; an upper bound of the moment the API server stored it
  (each observer's own lag is recorded too);
- forwarded: arrival + the proxy's cold-start time for the sample, the increase of
  `scui_proxy_cold_start_seconds_sum` over the sample, which the proxy observes when the held
  request gets its pod (from the first held request of the wake); the proxy's log line
  `prompt submitted` (after the pod answered the forwarded prompt) is recorded too;
- last work finished: the emulator's `execution_end_time` of the prompt;
- zero: the proxy's log line `scaled` with direction down (and the watch, as a check).

Nothing was added to the proxy for this: logs and metrics are what it already emits.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp
from kubernetes_asyncio import client, config, watch
from kubernetes_asyncio.client.exceptions import ApiException

from serverless_comfyui.bench import harness
from serverless_comfyui.bench.report import Result, Row, fmt, median_of, spread
from serverless_comfyui.bench.stats import summary
from serverless_comfyui.crd.models import GROUP, PLURAL, VERSION
from serverless_comfyui.proxy import ids
from serverless_comfyui.testworld import TestWorld
from serverless_comfyui.testworld.components import install_crd, start_operator
from serverless_comfyui.testworld.waiters import create_hostpath_claim, pod_ready
from serverless_comfyui.workflows.library import default_workflows_dir

NAMESPACE = "bench-wake"
MODEL = "wake"
DELAY = 3
"""scaleDownDelaySeconds of the benchmark's FluxWorkflow."""
KUBEAI_DEFAULT_SLEEP_SECONDS = 640.0
"""What KubeAI's defaults take from the last request to zero replicas (~10 min 40 s)."""
PROXY_NAME = "bench-proxy"


def samples() -> int:
    return 2 if harness.quick() else 5


def workflow() -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FluxWorkflow",
        "metadata": {"name": MODEL},
        "spec": {
            "image": "ghcr.io/serverless-comfyui/comfyui:bench",
            "resourceProfile": "gpu-h100-80gb-hbm3:1",
            "workflow": {"name": "warmup"},
            "scaleDownDelaySeconds": DELAY,
            "terminationGracePeriodSeconds": 30,
        },
    }


@dataclass
class Seen:
    """What the watches delivered, and when (wall clock)."""

    replicas: list[tuple[float, int]] = field(default_factory=list)
    pod_added: dict[str, float] = field(default_factory=dict)
    pod_ready: dict[str, float] = field(default_factory=dict)
    pod_deleting: dict[str, float] = field(default_factory=dict)
    pod_gone: dict[str, float] = field(default_factory=dict)

    def replicas_now(self) -> int:
        return self.replicas[-1][1] if self.replicas else -1

    def live_pods(self) -> set[str]:
        return set(self.pod_added) - set(self.pod_gone)


async def follow_workflow(custom: client.CustomObjectsApi, seen: Seen) -> None:
    while True:
        listing = await custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL)
        for item in listing["items"]:
            seen.replicas.append((time.time(), int(item["spec"].get("replicas", 0))))
        stream = watch.Watch().stream(
            custom.list_namespaced_custom_object,
            GROUP,
            VERSION,
            NAMESPACE,
            PLURAL,
            resource_version=listing["metadata"]["resourceVersion"],
            timeout_seconds=300,
        )
        async for event in stream:
            replicas = int(event["object"]["spec"].get("replicas", 0))
            if replicas != seen.replicas_now():
                seen.replicas.append((time.time(), replicas))


async def follow_pods(core: client.CoreV1Api, seen: Seen) -> None:
    selector = f"serverless-comfyui.io/workflow={MODEL}"
    while True:
        listing = await core.list_namespaced_pod(NAMESPACE, label_selector=selector)
        stream = watch.Watch().stream(
            core.list_namespaced_pod,
            NAMESPACE,
            label_selector=selector,
            resource_version=listing.metadata.resource_version,
            timeout_seconds=300,
        )
        async for event in stream:
            now = time.time()
            pod = event["object"]
            name = pod.metadata.name
            seen.pod_added.setdefault(name, now)
            if event["type"] == "DELETED":
                seen.pod_gone.setdefault(name, now)
            elif pod.metadata.deletion_timestamp is not None:
                seen.pod_deleting.setdefault(name, now)
            elif pod_ready(pod):
                seen.pod_ready.setdefault(name, now)


async def until(check: Callable[[], bool], limit: float, what: str) -> float:
    """Wall time when check() first held (polled every 10 ms)."""
    deadline = time.monotonic() + limit
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {limit:.0f}s waiting for {what}")
        await asyncio.sleep(0.01)
    return time.time()


def metric(text: str, name: str) -> float:
    """The value of `name{model="wake"}` in a Prometheus text page (0 when absent)."""
    for line in text.splitlines():
        if line.startswith(name + "{") and f'model="{MODEL}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def log_times(path: Path, event: str, **match: Any) -> list[float]:
    """Wall times (epoch seconds) of the proxy's log lines `event` matching `match`."""
    times = []
    for entry in harness.log_events(path, event):
        if all(entry.get(k) == v for k, v in match.items()) and "timestamp" in entry:
            times.append(datetime.fromisoformat(entry["timestamp"]).timestamp())
    return times


READY_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) pod-runner (\S+) Ready=True")


def ready_written(path: Path, pod_key: str) -> float | None:
    """When the pod runner's status patch setting `namespace/pod` Ready returned (its log
    times are local and to the ms)."""
    for line in path.read_text(errors="replace").splitlines():
        found = READY_LINE.match(line)
        if found and found.group(2) == pod_key:
            return datetime.strptime(found.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
    return None


def first_after(times: list[float], moment: float) -> float | None:
    later = [t for t in times if t >= moment]
    return min(later) if later else None


async def one_sample(
    http: aiohttp.ClientSession, proxy: harness.Server, seen: Seen, logs: Path, n: int
) -> dict[str, Any]:
    prompt = json.loads((default_workflows_dir() / "warmup" / "workflow.json").read_text())
    for node in prompt.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = f"sample-{n}"
    async with http.get(f"{proxy.url}/metrics") as answer:
        before = await answer.text()
    pods_before = set(seen.pod_added)

    arrival = time.time()
    async with http.post(
        f"{proxy.url}/openai/api/prompt", json={"model": MODEL, "prompt": prompt}
    ) as answer:
        body = await answer.json(content_type=None)
        answered = time.time()
        if answer.status != 200:
            raise RuntimeError(f"prompt through the proxy: {answer.status} {body}")
    prompt_id = body["prompt_id"]
    async with http.get(f"{proxy.url}/metrics") as answer:
        after = await answer.text()
    cold = "scui_proxy_cold_start_seconds"
    cold_count = metric(after, cold + "_count") - metric(before, cold + "_count")
    cold_seconds = metric(after, cold + "_sum") - metric(before, cold + "_sum")

    # The prompt's end, from its job (by id: the proxy routes it to its pod, never wakes).
    end = None
    deadline = time.monotonic() + 30
    while end is None and time.monotonic() < deadline:
        async with http.get(
            f"{proxy.url}/openai/api/jobs/{prompt_id}", params={"model": MODEL}
        ) as answer:
            job = await answer.json(content_type=None)
        if answer.status == 200 and job.get("status") in ("completed", "failed"):
            end = job["execution_end_time"] / 1000
        else:
            await asyncio.sleep(0.02)
    if end is None:
        raise TimeoutError(f"prompt {prompt_id} did not finish")

    zero_seen = await until(lambda: seen.replicas_now() == 0, DELAY + 30, "zero replicas")
    created = sorted(set(seen.pod_added) - pods_before)
    route = ids.decode(prompt_id)
    pod = next((p for p in created if route and ids.pod_hash(p) == route.pod_hash), "")
    await until(lambda: set(created) <= set(seen.pod_gone), 60, f"pods {created} gone")

    log = proxy.proc.log_path
    woke = first_after(log_times(log, "woke", model=MODEL), arrival)
    zero = first_after(log_times(log, "scaled", model=MODEL, direction="down"), end)
    scale_seen = first_after([t for t, r in seen.replicas if r >= 1], arrival)
    runner_saw = ready_written(logs / "pod-runner.log", f"{NAMESPACE}/{pod}")
    proxy_saw = first_after(log_times(log, "pod", model=MODEL, pod=pod, ready=True), arrival)
    bench_saw = seen.pod_ready.get(pod)
    observed = [t for t in (runner_saw, proxy_saw, bench_saw) if t is not None]
    ready = min(observed) if observed else None
    submitted = first_after(log_times(log, "prompt submitted", prompt_id=prompt_id), arrival)
    forwarded = arrival + cold_seconds if cold_count == 1 else None
    nan = float("nan")

    def diff(later: float | None, earlier: float | None) -> float:
        return later - earlier if later is not None and earlier is not None else nan

    return {
        "pod": pod,
        "pods_created": created,
        "arrival_to_scale_written": diff(woke, arrival),
        "arrival_to_scale_seen": diff(scale_seen, arrival),
        "arrival_to_pod_created": diff(seen.pod_added.get(pod), arrival),
        "arrival_to_ready": diff(ready, arrival),
        "ready_to_pod_runner_saw": diff(runner_saw, ready),
        "ready_to_proxy_saw": diff(proxy_saw, ready),
        "ready_to_benchmark_saw": diff(bench_saw, ready),
        "ready_to_forwarded": diff(forwarded, ready),
        "ready_to_submitted": diff(submitted, ready),
        "ready_to_answer": diff(answered, ready),
        "cold_start": cold_seconds if cold_count == 1 else nan,
        "arrival_to_answer": answered - arrival,
        "finished_to_zero_written": diff(zero, end),
        "finished_to_zero_seen": zero_seen - end,
        "zero_to_pod_gone": diff(seen.pod_gone.get(pod), zero_seen),
    }


async def _measure(world: TestWorld, count: int) -> Result:
    configuration = client.Configuration()
    await config.load_kube_config(str(world.kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        core, custom = client.CoreV1Api(api), client.CustomObjectsApi(api)
        await core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE))
        )
        await create_hostpath_claim(
            core, NAMESPACE, "pvc-capacity-userdata", str(world.state_dir / "pvc")
        )
        for _ in range(100):  # pods are refused until the `default` ServiceAccount exists
            accounts = await core.list_namespaced_service_account(NAMESPACE)
            if any(sa.metadata.name == "default" for sa in accounts.items):
                break
            await asyncio.sleep(0.1)
        await custom.create_namespaced_custom_object(GROUP, VERSION, NAMESPACE, PLURAL, workflow())
        for _ in range(300):
            obj = await custom.get_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, PLURAL, MODEL
            )
            if obj.get("status", {}).get("phase") == "ScaledToZero":
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("the FluxWorkflow never reached ScaledToZero")

        proxy = harness.proxy(
            PROXY_NAME,
            world.logs,
            {
                "KUBECONFIG": str(world.kubeconfig),
                "SERVERLESS_COMFYUI_PROXY_NAMESPACES": json.dumps([NAMESPACE]),
                "SERVERLESS_COMFYUI_PROXY_LEASE_NAMESPACE": NAMESPACE,
            },
        )
        seen = Seen()
        watchers = [
            asyncio.create_task(follow_workflow(custom, seen)),
            asyncio.create_task(follow_pods(core, seen)),
        ]
        with harness.running([proxy]):
            try:
                await harness.wait_ready([proxy], "/readyz")
                coordination = client.CoordinationV1Api(api)
                for _ in range(300):  # the proxy leads the autoscaling (one replica: soon)
                    with contextlib.suppress(ApiException):
                        lease = await coordination.read_namespaced_lease(
                            "serverless-comfyui-proxy-autoscaler", NAMESPACE
                        )
                        if lease.spec.holder_identity == PROXY_NAME:
                            break
                    await asyncio.sleep(0.1)
                timeout = aiohttp.ClientTimeout(total=120)
                results = []
                async with aiohttp.ClientSession(timeout=timeout) as http:
                    for n in range(count):
                        await until(
                            lambda: seen.replicas_now() == 0 and not seen.live_pods(),
                            60,
                            "zero replicas and no pod",
                        )
                        results.append(await one_sample(http, proxy, seen, world.logs, n))
            finally:
                for task in watchers:
                    task.cancel()
                await asyncio.gather(*watchers, return_exceptions=True)
    keys = [k for k in results[0] if k not in ("pod", "pods_created")] if results else []
    return {
        "samples": results,
        "summary": {k: summary([r[k] for r in results if r[k] == r[k]]) for k in keys},
        "scale_down_delay_seconds": DELAY,
    }


def run(state_dir: Path) -> Result:
    world = TestWorld(state_dir=state_dir, pod_cidr="127.70.0.0/16")
    world.start()
    try:
        install_crd(world)
        start_operator(world)
        return asyncio.run(_measure(world, samples()))
    finally:
        world.stop()


# -- report -----------------------------------------------------------------------------------


def _s(key: str, stat: str) -> Callable[[Result], float]:
    return lambda r: float(r["summary"][key][stat])


def rows(results: list[Result]) -> list[Row]:
    def ms(key: str, stat: str) -> float:
        return median_of(results, _s(key, stat)) * 1000

    return [
        (
            "wake: arrival -> scale written p99",
            ms("arrival_to_scale_written", "p99"),
            None,
            "ms (target <= 100)",
        ),
        (
            "wake: pod Ready -> request forwarded p99",
            ms("ready_to_forwarded", "p99"),
            None,
            "ms (target <= 200)",
        ),
        (
            "wake: arrival -> answer (cold start) p50",
            ms("arrival_to_answer", "p50") / 1000,
            ms("arrival_to_ready", "p50") / 1000,
            "s (baseline: pod Ready)",
        ),
        (
            "sleep: last work finished -> zero p50",
            ms("finished_to_zero_written", "p50") / 1000,
            float(DELAY),
            "s (baseline: delay; target +2)",
        ),
        (
            "sleep: last work finished -> zero max",
            ms("finished_to_zero_written", "p99") / 1000,
            float(DELAY),
            "s (baseline: delay)",
        ),
    ]


def details(results: list[Result]) -> str:
    def ms(key: str, stat: str) -> str:
        return fmt(median_of(results, _s(key, stat)) * 1000, 0)

    samples_per_run = [len(r["samples"]) for r in results]
    all_ready = [s["ready_to_forwarded"] for r in results for s in r["samples"]]
    all_scale = [s["arrival_to_scale_written"] for r in results for s in r["samples"]]
    pooled = (
        f"  pooled over all {sum(samples_per_run)} samples: arrival -> scale written max "
        f"{fmt(max(all_scale, default=float('nan')) * 1000, 0)} ms, Ready -> forwarded max "
        f"{fmt(max(all_ready, default=float('nan')) * 1000, 0)} ms"
    )
    lines = [
        f"wake/sleep on the test world ({samples_per_run} samples per run; medians over runs of "
        "each run's p50 / p99 (p99 of a few samples is their maximum); ms):",
    ]
    for key, label in (
        ("arrival_to_scale_written", "arrival -> scale written (proxy log)"),
        ("arrival_to_scale_seen", "arrival -> new replicas seen by a watch"),
        ("arrival_to_pod_created", "arrival -> pod created (watch)"),
        ("arrival_to_ready", "arrival -> pod Ready (earliest observer)"),
        ("ready_to_pod_runner_saw", "pod Ready -> pod runner's patch returned"),
        ("ready_to_proxy_saw", "pod Ready -> the proxy's watch has it (log)"),
        ("ready_to_benchmark_saw", "pod Ready -> the benchmark's watch has it"),
        ("ready_to_forwarded", "pod Ready -> request forwarded (metric)"),
        ("ready_to_submitted", "pod Ready -> pod accepted the prompt (log)"),
        ("ready_to_answer", "pod Ready -> answer at the client"),
        ("arrival_to_answer", "arrival -> answer at the client"),
        ("finished_to_zero_written", f"last work finished -> zero (delay {DELAY}s)"),
        ("finished_to_zero_seen", "last work finished -> zero seen by a watch"),
        ("zero_to_pod_gone", "zero -> pod gone (drain, grace)"),
    ):
        lines.append(f"  {label:44} {ms(key, 'p50'):>7} / {ms(key, 'p99'):>7}")
    lines.append(pooled)
    lines.append(
        "  spread over runs (min-max), ms: arrival -> scale written p99 "
        f"{spread(results, _s('arrival_to_scale_written', 'p99'), 1000)}, Ready -> forwarded "
        f"p99 {spread(results, _s('ready_to_forwarded', 'p99'), 1000)}, finished -> zero p50 "
        f"{spread(results, _s('finished_to_zero_written', 'p50'), 1000)}"
    )
    extra = [s["pods_created"] for r in results for s in r["samples"] if len(s["pods_created"]) > 1]
    if extra:
        lines.append(f"  samples that created more than one pod: {extra}")
    excess = median_of(results, _s("finished_to_zero_written", "p50")) - DELAY
    lines.append(
        f"  sleep: zero {fmt(excess)} s after the delay (target <= 2 s); for reference, KubeAI's "
        f"defaults take ~10 min 40 s ({KUBEAI_DEFAULT_SLEEP_SECONDS:.0f} s) from the last "
        "request to zero"
    )
    return "\n".join(re.sub(r"\s+$", "", line) for line in lines)
