"""Processes and process accounting for the benchmarks: emulated ComfyUI backends and proxies
as real processes on loopback (each in its own process group, dying with the benchmark), and
the CPU time and memory of a process read from /proc."""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from serverless_comfyui.testworld.processes import ManagedProcess, free_port

QUICK_ENV = "SERVERLESS_COMFYUI_BENCH_QUICK"
"""Set (to anything but empty or 0) by `--quick`: every benchmark runs with reduced sizes."""


def quick() -> bool:
    return os.environ.get(QUICK_ENV, "") not in ("", "0")


@dataclass
class Server:
    """A process serving HTTP on 127.0.0.1:port."""

    proc: ManagedProcess
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid


def emulator(
    name: str, data_dir: Path, logs: Path, step_seconds: float = 0.0, log_level: str = "warning"
) -> Server:
    """An emulated ComfyUI process (not waited for: see `wait_ready`)."""
    port = free_port()
    proc = ManagedProcess(
        name,
        [
            sys.executable,
            "-m",
            "serverless_comfyui.emulator",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--step-seconds",
            str(step_seconds),
            "--log-level",
            log_level,
        ],
        logs / f"{name}.log",
        env={**os.environ},
    )
    proc.start()
    return Server(proc, port)


def proxy(name: str, logs: Path, env: Mapping[str, str]) -> Server:
    """A proxy process (`python -m serverless_comfyui.proxy`) on a free loopback port; `env`
    holds SERVERLESS_COMFYUI_PROXY_* settings (its defaults otherwise, log level included)."""
    port = free_port()
    environment = {
        **os.environ,
        "SERVERLESS_COMFYUI_PROXY_HOST": "127.0.0.1",
        "SERVERLESS_COMFYUI_PROXY_PORT": str(port),
        "SERVERLESS_COMFYUI_PROXY_POD_NAME": name,
        **env,
    }
    environment.pop("KUBERNETES_SERVICE_HOST", None)
    proc = ManagedProcess(
        name, [sys.executable, "-m", "serverless_comfyui.proxy"], logs / f"{name}.log", environment
    )
    proc.start()
    return Server(proc, port)


def static_proxy(name: str, logs: Path, backends: dict[str, list[str]]) -> Server:
    return proxy(name, logs, {"SERVERLESS_COMFYUI_PROXY_STATIC_BACKENDS": json.dumps(backends)})


async def wait_ready(servers: list[Server], path: str, limit: float = 60.0) -> None:
    """Until every server answers 200 on `path` (fails early when one has died)."""
    deadline = time.monotonic() + limit
    async with aiohttp.ClientSession() as session:
        for server in servers:
            while True:
                server.proc.ensure_alive()
                try:
                    async with session.get(
                        server.url + path, timeout=aiohttp.ClientTimeout(total=2)
                    ) as answer:
                        if answer.status == 200:
                            break
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{server.proc.name} not ready after {limit:.0f}s")
                await asyncio.sleep(0.1)


@contextmanager
def running(servers: list[Server]) -> Iterator[list[Server]]:
    """Stops every server (process group) on the way out."""
    try:
        yield servers
    finally:
        for server in servers:
            server.proc.stop(grace=5)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    # after the command: state(0) ppid pgrp session tty tpgid flags minflt cminflt majflt
    # cmajflt utime(11) stime(12)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_mib(pid: int) -> dict[str, float]:
    """Resident memory now (VmRSS) and its peak so far (VmHWM), MiB."""
    found: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "VmHWM"):
            found["rss" if key == "VmRSS" else "peak"] = int(line.split()[1]) / 1024
    return found


def log_events(path: Path, event: str) -> list[dict[str, Any]]:
    """The structured log lines (JSON, one a line) of `path` whose event is `event`."""
    found = []
    for line in path.read_text(errors="replace").splitlines():
        if not line.startswith("{"):
            continue
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("event") == event:
            found.append(entry)
    return found
