"""The chart as users install it, on the world's real node (`make up REAL=1` and
tests/integration/test_real_node_chart.py): the images `make images` built, imported into the
node's containerd (pods never pull), a namespace that enforces the `restricted` Pod Security
Standard, the models claim as a hostPath volume of a host folder, and `helm install` with
tests/fixtures/chart/real-node.yaml (every pod on the real node; a CPU workflow, no weights).

The operator and the proxy run as pods: they find the apiserver at the `kubernetes` Service's
ClusterIP, which the node's forwarder answers (netns.py). The host reaches the proxy pod at its
pod IP, through the world's route into the node's namespace."""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serverless_comfyui.testworld.controlplane import TestWorld
from serverless_comfyui.testworld.images import ImageBuildError, cache_root, import_image
from serverless_comfyui.testworld.processes import wait_until
from serverless_comfyui.testworld.realnode import RealNode

REPO = Path(__file__).resolve().parents[4]
CHART = REPO / "charts" / "serverless-comfyui"
BUILD = REPO / "images" / "build.sh"
VALUES = REPO / "tests" / "fixtures" / "chart" / "real-node.yaml"
IMAGES = ("controller", "comfyui", "devpod")
RELEASE = "scui"
APP = "real"  # appName in real-node.yaml
CLAIM = "models"
MODELS_SUB_PATH = "apps/serverless-comfyui/models"  # the chart's default for model.volumeMounts
IMAGE_UID = 1000  # the images' user (and the operator's pods' runAsUser)


@dataclass
class RealRelease:
    """The chart installed on a real node."""

    world: TestWorld
    node: RealNode
    namespace: str
    claim_dir: Path
    timings: dict[str, float] = field(default_factory=dict)

    def kubectl(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.world.kubectl("-n", self.namespace, *args, input=input)

    def pod(self, component: str) -> dict[str, Any] | None:
        """The first Ready pod of a component of the release, if any."""
        done = self.kubectl(
            "get", "pods", "-l", f"app.kubernetes.io/component={component}", "-o", "json"
        )
        for pod in json.loads(done.stdout or "{}").get("items", []):
            conditions = pod.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                return dict(pod)
        return None

    def has_ready_pod(self, component: str) -> bool:
        return self.pod(component) is not None

    def diagnose(self) -> str:
        """Pods, events and the last log lines of every pod that is not Ready: what a failed
        wait reports (the node's files go with the world)."""
        lines = [self.kubectl("get", "pods,jobs", "-o", "wide").stdout]
        status = self.kubectl("get", "fluxworkflows", "-o", "jsonpath={.items[*].status}")
        lines.append(f"FluxWorkflow status: {status.stdout}")
        lines.append(self.kubectl("get", "events", "--sort-by=.lastTimestamp").stdout[-3000:])
        pods = json.loads(self.kubectl("get", "pods", "-o", "json").stdout or "{}")
        for pod in pods.get("items", []):
            name = pod["metadata"]["name"]
            conditions = pod.get("status", {}).get("conditions", [])
            if any(c["type"] == "Ready" and c["status"] == "True" for c in conditions):
                continue
            for previous in ("--previous=true", "--previous=false"):
                logs = self.kubectl("logs", name, "--all-containers", "--tail=30", previous)
                lines.append(f"--- {name} ({previous}):\n{logs.stdout}{logs.stderr}")
        return "\n".join(lines)

    def wait(self, check: Callable[[], bool], seconds: float, what: str) -> None:
        """wait_until, with diagnose() in the error."""
        try:
            wait_until(check, seconds, what, interval=0.5)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.diagnose()}") from None

    def wait_ready(self, component: str, seconds: float) -> None:
        self.wait(functools.partial(self.has_ready_pod, component), seconds, f"the {component}")

    def proxy_url(self) -> str:
        pod = self.pod("proxy")
        if pod is None:
            raise RuntimeError(f"no Ready proxy pod in {self.namespace}")
        return f"http://{pod['status']['podIP']}:8080"


