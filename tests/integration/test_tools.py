"""`make tools` built what tools/*/go.mod pins: each binary reports that module's version (the
Kubernetes ones through the link-time version stamps that helm's kubeVersion checks need)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from serverless_comfyui.testworld import MissingToolError, find_tools_bin

TOOLS = Path(__file__).parents[2] / "tools"


def pinned(group: str, module: str) -> str:
    edit = subprocess.run(
        ["go", "mod", "edit", "-json"], cwd=TOOLS / group, capture_output=True, text=True,
        check=True, timeout=60,
    )  # fmt: skip
    return next(r["Version"] for r in json.loads(edit.stdout)["Require"] if r["Path"] == module)


KUBERNETES = ("kubernetes", "k8s.io/kubernetes")


@pytest.mark.cluster
@pytest.mark.parametrize(
    ("binary", "args", "module", "shown"),
    [
        ("kube-apiserver", ["--version"], KUBERNETES, "Kubernetes {v}"),
        ("kube-controller-manager", ["--version"], KUBERNETES, "Kubernetes {v}"),
        ("kube-scheduler", ["--version"], KUBERNETES, "Kubernetes {v}"),
        ("kubelet", ["--version"], KUBERNETES, "Kubernetes {v}"),
        ("kubectl", ["version", "--client"], KUBERNETES, "Client Version: {v}"),
        ("etcd", ["--version"], ("etcd", "go.etcd.io/etcd/server/v3"), "etcd Version: {bare}"),
        ("kwok", ["--version"], ("kwok", "sigs.k8s.io/kwok"), "{v}"),
        ("helm", ["version", "--short"], ("helm", "helm.sh/helm/v3"), "{v}"),
    ],
)
def test_each_tool_reports_its_pinned_version(
    binary: str, args: list[str], module: tuple[str, str], shown: str
) -> None:
    try:
        bin_dir = find_tools_bin()
    except MissingToolError as exc:
        pytest.fail(str(exc), pytrace=False)
    if not (bin_dir / binary).exists():
        pytest.fail(f"{bin_dir / binary} is missing: run `make tools`", pytrace=False)
    version = pinned(*module)
    ran = subprocess.run(
        [str(bin_dir / binary), *args], capture_output=True, text=True, timeout=60, check=False
    )
    assert ran.returncode == 0, ran.stderr
    assert shown.format(v=version, bare=version.removeprefix("v")) in ran.stdout + ran.stderr
