"""Routing quality: how long prompts wait in a queue when the proxy spreads them over the pods,
against the ideal and against round-robin, on the same arrival trace.

The trace is a simulated day (`queueing.day_trace`): Poisson arrivals whose rate follows a
daily load curve (35% of the pods' capacity at midnight, 90% at noon), each prompt with sampler
steps drawn from a spread of Flux settings (4, 20, 28 or 50 steps), compressed into about 40 s
(a step takes 25 ms, so a 28-step prompt runs 0.7 s). It runs twice at once, on two pools of 6
emulator processes each:

- through the proxy (static mode, its own process): POST /api/prompt, the proxy picks the pod
  with the fewest outstanding prompts;
- round-robin, done by the client: prompt i straight to emulator i mod 6.

A prompt's queue wait is its execution start on the emulator (the `execution_start` timestamp
of its job) minus its scheduled arrival. The ideal is computed offline from the same arrivals
and the service times measured in the proxied run (end - start of each job): one central FIFO
in front of 6 pods (M/G/6), i.e. every prompt starts on the first pod to become idle. The
offline models of least-outstanding and round-robin dispatch are recorded too.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from serverless_comfyui.bench import harness, queueing
from serverless_comfyui.bench.report import Result, Row, fmt, median_of, spread
from serverless_comfyui.bench.stats import summary
from serverless_comfyui.workflows.library import default_workflows_dir

MODEL = "route"
PODS = 6
STEP_SECONDS = 0.025
SEED = 20240601


def sizes() -> tuple[float, int]:
    """(trace length in seconds, pods)."""
    return (12.0, 4) if harness.quick() else (40.0, PODS)


@functools.cache
def flux_schnell() -> dict[str, Any]:
    graph: dict[str, Any] = json.loads(
        (default_workflows_dir() / "flux_schnell" / "workflow.json").read_text()
    )
    return graph


def graph(steps: int, seed: int) -> dict[str, Any]:
    """Flux schnell with `steps` sampler steps; a seed of its own, so nothing is cached."""
    prompt = copy.deepcopy(flux_schnell())
    for node in prompt.values():
        if node["class_type"] == "BasicScheduler":
            node["inputs"]["steps"] = steps
        elif node["class_type"] == "RandomNoise":
            node["inputs"]["noise_seed"] = seed
        elif node["class_type"] == "EmptySD3LatentImage":
            node["inputs"].update(width=256, height=256)
    return prompt


Submit = Callable[[aiohttp.ClientSession, int, dict[str, Any]], Any]


async def play(
    trace: queueing.Trace, start: float, submit: Submit, limit: float
) -> dict[int, tuple[str, float]]:
    """Submit prompt i at wall time start + arrival i; returns {i: (prompt id, arrival)}."""
    ids: dict[int, tuple[str, float]] = {}
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=64), timeout=timeout
    ) as session:

        async def one(index: int, arrival: float) -> None:
            body = {"prompt": graph(trace.steps[index], SEED + index)}
            ids[index] = (await submit(session, index, body), arrival)

        tasks = []
        for index, offset in enumerate(trace.arrivals):
            arrival = start + offset
            delay = arrival - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if time.time() - start > limit:
                break
            tasks.append(asyncio.create_task(one(index, arrival)))
        await asyncio.gather(*tasks)
    return ids


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> str:
    async with session.post(url, json=body) as answer:
        data = await answer.json(content_type=None)
        if answer.status != 200:
            raise RuntimeError(f"POST {url}: {answer.status} {data}")
        return str(data["prompt_id"])


async def idle(urls: list[str], limit: float) -> None:
    """Until no emulator has a prompt queued or running."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            remaining = 0
            for url in urls:
                async with session.get(f"{url}/prompt") as answer:
                    remaining += (await answer.json())["exec_info"]["queue_remaining"]
            if remaining == 0:
                return
            await asyncio.sleep(0.2)
    raise TimeoutError("prompts still queued after the trace")


