"""Our own processes on the test world, run as they would run in a pod: the operator (and the
CRD it needs). Used by the tests, the benchmarks and `make up`."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from serverless_comfyui.crd.generate import CHART_PATH
from serverless_comfyui.crd.models import CRD_NAME
from serverless_comfyui.testworld.controlplane import TestWorld, http_ok
from serverless_comfyui.testworld.processes import ManagedProcess, free_port, wait_until

CRD_FILE = Path(__file__).resolve().parents[4] / CHART_PATH


def install_crd(world: TestWorld, timeout: float = 120.0) -> None:
    """The FluxWorkflow CRD from the chart, applied and Established."""
    result = world.kubectl("apply", "--server-side", "-f", str(CRD_FILE))
    if result.returncode != 0:
        raise RuntimeError(f"kubectl apply of the CRD failed: {result.stderr.strip()}")
    # Not `kubectl wait`: it fails at once while the new CRD has no status conditions yet.
    query = 'jsonpath={.status.conditions[?(@.type=="Established")].status}'

    def established() -> bool:
        return world.kubectl("get", f"crd/{CRD_NAME}", "-o", query).stdout.strip() == "True"

    wait_until(established, timeout, "the FluxWorkflow CRD to be Established")


def start_operator(
    world: TestWorld, name: str = "operator", env: dict[str, str] | None = None
) -> ManagedProcess:
    """The operator as a process, with world's admin kubeconfig unless env sets KUBECONFIG;
    returns once kopf's liveness endpoint answers. It stops with the world."""
    port = free_port()
    proc = ManagedProcess(
        name,
        [sys.executable, "-m", "serverless_comfyui.controller"],
        world.logs / f"{name}.log",
        env={
            **os.environ,
            "KUBECONFIG": str(world.kubeconfig),
            "SERVERLESS_COMFYUI_LIVENESS_ENDPOINT": f"http://127.0.0.1:{port}/healthz",
            **(env or {}),
        },
    )
    proc.start()
    world.processes.append(proc)

    def healthy() -> bool:
        proc.ensure_alive()
        return http_ok(f"http://127.0.0.1:{port}/healthz")

    wait_until(healthy, 60, f"the liveness endpoint of {name}")
    return proc
