"""The Helm chart against the real control plane of the test world: every rendered manifest of
every values set passes the API server's validation (`kubectl apply --dry-run=server`, strict
field validation, the CRD's CEL rules), `helm install` and `helm uninstall` work, and
`helm template | kubectl apply` (GitOps) converges. No container runs: KWOK fakes the pods and
nothing provisions volumes, so a created claim stays Pending, which is fine here."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from serverless_comfyui.testworld import TestWorld

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "serverless-comfyui"
FIXTURES = REPO / "tests" / "fixtures" / "chart"
VALUES_SETS = {
    "defaults": [],
    "seed": ["-f", str(FIXTURES / "seed-003-values.yaml")],
    "existing-claim": ["-f", str(FIXTURES / "existing-claim.yaml")],
    "cluster-wide": ["-f", str(FIXTURES / "cluster-wide.yaml")],
    "exposed": ["-f", str(FIXTURES / "exposed.yaml")],
    "local-processes": ["-f", str(FIXTURES / "local-processes.yaml")],
    "real-node": ["-f", str(FIXTURES / "real-node.yaml")],
    "watch-namespaces": ["-f", str(FIXTURES / "watch-namespaces.yaml")],
    "everything": ["-f", str(FIXTURES / "everything.yaml")],
}


def helm(world: TestWorld, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [world.tool("helm"), f"--kubeconfig={world.kubeconfig}", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def kubectl_ok(world: TestWorld, *args: str, input: str | None = None) -> str:
    done = world.kubectl(*args, input=input)
    assert done.returncode == 0, f"kubectl {' '.join(args)}:\n{done.stderr}"
    return done.stdout


def get_json(world: TestWorld, *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(kubectl_ok(world, "get", *args, "-o", "json"))
    return data


def ensure_namespace(world: TestWorld, name: str) -> None:
    if world.kubectl("get", "namespace", name).returncode != 0:
        kubectl_ok(world, "create", "namespace", name)


@pytest.fixture
def fresh_namespace(world: TestWorld) -> Iterator[str]:
    name = f"chart-{uuid.uuid4().hex[:8]}"
    kubectl_ok(world, "create", "namespace", name)
    yield name
    world.kubectl("delete", "namespace", name, "--wait=false")


@pytest.mark.parametrize("values", sorted(VALUES_SETS))
def test_every_rendered_manifest_passes_server_validation(
    world: TestWorld, crd: Path, fresh_namespace: str, values: str
) -> None:
    for extra in ("team-a", "team-b"):  # watch-namespaces.yaml serves these too
        ensure_namespace(world, extra)
    release = f"r{uuid.uuid4().hex[:6]}-serverless-comfyui"
    rendered = helm(
        world, "template", release, str(CHART), "-n", fresh_namespace, "--include-crds",
        *VALUES_SETS[values],
    )  # fmt: skip
    assert rendered.returncode == 0, rendered.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(rendered.stdout) if d}
    assert {"FluxWorkflow", "CustomResourceDefinition", "Role"} & kinds
    done = world.kubectl(
        "apply", "--server-side", "--dry-run=server", "--validate=strict",
        "--field-manager=chart-test", "-f", "-", input=rendered.stdout,
    )  # fmt: skip
    assert done.returncode == 0, f"{values}: the API server refused:\n{done.stderr}"
    assert "(server dry run)" in done.stdout
    if "FluxWorkflow" in kinds:
        assert "fluxworkflow.serverless-comfyui.io/" in done.stdout


def test_invalid_fluxworkflow_values_are_refused_by_the_crd_too(
    world: TestWorld, crd: Path, fresh_namespace: str
) -> None:
    """Belt and braces: what the chart's checks stop is what the CRD's CEL rules refuse."""
    rendered = helm(world, "template", "x", str(CHART), "-n", fresh_namespace)
    fw = next(d for d in yaml.safe_load_all(rendered.stdout) if d and d["kind"] == "FluxWorkflow")
    fw["spec"]["minReplicas"], fw["spec"]["maxReplicas"] = 3, 2
    done = world.kubectl(
        "apply", "--dry-run=server", "-n", fresh_namespace, "-f", "-", input=json.dumps(fw)
    )
    assert done.returncode != 0
    assert "minReplicas must not exceed maxReplicas" in done.stderr


def test_helm_install_and_uninstall(world: TestWorld, crd: Path, fresh_namespace: str) -> None:
    ns = fresh_namespace
    installed = helm(world, "install", "serverless-comfyui", str(CHART), "-n", ns)
    assert installed.returncode == 0, installed.stderr
    assert "STATUS: deployed" in installed.stdout
    assert "curl -m 900 -X GET http://127.0.0.1:8080/openai/api/system_stats" in installed.stdout
    status = json.loads(helm(world, "status", "serverless-comfyui", "-n", ns, "-o", "json").stdout)
    assert status["info"]["status"] == "deployed"

    fw = get_json(world, "fluxworkflow", "serverless-comfyui", "-n", ns)
    assert fw["spec"]["resourceProfile"] == "gpu-h100-80gb-hbm3:1"
    assert fw["spec"]["storage"]["claimName"] == "pvc-capacity-userdata"
    assert fw["spec"]["replicas"] == 0  # the CRD's default; the autoscaler's from now on
    pvc = get_json(world, "pvc", "pvc-capacity-userdata", "-n", ns)
    assert pvc["status"]["phase"] == "Pending"  # no provisioner in the test world
    deployments = get_json(world, "deployments", "-n", ns)["items"]
    assert sorted(d["metadata"]["name"] for d in deployments) == [
        "serverless-comfyui-devpod",
        "serverless-comfyui-operator",
        "serverless-comfyui-proxy",
    ]
    kubectl_ok(world, "get", "serviceaccount", "serverless-comfyui-operator", "-n", ns)
    kubectl_ok(world, "get", "configmap", "serverless-comfyui-profiles", "-n", ns)

    # An upgrade keeps what the autoscaler wrote.
    kubectl_ok(world, "scale", "fluxworkflow", "serverless-comfyui", "-n", ns, "--replicas=1")
    upgraded = helm(
        world, "upgrade", "serverless-comfyui", str(CHART), "-n", ns,
        "--set", "model.scaleDownDelaySeconds=120",
    )  # fmt: skip
    assert upgraded.returncode == 0, upgraded.stderr
    fw = get_json(world, "fluxworkflow", "serverless-comfyui", "-n", ns)
    assert (fw["spec"]["replicas"], fw["spec"]["scaleDownDelaySeconds"]) == (1, 120)

    uninstalled = helm(world, "uninstall", "serverless-comfyui", "-n", ns)
    assert uninstalled.returncode == 0, uninstalled.stderr
    assert "pvc-capacity-userdata" in uninstalled.stdout + uninstalled.stderr  # kept, and said
    gone = world.kubectl("get", "fluxworkflow", "serverless-comfyui", "-n", ns)
    assert gone.returncode != 0 and "NotFound" in gone.stderr
    kubectl_ok(world, "get", "pvc", "pvc-capacity-userdata", "-n", ns)  # models kept
    kubectl_ok(world, "get", "crd", "fluxworkflows.serverless-comfyui.io")  # CRD kept
    leftover = world.kubectl(
        "get", "clusterroles", "-l", "app.kubernetes.io/instance=serverless-comfyui", "-o", "name"
    )
    assert f"clusterrole.rbac.authorization.k8s.io/{ns}-" not in leftover.stdout


def test_seed_values_install_beside_another_release(
    world: TestWorld, crd: Path, fresh_namespace: str
) -> None:
    """The seed's values file installs as is, in a second release sharing the CRD."""
    ns = fresh_namespace
    other = f"{ns}-b"
    kubectl_ok(world, "create", "namespace", other)
    try:
        for namespace, args in ((ns, VALUES_SETS["seed"]), (other, [])):
            done = helm(world, "install", "serverless-comfyui", str(CHART), "-n", namespace, *args)
            assert done.returncode == 0, done.stderr
        fw = get_json(world, "fluxworkflow", "serverless-comfyui", "-n", ns)
        assert fw["spec"]["image"].startswith("registry.hd-01.alayanew.com:8443/")
        assert fw["spec"]["storage"] == {
            "claimName": "pvc-capacity-userdata",
            "modelsSubPath": "apps/serverless-comfyui/models",
        }
        claims = get_json(world, "pvc", "-n", ns)["items"]
        assert claims == []  # vksID: the platform's claim, not ours
        for namespace in (ns, other):
            assert helm(world, "uninstall", "serverless-comfyui", "-n", namespace).returncode == 0
    finally:
        world.kubectl("delete", "namespace", other, "--wait=false")