async def jobs(urls: list[str]) -> dict[str, tuple[float, float, int]]:
    """{prompt id: (execution start, execution end, pod index)} of every finished prompt."""
    found = {}
    async with aiohttp.ClientSession() as session:
        for pod, url in enumerate(urls):
            params = {"status": "completed,failed"}
            async with session.get(f"{url}/api/jobs", params=params) as answer:
                for job in (await answer.json())["jobs"]:
                    start, end = job.get("execution_start_time"), job.get("execution_end_time")
                    if start and end:
                        found[job["id"]] = (start / 1000, end / 1000, pod)
    return found


def outcome(
    ids: dict[int, tuple[str, float]], done: dict[str, tuple[float, float, int]], pods: int
) -> dict[str, Any]:
    """Waits, service times and per-pod counts of one run, by trace index."""
    waits: dict[int, float] = {}
    services: dict[int, float] = {}
    per_pod = [0] * pods
    for index, (prompt_id, arrival) in ids.items():
        if prompt_id in done:
            start, end, pod = done[prompt_id]
            waits[index] = max(0.0, start - arrival)
            services[index] = end - start
            per_pod[pod] += 1
    return {"waits": waits, "services": services, "per_pod": per_pod}


async def _measure(proxy_url: str, pool_proxy: list[str], pool_rr: list[str]) -> Result:
    length, pods = sizes()
    trace = queueing.day_trace(SEED, length, pods, STEP_SECONDS)
    # Warm every emulator up (first prompt of a process), one prompt each, then let the
    # proxy's queue monitors see the idle pods.
    async with aiohttp.ClientSession() as session:
        await asyncio.gather(
            *(
                post(session, f"{url}/prompt", {"prompt": graph(1, 10**6 + i)})
                for i, url in enumerate(pool_proxy + pool_rr)
            )
        )
    await idle(pool_proxy + pool_rr, 30)
    await asyncio.sleep(1.0)

    async def via_proxy(session: aiohttp.ClientSession, index: int, body: dict[str, Any]) -> str:
        return await post(session, f"{proxy_url}/api/prompt", {"model": MODEL, **body})

    async def round_robin(session: aiohttp.ClientSession, index: int, body: dict[str, Any]) -> str:
        url = pool_rr[index % len(pool_rr)]
        return await post(session, f"{url}/prompt", {**body, "prompt_id": f"rr-{index}"})

    start = time.time() + 0.5
    limit = length + 30
    proxied_ids, rr_ids = await asyncio.gather(
        play(trace, start, via_proxy, limit), play(trace, start, round_robin, limit)
    )
    await idle(pool_proxy + pool_rr, 60)
    proxied = outcome(proxied_ids, await jobs(pool_proxy), pods)
    rr = outcome(rr_ids, await jobs(pool_rr), pods)

    # The offline models, on the arrivals and the service times measured through the proxy.
    indices = sorted(i for i in proxied["waits"] if i in rr["waits"])
    arrivals = [trace.arrivals[i] for i in indices]
    services = [proxied["services"][i] for i in indices]
    models = {
        name: summary(model(arrivals, services, pods))
        for name, model in (
            ("ideal", queueing.central_fifo),
            ("least_outstanding_model", queueing.least_outstanding),
            ("round_robin_model", queueing.round_robin),
        )
    }
    mean_service = statistics.fmean(services) if services else float("nan")
    return {
        "trace": {
            "seconds": length,
            "pods": pods,
            "prompts": len(trace.arrivals),
            "step_seconds": STEP_SECONDS,
            "mean_nominal_seconds": queueing.mean_steps() * STEP_SECONDS,
            "mean_measured_seconds": mean_service,
            "utilization": sum(services) / (pods * length) if services else float("nan"),
        },
        "compared": len(indices),
        "proxy": summary([proxied["waits"][i] for i in indices]),
        "round_robin": summary([rr["waits"][i] for i in indices]),
        **models,
        "proxy_response_mean": statistics.fmean(
            [proxied["waits"][i] + proxied["services"][i] for i in indices]
        ),
        "ideal_response_mean": models["ideal"]["mean"] + mean_service,
        "per_pod": {"proxy": proxied["per_pod"], "round_robin": rr["per_pod"]},
    }


