"""ComfyUI backends for tests: the real ComfyUI 0.8.0 (`make comfyui-env`, on CPU) or the
emulator, each started the way a pod starts it, by our image entrypoint, and a proxy in static
mode in front. The same tests then run against both, so the emulator's faithfulness is checked
against the real thing on every path they cover."""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from serverless_comfyui.testworld.controlplane import http_ok
from serverless_comfyui.testworld.processes import ManagedProcess, free_port, wait_until
from serverless_comfyui.testworld.realcomfy import (
    MissingComfyUIError,
    find_comfyui_home,
    real_comfyui_args,
)

# ComfyUI imports torch and scans its nodes before it listens: 25 s on an idle 2-core machine,
# minutes on a loaded one. The limit only stops a broken start.
REAL_START_SECONDS = 600.0


@dataclass
class Backend:
    kind: str
    comfy_url: str
    health_url: str
    data_dir: Path
    process: ManagedProcess


@dataclass
class Stack:
    backend: Backend
    proxy_url: str
    model: str


def _ok(url: str, process: ManagedProcess) -> bool:
    process.ensure_alive()  # a process that died fails the wait at once
    return http_ok(url)


def comfyui_command(kind: str, port: int, data_dir: Path) -> list[str]:
    if kind == "real":
        try:
            home = find_comfyui_home()
        except MissingComfyUIError as exc:
            pytest.fail(str(exc), pytrace=False)
        mounts = {f"/opt/ComfyUI/{d}": data_dir / d for d in ("input", "output", "user")}
        for folder in mounts.values():
            folder.mkdir(parents=True, exist_ok=True)
        return real_comfyui_args(home, "127.0.0.1", port, data_dir, mounts)
    return [
        sys.executable, "-m", "serverless_comfyui.emulator", "--host=127.0.0.1", f"--port={port}",
        f"--data-dir={data_dir}", "--step-seconds=0.05",
    ]  # fmt: skip


@contextlib.contextmanager
def start_backend(kind: str, data_dir: Path) -> Iterator[Backend]:
    """ComfyUI under the image entrypoint (no warm-up workflow: ready once ComfyUI answers)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    port, health = free_port(), free_port()
    env = {
        **os.environ,
        "COMFYUI_COMMAND": shlex.join(comfyui_command(kind, port, data_dir)),
        "COMFYUI_PORT": str(port),
        "COMFYUI_URL": f"http://127.0.0.1:{port}",
        "HEALTH_HOST": "127.0.0.1",
        "HEALTH_PORT": str(health),
        "STARTUP_TIMEOUT_SECONDS": str(REAL_START_SECONDS),
    }
    process = ManagedProcess(
        f"comfyui-{kind}",
        [sys.executable, "-m", "serverless_comfyui.entrypoint"],
        data_dir / "entrypoint.log",
        env,
    )
    process.start()
    try:
        health_url = f"http://127.0.0.1:{health}"
        wait_until(
            lambda: _ok(f"{health_url}/readyz", process), REAL_START_SECONDS, f"{kind} ComfyUI"
        )
        yield Backend(kind, f"http://127.0.0.1:{port}", health_url, data_dir, process)
    finally:
        process.stop(grace=30)


@contextlib.contextmanager
def proxy_in_front(backend: Backend, log_dir: Path, model: str = "comfy") -> Iterator[Stack]:
    port = free_port()
    env = {
        **os.environ,
        "SERVERLESS_COMFYUI_PROXY_HOST": "127.0.0.1",
        "SERVERLESS_COMFYUI_PROXY_PORT": str(port),
        "SERVERLESS_COMFYUI_PROXY_STATIC_BACKENDS": json.dumps({model: [backend.comfy_url]}),
        "SERVERLESS_COMFYUI_PROXY_HOLD_TIMEOUT_SECONDS": "60",
        "SERVERLESS_COMFYUI_API_STORE_URL": f"file://{log_dir / 'api-store'}",
        "SERVERLESS_COMFYUI_API_RESULTS_DIR": str(log_dir / "api-results"),
    }
    proxy = ManagedProcess(
        "proxy", [sys.executable, "-m", "serverless_comfyui.proxy"], log_dir / "proxy.log", env
    )
    proxy.start()
    try:
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: _ok(f"{url}/readyz", proxy), 60, "the proxy's readiness")
        yield Stack(backend, url, model)
    finally:
        proxy.stop(grace=10)
