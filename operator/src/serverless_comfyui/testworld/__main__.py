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
from dataclasses import dataclass
from pathlib import Path

from serverless_comfyui.testworld import realchart
from serverless_comfyui.testworld.controlplane import TestWorld
from serverless_comfyui.testworld.local import install_product
from serverless_comfyui.testworld.processes import group_alive, kill_group

# `make up` uses its own pod range so that it can run beside a test session (127.66.0.0/16).
LOCAL_POD_CIDR = "127.64.0.0/16"


PRODUCT_BANNER = """
serverless-comfyui is up: the chart is installed in namespace {namespace}; the operator and the
proxy run as local processes with the chart's ServiceAccounts (logs: {state}/world/logs/).

  proxy:       {proxy}
  model:       {model}   (the default FluxWorkflow, scaled to zero)
  wake it:     curl -X GET {proxy}/openai/api/system_stats -d '{{"model": "{model}"}}'
  an image:    bash scripts/generate.sh "a lighthouse at dusk" out.png
  or one call: curl -s {proxy}/v1/generate -H 'Content-Type: application/json' \\
                 -d '{{"model": "{model}", "prompt": "a lighthouse at dusk"}}'
               (JSON with the seed, timings and the PNG in results[0].base64; docs: {proxy}/v1/docs)
"""


def _pid_file(state: Path) -> Path:
    return state / "world.pid"


def _running_pid(state: Path) -> int | None:
    try:
        pid = int(_pid_file(state).read_text())
    except (OSError, ValueError):
        return None
    return pid if group_alive(pid) else None


@dataclass(frozen=True)
class Options:
    product: bool = True
    proxy_port: int = 8080
    pod_cidr: str = LOCAL_POD_CIDR
    real_nodes: int = 0
    real: bool = False
    """The product on a real node (realchart.py), instead of host processes beside emulators."""

    def args(self) -> list[str]:
        return [
            f"--proxy-port={self.proxy_port}",
            f"--pod-cidr={self.pod_cidr}",
            f"--real-nodes={self.real_nodes}",
            *([] if self.product else ["--world-only"]),
            *(["--real"] if self.real else []),
        ]


def _install(world: TestWorld, state: Path, options: Options) -> dict[str, str]:
    if not options.real:
        return install_product(world, state, options.proxy_port)
    release = realchart.install(world, state, realchart.RELEASE)
    proxy = release.proxy_url()
    return {
        "proxy": proxy,
        "namespace": release.namespace,
        "model": realchart.APP,
        "ui": f"{proxy}/ui/{realchart.APP}/",
    }


REAL_BANNER = """
serverless-comfyui is up on a real node: the chart is installed in namespace {namespace} with
the images `make images` built; the operator, the proxy and ComfyUI run as containers
(`kubectl -n {namespace} get pods -o wide`). ComfyUI runs on CPU (no GPU here).

  proxy:       {proxy}   (the proxy pod's IP, routed from this machine)
  model:       {model}   (the default FluxWorkflow, scaled to zero; its workflow needs no weights)
  web UI:      {ui}   (the first visit starts ComfyUI: about a minute)
  an image:    curl -s {proxy}/v1/generate -H 'Content-Type: application/json' \\
                 -d '{{"model": "{model}"}}'   (JSON; the PNG is in results[0].base64)
"""


def serve(state: Path, options: Options) -> int:
    """Foreground: start the world (and the product on it), publish the kubeconfig, stop
    everything on SIGTERM/SIGINT."""
    real_nodes = max(options.real_nodes, 1 if options.real else 0)
    world = TestWorld(state_dir=state / "world", pod_cidr=options.pod_cidr, real_nodes=real_nodes)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    world.start()
    (state / "kubeconfig").write_text(world.kubeconfig.read_text())
    (state / "kubeconfig").chmod(0o600)
    info: dict[str, str] = {"server": world.server}
    if world.nodes:
        info["realNodes"] = ", ".join(
            f"{n.name} (node IP {n.network.node_ip}, pods {n.network.pod_cidr})"
            for n in world.nodes
            if n.network is not None
        )
    if options.product:
        try:
            info |= _install(world, state, options)
        except BaseException:
            world.stop()
            raise
    (state / "ready").write_text(json.dumps(info))
    try:
        while not stop.wait(1.0):
            world.check_alive()
    finally:
        world.stop()
        (state / "ready").unlink(missing_ok=True)
    return 0


def up(state: Path, options: Options) -> int:
    state.mkdir(parents=True, exist_ok=True)
    if _running_pid(state):
        print(f"the test world is already running (kubeconfig: {state / 'kubeconfig'})")
        return 0
    (state / "ready").unlink(missing_ok=True)
    log = (state / "world.log").open("ab")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "serverless_comfyui.testworld",
            "serve",
            f"--state-dir={state}",
            *options.args(),
        ],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    _pid_file(state).write_text(str(proc.pid))
    # A real node imports the images (the ComfyUI one is ~7 GB) before the chart's pods start.
    deadline = time.monotonic() + (900 if options.real else 180)
    while not (state / "ready").exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            print(
                f"error: the test world did not start; see {state / 'world.log'}", file=sys.stderr
            )
            kill_group(proc.pid)
            return 1
        time.sleep(0.5)
    info = json.loads((state / "ready").read_text())
    server = info["server"]
    real = info.get("realNodes")
    simulated = (
        "SIMULATED: the GPU nodes are KWOK fakes (gpu-h100-0, gpu-h800-0 with 8 x nvidia.com/gpu"
        " each, cpu-0)\nand every pod labelled app.kubernetes.io/component=comfyui on them is"
        f" served by a ComfyUI emulator\non its loopback pod IP ({options.pod_cidr})."
        + (
            " No GPU runs; containers run on the real nodes only."
            if real
            else " No GPU and no container runs."
        )
    )
    if "ui" in info:
        print(REAL_BANNER.format(state=state, **info))
    elif "proxy" in info:
        print(PRODUCT_BANNER.format(state=state, **info))
    print(
        f"""
The test world is up (a real Kubernetes {server} control plane on loopback).
  kubeconfig:  {state.resolve() / "kubeconfig"}
  try:         export KUBECONFIG={state / "kubeconfig"}
               .tools/bin/kubectl get nodes -L nvidia.com/gpu.product

{simulated}
Stop it with `make down`.
"""
    )
    if real:
        print(f"REAL: kubelet nodes with containerd + runc (fake nvidia.com/gpu): {real}")
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
    parser.add_argument(
        "--world-only", action="store_true", help="the control plane only, without the product"
    )
    parser.add_argument("--proxy-port", type=int, default=8080)
    parser.add_argument("--pod-cidr", default=LOCAL_POD_CIDR)
    parser.add_argument(
        "--real-nodes",
        type=int,
        default=0,
        help="also start N real kubelet nodes (containerd + runc, in network namespaces)",
    )
    parser.add_argument(
        "--real",
        action="store_true",
        help="the chart on a real node with the images `make images` built (real ComfyUI)",
    )
    args = parser.parse_args()
    state = args.state_dir.resolve()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    if args.command == "down":
        return down(state)
    options = Options(
        not args.world_only, args.proxy_port, args.pod_cidr, args.real_nodes, args.real
    )
    return (up if args.command == "up" else serve)(state, options)


if __name__ == "__main__":
    sys.exit(main())