def test_gitops_template_pipe_apply_converges(
    world: TestWorld, crd: Path, fresh_namespace: str
) -> None:
    """`helm template | kubectl apply --server-side`, twice: the second apply changes nothing."""
    ns = fresh_namespace
    rendered = helm(world, "template", "gitops", str(CHART), "-n", ns, "--include-crds")
    assert rendered.returncode == 0, rendered.stderr
    apply = ("apply", "--server-side", "--field-manager=gitops", "-n", ns, "-f", "-")
    first = world.kubectl(*apply, input=rendered.stdout)
    assert first.returncode == 0, first.stderr
    kubectl_ok(world, "scale", "fluxworkflow", "serverless-comfyui", "-n", ns, "--replicas=1")
    again = helm(world, "template", "gitops", str(CHART), "-n", ns, "--include-crds")
    assert again.stdout == rendered.stdout  # deterministic against a live cluster too
    # Nothing to change, although the autoscaler moved spec.replicas: the manifests never
    # claim it (kubectl diff exits 1 on any difference).
    diff = world.kubectl(
        "diff", "--server-side", "--field-manager=gitops", "-n", ns, "-f", "-", input=again.stdout
    )
    assert diff.returncode == 0, f"a second apply would change:\n{diff.stdout}{diff.stderr}"
    second = world.kubectl(*apply, input=again.stdout)
    assert second.returncode == 0, second.stderr
    fw = get_json(world, "fluxworkflow", "serverless-comfyui", "-n", ns)
    assert fw["spec"]["replicas"] == 1  # the manifests never claim spec.replicas
    kubectl_ok(
        world, "delete", "clusterrole,clusterrolebinding", "-l", "app.kubernetes.io/instance=gitops"
    )
