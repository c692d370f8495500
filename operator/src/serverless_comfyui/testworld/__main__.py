"""`python -m serverless_comfyui.testworld up|down|serve --state-dir .local`: run the test world
in the background for local use (`make up` / `make down`)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from serverless_comfyui.testworld.controlplane import TestWorld
from serverless_comfyui.testworld.processes import group_alive, kill_group

# `make up` uses its own pod range so that it can run beside a test session (127.66.0.0/16).
LOCAL_POD_CIDR = "127.64.0.0/16"


def _pid_file(state: Path) -> Path:
    return state / "world.pid"


def _running_pid(state: Path) -> int | None:
    try:
        pid = int(_pid_file(state).read_text())
    except (OSError, ValueError):
        return None
    return pid if group_alive(pid) else None


def serve(state: Path) -> int:
    """Foreground: start the world, publish the kubeconfig, stop everything on SIGTERM/SIGINT."""
    world = TestWorld(state_dir=state / "world", pod_cidr=LOCAL_POD_CIDR)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    world.start()
    (state / "kubeconfig").write_text(world.kubeconfig.read_text())
    (state / "kubeconfig").chmod(0o600)
    (state / "ready").write_text(json.dumps({"server": world.server}))
    try:
        while not stop.wait(1.0):
            world.check_alive()
    finally:
        world.stop()
        (state / "ready").unlink(missing_ok=True)
    return 0


def up(state: Path) -> int:
    state.mkdir(parents=True, exist_ok=True)
    if _running_pid(state):
        print(f"the test world is already running (kubeconfig: {state / 'kubeconfig'})")
        return 0
    (state / "ready").unlink(missing_ok=True)
    log = (state / "world.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "serverless_comfyui.testworld", "serve", f"--state-dir={state}"],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _pid_file(state).write_text(str(proc.pid))
    deadline = time.monotonic() + 180
    while not (state / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            print(
                f"error: the test world did not start; see {state / 'world.log'}", file=sys.stderr
            )
            kill_group(proc.pid)
            return 1
        time.sleep(0.5)
    server = json.loads((state / "ready").read_text())["server"]
    print(
        f"""
The test world is up (a real Kubernetes {server} control plane on loopback).
  kubeconfig:  {state.resolve() / "kubeconfig"}
  try:         export KUBECONFIG={state / "kubeconfig"}
               .tools/bin/kubectl get nodes -L nvidia.com/gpu.product

SIMULATED: the GPU nodes are KWOK fakes (gpu-h100-0, gpu-h800-0 with 8 x nvidia.com/gpu each,
cpu-0) and every pod labelled app.kubernetes.io/component=comfyui is served by a ComfyUI emulator
on its loopback pod IP ({LOCAL_POD_CIDR}). No GPU and no container runs.
Stop it with `make down`.
"""
    )
    return 0


def down(state: Path) -> int:
    pid = _running_pid(state)
    if pid is None:
        print("the test world is not running")
        return 0
    kill_group(pid, grace=30)
    _pid_file(state).unlink(missing_ok=True)
    print("the test world is stopped")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless_comfyui.testworld")
    parser.add_argument("command", choices=["up", "down", "serve"])
    parser.add_argument("--state-dir", default=".local", type=Path)
    args = parser.parse_args()
    state = args.state_dir.resolve()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    return {"up": up, "down": down, "serve": serve}[args.command](state)


if __name__ == "__main__":
    sys.exit(main())