def run(state_dir: Path) -> Result:
    _, pods = sizes()
    logs = state_dir / "logs"
    emulators = [
        harness.emulator(f"emulator-{pool}-{i}", state_dir / f"{pool}-{i}", logs, STEP_SECONDS)
        for pool in ("proxy", "rr")
        for i in range(pods)
    ]
    servers = list(emulators)
    with harness.running(servers):
        asyncio.run(harness.wait_ready(emulators, "/system_stats"))
        pool_proxy = [e.url for e in emulators[:pods]]
        pool_rr = [e.url for e in emulators[pods:]]
        prox = harness.static_proxy("proxy", logs, {MODEL: pool_proxy})
        servers.append(prox)
        asyncio.run(harness.wait_ready([prox], "/readyz"))
        return asyncio.run(_measure(prox.url, pool_proxy, pool_rr))


# -- report -----------------------------------------------------------------------------------


def rows(results: list[Result]) -> list[Row]:
    def m(who: str, key: str) -> float:
        return median_of(results, lambda r: r[who][key]) * 1000

    return [
        (
            "routing: mean queue wait, proxy",
            m("proxy", "mean"),
            m("ideal", "mean"),
            "ms (baseline: ideal; target ratio <= 1.2)",
        ),
        (
            "routing: p95 queue wait, proxy",
            m("proxy", "p95"),
            m("ideal", "p95"),
            "ms (baseline: ideal)",
        ),
        (
            "routing: mean queue wait, round-robin",
            m("round_robin", "mean"),
            m("ideal", "mean"),
            "ms (baseline: ideal)",
        ),
        (
            "routing: p95 queue wait, round-robin",
            m("round_robin", "p95"),
            m("ideal", "p95"),
            "ms (baseline: ideal)",
        ),
        (
            "routing: mean time to result, proxy",
            median_of(results, lambda r: r["proxy_response_mean"]) * 1000,
            median_of(results, lambda r: r["ideal_response_mean"]) * 1000,
            "ms (baseline: ideal; wait + run)",
        ),
    ]


def details(results: list[Result]) -> str:
    def m(who: str, key: str) -> str:
        return fmt(median_of(results, lambda r: r[who][key]) * 1000, 0)

    def t(key: str, scale: float = 1.0, digits: int = 2) -> str:
        return fmt(median_of(results, lambda r: r["trace"][key]) * scale, digits)

    last = results[-1] if results else {}
    return "\n".join(
        [
            f"routing: {t('prompts', digits=0)} prompts over {t('seconds', digits=0)} s on "
            f"{t('pods', digits=0)} pods (utilization {t('utilization', 100, 0)}%; a prompt "
            f"runs {t('mean_measured_seconds', 1000, 0)} ms on average, "
            f"{t('mean_nominal_seconds', 1000, 0)} ms nominal); queue wait mean/p95 in ms:",
            f"  proxy (measured)        {m('proxy', 'mean'):>6} / {m('proxy', 'p95'):>6}",
            f"  round-robin (measured)  {m('round_robin', 'mean'):>6} / "
            f"{m('round_robin', 'p95'):>6}",
            f"  ideal, central FIFO     {m('ideal', 'mean'):>6} / {m('ideal', 'p95'):>6}",
            "  offline models on the same times: least outstanding "
            f"{m('least_outstanding_model', 'mean')} / {m('least_outstanding_model', 'p95')}, "
            f"round-robin {m('round_robin_model', 'mean')} / {m('round_robin_model', 'p95')}",
            f"  prompts per pod (last run): proxy {last.get('per_pod', {}).get('proxy')}, "
            f"round-robin {last.get('per_pod', {}).get('round_robin')}",
            "  spread over runs (min-max) of the mean wait, ms: proxy "
            f"{spread(results, lambda r: r['proxy']['mean'], 1000)}, round-robin "
            f"{spread(results, lambda r: r['round_robin']['mean'], 1000)}, ideal "
            f"{spread(results, lambda r: r['ideal']['mean'], 1000)}",
        ]
    )