def saved_images() -> dict[str, Path]:
    """The images `make images` built from the current inputs, as OCI archives (cached by those
    inputs); ImageBuildError when one is missing or stale."""
    folder = cache_root() / "image-archives"
    done = subprocess.run(
        ["bash", str(BUILD), "--check", f"--save={folder}", *IMAGES],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
    )
    if done.returncode != 0:
        raise ImageBuildError(
            "the images are not built from the current inputs: run `make images`\n"
            + done.stderr[-2000:]
        )
    return {name: folder / f"{name}.oci.tar" for name in IMAGES}


def _apply(world: TestWorld, manifest: dict[str, Any]) -> None:
    done = world.kubectl("apply", "-f", "-", input=json.dumps(manifest))
    if done.returncode != 0:
        raise RuntimeError(f"kubectl apply failed: {done.stderr.strip()}")


def restricted_namespace(world: TestWorld, name: str) -> None:
    labels = {
        "pod-security.kubernetes.io/enforce": "restricted",
        "pod-security.kubernetes.io/enforce-version": "latest",
    }
    _apply(
        world,
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": labels}},
    )


def hostpath_claim(world: TestWorld, namespace: str, folder: Path) -> None:
    """A claim bound to a hostPath PV of folder (the node's containers see the host's files:
    the kubelet's private mount namespace keeps the host's view).

    A hostPath volume, like NFS, ignores fsGroup, and the kubelet creates a missing subPath as
    root with its parent's mode: a folder 1000:1000 0755 gives root-owned subPaths that the
    images' user cannot write (the proxy then fails with PermissionError on its state folder).
    The folder is therefore set up as the kubelet sets up a volume for fsGroup 1000: group
    1000, group-writable and setgid, so that every folder made in it belongs to group 1000."""
    folder.mkdir(parents=True, exist_ok=True)
    os.chown(folder, IMAGE_UID, IMAGE_UID)
    folder.chmod(0o2775)
    volume = f"{namespace}-{CLAIM}"
    _apply(
        world,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolume",
            "metadata": {"name": volume},
            "spec": {
                "capacity": {"storage": "10Gi"},
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "persistentVolumeReclaimPolicy": "Retain",
                "hostPath": {"path": str(folder), "type": "Directory"},
                "claimRef": {"namespace": namespace, "name": CLAIM},
            },
        },
    )
    _apply(
        world,
        {
            "apiVersion": "v1",
            "kind": "PersistentVolumeClaim",
            "metadata": {"name": CLAIM, "namespace": namespace},
            "spec": {
                "accessModes": ["ReadWriteMany"],
                "storageClassName": "",
                "volumeName": volume,
                "resources": {"requests": {"storage": "10Gi"}},
            },
        },
    )


def install(
    world: TestWorld,
    state: Path,
    namespace: str,
    models: list[dict[str, Any]] | None = None,
    images: dict[str, Path] | None = None,
) -> RealRelease:
    """Imports the images into the world's first real node, then installs the chart there;
    returns once the operator and the proxy pods are Ready."""
    node = world.nodes[0]
    release = RealRelease(world, node, namespace, state / "claim")
    for name, archive in (images or saved_images()).items():
        started = time.monotonic()
        import_image(archive, node.files.socket)
        release.timings[f"import {name}"] = time.monotonic() - started
    restricted_namespace(world, namespace)
    hostpath_claim(world, namespace, release.claim_dir)
    extra = state / "values-real-node.yaml"
    extra.write_text(
        json.dumps({"model": {"models": models or []}, "persistence": {"existingClaim": CLAIM}})
    )
    done = subprocess.run(
        [
            world.tool("helm"),
            f"--kubeconfig={world.kubeconfig}",
            "install",
            RELEASE,
            str(CHART),
            f"--namespace={namespace}",
            f"--values={VALUES}",
            f"--values={extra}",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"helm install failed: {done.stderr.strip()}")
    started = time.monotonic()
    for component in ("operator", "proxy"):
        # Generous: a loaded 2-core machine starts Python processes slowly.
        release.wait_ready(component, 300)
    release.timings["pods ready"] = time.monotonic() - started
    return release
