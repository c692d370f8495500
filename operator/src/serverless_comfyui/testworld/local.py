"""`make up`: the whole product on the test world, as a newcomer would run it on a laptop.

The chart is installed with helm into the `serverless-comfyui` namespace with its operator and
proxy Deployments switched off (no container can run here); the operator and the proxy run as
host processes instead, authenticated as the chart's own ServiceAccounts, so the chart's RBAC is
exercised for real. The models claim is a hostPath volume pre-seeded with placeholder Flux
weights (there is no network to fetch the real ones), which the emulated ComfyUI pods list as
their model files.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from serverless_comfyui.testworld.components import start_operator
from serverless_comfyui.testworld.controlplane import TestWorld, http_ok
from serverless_comfyui.testworld.processes import ManagedProcess, wait_until

NAMESPACE = "serverless-comfyui"
RELEASE = "serverless-comfyui"
APP = "serverless-comfyui"  # the chart's default appName: the default FluxWorkflow
CHART = Path(__file__).resolve().parents[4] / "charts" / "serverless-comfyui"
MODELS_SUB_PATH = "apps/serverless-comfyui/models"
PLACEHOLDER_MODELS = {
    "diffusion_models": ["flux1-dev.safetensors"],
    "text_encoders": ["t5xxl_fp8_e4m3fn.safetensors", "clip_l.safetensors"],
    "vae": ["ae.safetensors"],
}
LOCAL_VALUES: dict[str, Any] = {
    "operator": {"enabled": False},
    "proxy": {"enabled": False},
    "persistence": {"existingClaim": "pvc-capacity-userdata"},
    # No network here: placeholder weights are already in the claim instead of downloads.
    "model": {"models": []},
}


def _run(world: TestWorld, *args: str, stdin: str | None = None) -> str:
    result = world.kubectl(*args, input=stdin)
    if result.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {result.stderr.strip()}")
    return result.stdout


def _claim(world: TestWorld, host_dir: Path) -> None:
    """The seed's claim, statically bound to a host folder, with placeholder Flux weights."""
    for folder, names in PLACEHOLDER_MODELS.items():
        target = host_dir / MODELS_SUB_PATH / folder
        target.mkdir(parents=True, exist_ok=True)
        for name in names:
            (target / name).write_bytes(b"placeholder: the emulator never reads weights\n")
    manifests = [
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": f"{NAMESPACE}-userdata"},
            "spec": {
                "capacity": {"storage": "200Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "hostPath": {"path": str(host_dir), "type": "DirectoryOrCreate"},
                "claimRef": {"namespace": NAMESPACE, "name": "pvc-capacity-userdata"},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": "pvc-capacity-userdata", "namespace": NAMESPACE},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": f"{NAMESPACE}-userdata",
                "resources": {"requests": {"storage": "200Gi"}},
            },
        },
    ]
    _run(
        world,
        "apply",
        "-f",
        "-",
        stdin=json.dumps({"kind": "List", "apiVersion": "v1", "items": manifests}),
    )


def _service_account_kubeconfig(world: TestWorld, component: str, out: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount for component."""
    name = _run(
        world,
        "-n",
        NAMESPACE,
        "get",
        "serviceaccount",
        "-l",
        f"app.kubernetes.io/component={component}",
        "-o",
        "jsonpath={.items[0].metadata.name}",
    ).strip()
    token = _run(world, "-n", NAMESPACE, "create", "token", name, "--duration=24h").strip()
    config = json.loads(world.kubeconfig.read_text())
    config["users"] = [{"name": name, "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = name
    config["contexts"][0]["context"]["namespace"] = NAMESPACE
    path = out / f"kubeconfig-{component}"
    path.write_text(json.dumps(config, indent=2))
    path.chmod(0o600)
    return path


def install_product(world: TestWorld, state: Path, proxy_port: int = 8080) -> dict[str, str]:
    """Installs the chart, starts the operator and proxy; returns what `make up` prints."""
    _run(world, "create", "namespace", NAMESPACE)
    _claim(world, state / "pvc-capacity-userdata")
    values = state / "values-local.yaml"
    values.write_text(yaml.safe_dump(LOCAL_VALUES))
    helm = [world.tool("helm"), f"--kubeconfig={world.kubeconfig}"]
    installed = subprocess.run(
        [*helm, "install", RELEASE, str(CHART), "-n", NAMESPACE, "-f", str(values)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if installed.returncode != 0:
        raise RuntimeError(f"helm install failed: {installed.stderr.strip()}")

    profiles = state / "resource-profiles.yaml"
    profiles.write_text(
        _run(
            world,
            "-n",
            NAMESPACE,
            "get",
            "configmap",
            "-l",
            "app.kubernetes.io/component=operator",
            "-o",
            "jsonpath={.items[0].data.profiles\\.yaml}",
        )
    )
    common = {**os.environ, "PYTHONUNBUFFERED": "1"}
    operator = start_operator(
        world,
        env={
            "KUBECONFIG": str(_service_account_kubeconfig(world, "operator", state)),
            "SERVERLESS_COMFYUI_NAMESPACES": json.dumps([NAMESPACE]),
            "SERVERLESS_COMFYUI_PROFILES_FILE": str(profiles),
            "SERVERLESS_COMFYUI_PROXY_URL": f"http://127.0.0.1:{proxy_port}",
        },
    )
    proxy = ManagedProcess(
        "proxy",
        [sys.executable, "-m", "serverless_comfyui.proxy"],
        world.logs / "proxy.log",
        env={
            **common,
            "KUBECONFIG": str(_service_account_kubeconfig(world, "proxy", state)),
            "SERVERLESS_COMFYUI_PROXY_HOST": "127.0.0.1",
            "SERVERLESS_COMFYUI_PROXY_PORT": str(proxy_port),
            "SERVERLESS_COMFYUI_PROXY_NAMESPACES": json.dumps([NAMESPACE]),
            "SERVERLESS_COMFYUI_PROXY_LEASE_NAMESPACE": NAMESPACE,
            "SERVERLESS_COMFYUI_PROXY_POD_NAME": "local-proxy",
            # The generation API's tasks and results, kept across proxy restarts.
            "SERVERLESS_COMFYUI_API_STATE_DIR": str(state / "api"),
        },
    )
    proxy.start()
    world.processes.append(proxy)

    def ready() -> bool:
        operator.ensure_alive()
        proxy.ensure_alive()
        return http_ok(f"http://127.0.0.1:{proxy_port}/readyz")

    wait_until(ready, 90, "the proxy")
    phase_path = "jsonpath={.status.phase}"
    deadline = time.monotonic() + 60
    while _run(world, "-n", NAMESPACE, "get", f"fluxworkflow/{APP}", "-o", phase_path) != (
        "ScaledToZero"
    ):
        if time.monotonic() > deadline:
            raise TimeoutError(f"FluxWorkflow {APP} did not reach ScaledToZero")
        time.sleep(0.5)
    return {"proxy": f"http://127.0.0.1:{proxy_port}", "namespace": NAMESPACE, "model": APP}
