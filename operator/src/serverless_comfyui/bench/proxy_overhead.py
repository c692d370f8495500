"""What the proxy adds to a request: the same requests sent straight to an emulated ComfyUI and
through the proxy (static mode, its own process, default settings: info logs of every request
included) in front of that same emulator.

Request kinds, each measured on its own (so that the emulator's queue, whose listing is the
answer of GET /queue, is the same empty one for both paths):

- `queue`: GET /api/queue (a small GET; the proxy merges the answers of every serving pod);
- `prompt`: POST /api/prompt with a ~20 KB Flux graph (a long prompt text; the proxy parses it,
  mints the id and rewrites `filename_prefix`); the emulator validates and queues it, and runs
  it in a few milliseconds (every node but SaveImage is cached);
- `view`: GET /api/view of a 1.5 MB PNG (the proxy streams it through);
- and, at c=32 only, `stats`: GET /api/system_stats (a small GET the proxy relays as a stream).

Closed loop at concurrency 1, 8 and 32: latency p50/p99 per path, added latency (proxied minus
direct, per percentile), throughput per path; each comparison runs in four blocks, direct,
proxied, proxied, direct, so that a drift of the machine weighs on both paths alike. Open loop
at a fixed 500 requests/s of GET /api/queue for 6 s (latency counted from each request's
scheduled send time, so a stall is not hidden by the client waiting): the p50/p99 target. The
proxy's CPU time (/proc) during the c=32 small-GET phases gives requests per proxy CPU-second,
i.e. what one core would carry; its memory (VmRSS idle, VmHWM peak under the load) is read
from /proc too. Client, proxy and emulator share the machine's cores, so closed-loop
throughput says more about the machine than about the proxy; the CPU shares are recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from PIL import Image

from serverless_comfyui.bench import harness
from serverless_comfyui.bench.report import Result, Row, fmt, median_of, spread
from serverless_comfyui.bench.stats import summary
from serverless_comfyui.workflows.library import default_workflows_dir

MODEL = "bench"
KINDS = ("queue", "prompt", "view")
CONCURRENCY = (1, 8, 32)
VIEW_FILE = "bench-1.5mb.png"
PROMPT_BYTES = 20_000
OPEN_LOOP_RATE = 500.0
WARMUP = 0.5
"""Seconds at the start of an open-loop run that are not counted."""


@dataclass(frozen=True)
class Sizes:
    counts: dict[str, int]
    """Requests per (kind, concurrency, path)."""
    open_loop_seconds: float


def sizes() -> Sizes:
    if harness.quick():
        return Sizes({"queue": 300, "prompt": 60, "view": 40}, 2.0)
    return Sizes({"queue": 1500, "prompt": 300, "view": 200}, 6.0)


# -- requests ---------------------------------------------------------------------------------


def write_png(path: Path, size_bytes: int = 1_500_000) -> int:
    """An incompressible RGB PNG of about size_bytes (random pixels, fixed seed)."""
    side = int((size_bytes / 3) ** 0.5)
    pixels = random.Random(0).randbytes(side * side * 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.frombytes("RGB", (side, side), pixels).save(path, format="PNG", compress_level=1)
    return path.stat().st_size


def prompt_template(size: int = PROMPT_BYTES) -> str:
    """The body of POST /prompt as JSON text, with `@PREFIX@` where each request puts its own
    filename_prefix: Flux schnell with a prompt text padding the body to about `size` bytes."""
    graph: dict[str, Any] = json.loads(
        (default_workflows_dir() / "flux_schnell" / "workflow.json").read_text()
    )
    for node in graph.values():
        if node["class_type"] == "SaveImage":
            node["inputs"]["filename_prefix"] = "@PREFIX@"
    text_node = next(n for n in graph.values() if n["class_type"] == "CLIPTextEncode")
    text_node["inputs"]["text"] = ""
    bare = len(json.dumps({"prompt": graph}))
    words = "a lighthouse at dusk, volumetric light, film grain, "
    text_node["inputs"]["text"] = (words * (size // len(words) + 1))[: max(0, size - bare)]
    return json.dumps({"prompt": graph})


@dataclass
class Target:
    """Where a run sends its requests: a base URL, headers and bodies."""

    base: str
    template: str
    headers: dict[str, str]
    prefix: str

    def request(self, kind: str, n: int) -> tuple[str, str, bytes | None]:
        if kind == "queue":
            return "GET", f"{self.base}/api/queue", None
        if kind == "stats":
            return "GET", f"{self.base}/api/system_stats", None
        if kind == "view":
            return "GET", f"{self.base}/api/view?filename={VIEW_FILE}&type=output", None
        # A folder of its own per prompt (as the proxy makes it): saving never scans a big one.
        body = self.template.replace("@PREFIX@", f"{self.prefix}-{n}/image")
        return "POST", f"{self.base}/api/prompt", body.encode()


async def one(session: aiohttp.ClientSession, target: Target, kind: str, n: int) -> int:
    method, url, body = target.request(kind, n)
    headers = {**target.headers, "Content-Type": "application/json"} if body else target.headers
    async with session.request(method, url, data=body, headers=headers) as answer:
        size = 0
        async for chunk in answer.content.iter_any():
            size += len(chunk)
        if answer.status != 200:
            raise RuntimeError(f"{method} {url}: {answer.status}")
        return size


def connector(limit: int) -> aiohttp.TCPConnector:
    return aiohttp.TCPConnector(limit=limit, keepalive_timeout=30)


@dataclass
class Phase:
    """Closed-loop measurements of one path, possibly over several blocks."""

    latencies: list[float]
    seconds: float = 0.0
    requests: int = 0
    warmups: int = 0
    client_cpu_seconds: float = 0.0

    def result(self) -> dict[str, Any]:
        return {
            **summary(self.latencies),
            "seconds": self.seconds,
            "per_second": self.requests / self.seconds,
            "sent_with_warmups": self.requests + self.warmups,
            "client_cpu_seconds": self.client_cpu_seconds,
        }


async def closed_loop(target: Target, kind: str, concurrency: int, count: int, into: Phase) -> None:
    """`count` requests from `concurrency` workers, each sending its next as soon as the last
    is answered (after 2 warm-up requests per worker, not counted); added to `into`."""
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector(concurrency), timeout=timeout) as s:
        base = -1 - into.requests - 2 * concurrency  # warm-up prompts get names of their own
        await asyncio.gather(*(one(s, target, kind, base - i) for i in range(2 * concurrency)))
        counter = iter(range(into.requests, into.requests + count))

        async def worker() -> None:
            for n in counter:
                started = time.perf_counter()
                await one(s, target, kind, n)
                into.latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        client_cpu = time.process_time()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        into.seconds += time.perf_counter() - started
        into.client_cpu_seconds += time.process_time() - client_cpu
        into.requests += count
        into.warmups += 2 * concurrency


async def open_loop(target: Target, rate: float, seconds: float) -> dict[str, Any]:
    """GET /queue at a fixed rate; each latency counts from the request's scheduled time."""
    latencies: list[float] = []
    late: list[float] = []
    errors = 0
    total = int(rate * (seconds + WARMUP))
    timeout = aiohttp.ClientTimeout(total=30)
    async with aiohttp.ClientSession(connector=connector(256), timeout=timeout) as session:
        await one(session, target, "queue", -1)
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.05
        tasks: set[asyncio.Task[None]] = set()

        async def send(n: int, due: float) -> None:
            nonlocal errors
            late.append(loop.time() - due)
            try:
                await one(session, target, "queue", n)
            except (aiohttp.ClientError, RuntimeError, TimeoutError):
                errors += 1
                return
            if n >= rate * WARMUP:
                latencies.append(loop.time() - due)

        for n in range(total):
            due = start + n / rate
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if len(tasks) > 2000:
                break  # the server fell far behind: stop adding load (counted as not sent)
            task = asyncio.create_task(send(n, due))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30)
        elapsed = loop.time() - start
    return {
        **summary(latencies),
        "sent": len(late),
        "planned": total,
        "errors": errors,
        "achieved_per_second": len(late) / elapsed,
        "send_late_p99": summary(late)["p99"],
    }


async def drain_queue(url: str, limit: float = 60.0) -> None:
    """Until the emulator has no prompt queued or running."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            async with session.get(f"{url}/prompt") as answer:
                info = await answer.json()
            if info["exec_info"]["queue_remaining"] == 0:
                return
            await asyncio.sleep(0.1)
    raise TimeoutError("the emulator's queue did not drain")


# -- the benchmark ----------------------------------------------------------------------------


async def _measure(emu: harness.Server, prox: harness.Server, size: Sizes) -> Result:
    template = prompt_template()
    headers = {"X-Model": MODEL}
    targets = {
        "direct": Target(emu.url, template, headers, "direct"),
        "proxied": Target(prox.url, template, headers, "proxied"),
    }
    memory_idle = harness.memory_mib(prox.pid)
    pids = {"proxy": prox.pid, "emulator": emu.pid}

    async def compare(kind: str, concurrency: int, count: int) -> dict[str, Any]:
        """Both paths, in blocks ordered direct, proxied, proxied, direct: a drift of the
        machine (or of the emulator's growing history) weighs on both alike."""
        phases = {path: Phase([]) for path in targets}
        used = {path: {"proxy": 0.0, "emulator": 0.0} for path in targets}
        for path in ("direct", "proxied", "proxied", "direct"):
            before = {who: harness.cpu_seconds(pid) for who, pid in pids.items()}
            await closed_loop(targets[path], kind, concurrency, count // 2, phases[path])
            for who, pid in pids.items():
                used[path][who] += harness.cpu_seconds(pid) - before[who]
            if kind == "prompt":
                await drain_queue(emu.url)
        return {
            path: {**phase.result(), **{f"{who}_cpu_seconds": v for who, v in used[path].items()}}
            for path, phase in phases.items()
        }

    closed: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
    for concurrency in CONCURRENCY:
        for kind in KINDS:
            closed[kind][str(concurrency)] = await compare(kind, concurrency, size.counts[kind])
    top = CONCURRENCY[-1]
    relayed = await compare("stats", top, size.counts["queue"])
    memory_loaded = harness.memory_mib(prox.pid)
    await asyncio.sleep(0.5)
    open_results = {}
    for path, target in targets.items():
        open_results[path] = await open_loop(target, OPEN_LOOP_RATE, size.open_loop_seconds)
    queue = closed["queue"][str(top)]["proxied"]
    cpu = {
        "proxy": queue["proxy_cpu_seconds"] / queue["seconds"],
        "emulator": queue["emulator_cpu_seconds"] / queue["seconds"],
        "client": queue["client_cpu_seconds"] / queue["seconds"],
    }

    def per_cpu_second(phase: dict[str, Any]) -> float:
        return float(phase["sent_with_warmups"] / phase["proxy_cpu_seconds"])

    return {
        "closed": closed,
        "relayed_small_get": relayed,
        "open_loop": {"rate": OPEN_LOOP_RATE, "seconds": size.open_loop_seconds, **open_results},
        "small_gets_per_proxy_cpu_second": per_cpu_second(queue),
        "relayed_gets_per_proxy_cpu_second": per_cpu_second(relayed["proxied"]),
        "cpu_share_queue_c32_proxied": cpu,
        "proxy_memory_mib": {
            "idle_rss": memory_idle["rss"],
            "loaded_rss": memory_loaded["rss"],
            "peak": harness.memory_mib(prox.pid)["peak"],
        },
        "sizes": {"counts": size.counts, "prompt_bytes": len(template)},
        "cores": os.cpu_count(),
    }


def run(state_dir: Path) -> Result:
    data = state_dir / "emulator"
    png_bytes = write_png(data / "output" / VIEW_FILE)
    logs = state_dir / "logs"
    emu = harness.emulator("emulator", data, logs)
    servers = [emu]
    with harness.running(servers):
        asyncio.run(harness.wait_ready([emu], "/system_stats"))
        prox = harness.static_proxy("proxy", logs, {MODEL: [emu.url]})
        servers.append(prox)
        asyncio.run(harness.wait_ready([prox], "/readyz"))
        result = asyncio.run(_measure(emu, prox, sizes()))
    result["view_bytes"] = png_bytes
    return result


# -- report -----------------------------------------------------------------------------------


def _q(kind: str, c: int, path: str, key: str) -> Callable[[Result], float]:
    return lambda r: float(r["closed"][kind][str(c)][path][key])


def _added(kind: str, c: int, key: str) -> Callable[[Result], float]:
    return lambda r: _q(kind, c, "proxied", key)(r) - _q(kind, c, "direct", key)(r)


def _open(path: str, key: str) -> Callable[[Result], float]:
    return lambda r: float(r["open_loop"][path][key])


def _open_added(key: str) -> Callable[[Result], float]:
    return lambda r: _open("proxied", key)(r) - _open("direct", key)(r)


LABEL = {
    "queue": "GET /api/queue",
    "prompt": "POST /api/prompt 20KB",
    "view": "GET /api/view 1.5MB",
}


def rows(results: list[Result]) -> list[Row]:
    def m(value: Callable[[Result], float], scale: float = 1.0) -> float:
        return median_of(results, value) * scale

    out: list[Row] = [
        (
            "proxy: added p50, GET queue open loop 500/s",
            m(_open_added("p50"), 1000),
            None,
            "ms (target <= 1)",
        ),
        (
            "proxy: added p99, GET queue open loop 500/s",
            m(_open_added("p99"), 1000),
            None,
            "ms (target <= 5)",
        ),
        (
            "proxy: p99, GET queue open loop 500/s",
            m(_open("proxied", "p99"), 1000),
            m(_open("direct", "p99"), 1000),
            "ms (baseline: direct)",
        ),
    ]
    for kind in KINDS:
        for key in ("p50", "p99"):
            out.append(
                (
                    f"proxy: {LABEL[kind]} c=1 {key}",
                    m(_q(kind, 1, "proxied", key), 1000),
                    m(_q(kind, 1, "direct", key), 1000),
                    "ms (baseline: direct)",
                )
            )
    top = CONCURRENCY[-1]
    for kind in KINDS:
        out.append(
            (
                f"proxy: {LABEL[kind]} c={top} throughput",
                m(_q(kind, top, "proxied", "per_second")),
                m(_q(kind, top, "direct", "per_second")),
                "req/s (baseline: direct)",
            )
        )
    out += [
        (
            "proxy: small GETs per proxy CPU-second, queue",
            m(lambda r: r["small_gets_per_proxy_cpu_second"]),
            None,
            "req/s (target >= 4000)",
        ),
        (
            "proxy: small GETs per proxy CPU-second, stats",
            m(lambda r: r["relayed_gets_per_proxy_cpu_second"]),
            None,
            "req/s (target >= 4000)",
        ),
        (
            f"proxy: GET /api/system_stats c={top} throughput",
            m(lambda r: r["relayed_small_get"]["proxied"]["per_second"]),
            m(lambda r: r["relayed_small_get"]["direct"]["per_second"]),
            "req/s (baseline: direct)",
        ),
        (
            "proxy: resident memory, idle",
            m(lambda r: r["proxy_memory_mib"]["idle_rss"]),
            None,
            "MiB",
        ),
        (
            "proxy: resident memory, peak under load",
            m(lambda r: r["proxy_memory_mib"]["peak"]),
            None,
            "MiB",
        ),
    ]
    return out


def details(results: list[Result]) -> str:
    def m(value: Callable[[Result], float], scale: float = 1000.0) -> str:
        return fmt(median_of(results, value) * scale)

    lines = [
        "proxy overhead, closed loop (medians over runs; ms; added = proxied - direct):",
        f"  {'request':24} {'c':>3} {'p50 direct':>10} {'added':>7} {'p99 direct':>10} "
        f"{'added':>7} {'req/s direct':>12} {'proxied':>8} {'ratio':>6}",
    ]
    for kind in KINDS:
        for c in CONCURRENCY:
            direct = median_of(results, _q(kind, c, "direct", "per_second"))
            proxied = median_of(results, _q(kind, c, "proxied", "per_second"))
            lines.append(
                f"  {LABEL[kind]:24} {c:>3} {m(_q(kind, c, 'direct', 'p50')):>10} "
                f"{m(_added(kind, c, 'p50')):>7} {m(_q(kind, c, 'direct', 'p99')):>10} "
                f"{m(_added(kind, c, 'p99')):>7} {fmt(direct, 0):>12} {fmt(proxied, 0):>8} "
                f"{fmt(proxied / direct):>6}"
            )
    share = "cpu_share_queue_c32_proxied"
    lines.append(
        f"  open loop {OPEN_LOOP_RATE:.0f}/s GET queue: direct p50/p99 "
        f"{m(_open('direct', 'p50'))}/{m(_open('direct', 'p99'))} ms, proxied "
        f"{m(_open('proxied', 'p50'))}/{m(_open('proxied', 'p99'))} ms, achieved "
        f"{m(_open('proxied', 'achieved_per_second'), 1)} req/s"
    )
    lines.append(
        "  cores busy during GET queue c=32 through the proxy (of "
        f"{os.cpu_count()}): proxy {m(lambda r: r[share]['proxy'], 1)}, emulator "
        f"{m(lambda r: r[share]['emulator'], 1)}, client {m(lambda r: r[share]['client'], 1)}"
        " -- the load generator and the emulator share the cores with the proxy, which runs at"
        " its default log level (a JSON line per request)"
    )
    added = {key: spread(results, _open_added(key), 1000) for key in ("p50", "p99")}
    lines.append(
        f"  spread over runs (min-max): open-loop added p50 {added['p50']} ms, p99 "
        f"{added['p99']} ms; small GETs per proxy CPU-second: queue "
        f"{spread(results, lambda r: r['small_gets_per_proxy_cpu_second'])}, stats "
        f"{spread(results, lambda r: r['relayed_gets_per_proxy_cpu_second'])}"
    )
    return "\n".join(lines)
