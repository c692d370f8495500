"""The Helm chart, rendered with the real helm (.tools/bin/helm) and checked object by object:
lint, several values sets (defaults, the seed's values, bring-your-own claim, cluster-wide RBAC,
an exposed proxy, local processes), security defaults on every container, readable failures on
invalid values, deterministic output, the README covering every value, image tags matching
images/versions.env, and the CRD being the generated file. No cluster needed."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from serverless_comfyui.controller.profiles import DEFAULT_PROFILES, load_profiles
from serverless_comfyui.crd.generate import CHART_PATH
from serverless_comfyui.crd.models import FluxWorkflowSpec

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "serverless-comfyui"
GENERATED_CRD = CHART.parents[1] / CHART_PATH
FIXTURES = REPO / "tests" / "fixtures" / "chart"
SEED = FIXTURES / "seed-003-values.yaml"
RELEASE = "serverless-comfyui"
NAMESPACE = "comfy"
VALUES_SETS = {
    "defaults": [],
    "seed": ["-f", str(SEED)],
    "existing-claim": ["-f", str(FIXTURES / "existing-claim.yaml")],
    "cluster-wide": ["-f", str(FIXTURES / "cluster-wide.yaml")],
    "exposed": ["-f", str(FIXTURES / "exposed.yaml")],
    "local-processes": ["-f", str(FIXTURES / "local-processes.yaml")],
    "real-node": ["-f", str(FIXTURES / "real-node.yaml")],
    "watch-namespaces": ["-f", str(FIXTURES / "watch-namespaces.yaml")],
    "everything": ["-f", str(FIXTURES / "everything.yaml")],
}
RECOMMENDED_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "helm.sh/chart",
)
CLUSTER_SCOPED = {"ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition"}


# -- helpers ----------------------------------------------------------------------------------


def helm_bin() -> str:
    candidates = []
    if os.environ.get("SERVERLESS_COMFYUI_TOOLS_BIN"):
        candidates.append(Path(os.environ["SERVERLESS_COMFYUI_TOOLS_BIN"]) / "helm")
    candidates.append(REPO / ".tools" / "bin" / "helm")
    for candidate in candidates:
        if candidate.exists():
            return str(candidate)
    pytest.fail(
        "helm is missing from .tools/bin: run `make tools` (or set SERVERLESS_COMFYUI_TOOLS_BIN)",
        pytrace=False,
    )


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [helm_bin(), *args], capture_output=True, text=True, timeout=120, check=False
    )


def render_text(*args: str, release: str = RELEASE, namespace: str = NAMESPACE) -> str:
    done = helm("template", release, str(CHART), "-n", namespace, *args)
    assert done.returncode == 0, f"helm template {' '.join(args)} failed:\n{done.stderr}"
    return done.stdout


def render(*args: str, release: str = RELEASE, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    text = render_text(*args, release=release, namespace=namespace)
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render_error(*args: str) -> str:
    done = helm("template", RELEASE, str(CHART), "-n", NAMESPACE, *args)
    assert done.returncode != 0, f"helm template {' '.join(args)} should have failed"
    return done.stderr


@pytest.fixture(scope="module")
def notes_chart(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the chart that also renders NOTES.txt into a ConfigMap: `helm install
    --dry-run=client` (which prints NOTES) still wants a reachable cluster in helm 3.21."""
    copy = tmp_path_factory.mktemp("chart") / "serverless-comfyui"
    shutil.copytree(CHART, copy, symlinks=False)
    shutil.copy(CHART / "templates" / "NOTES.txt", copy / "notes.txt")
    (copy / "templates" / "zz-notes.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: rendered-notes\n"
        'data:\n  notes: {{ tpl (.Files.Get "notes.txt") . | toJson }}\n'
    )
    return copy


def notes(chart: Path, *args: str) -> str:
    done = helm("template", RELEASE, str(chart), "-n", NAMESPACE, *args)
    assert done.returncode == 0, done.stderr
    found = [d for d in yaml.safe_load_all(done.stdout) if d and d["kind"] == "ConfigMap"]
    return str(next(d for d in found if d["metadata"]["name"] == "rendered-notes")["data"]["notes"])


def kinds(objs: list[dict[str, Any]]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for obj in objs:
        out.setdefault(obj["kind"], []).append(obj["metadata"]["name"])
    return {k: sorted(v) for k, v in out.items()}


def get(objs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, got {kinds(objs).get(kind)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_templates(objs: list[dict[str, Any]]) -> Iterator[tuple[str, dict[str, Any]]]:
    for obj in objs:
        if obj["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
            yield obj["metadata"]["name"], obj["spec"]["template"]
        elif obj["kind"] == "Pod":
            yield obj["metadata"]["name"], obj


def workflow_spec(objs: list[dict[str, Any]], name: str = "serverless-comfyui") -> dict[str, Any]:
    spec: dict[str, Any] = get(objs, "FluxWorkflow", name)["spec"]
    FluxWorkflowSpec.model_validate(spec)  # the pydantic model the CRD is generated from
    return spec


def rules_of(role: dict[str, Any]) -> set[tuple[str, str, str]]:
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


# -- lint and the whole output ----------------------------------------------------------------


@pytest.mark.parametrize("values", sorted(VALUES_SETS))
def test_helm_lint_strict_is_clean(values: str) -> None:
    done = helm("lint", "--strict", str(CHART), *VALUES_SETS[values])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 chart(s) failed" in done.stdout
    assert "[WARNING]" not in done.stdout and "[ERROR]" not in done.stdout, done.stdout


@pytest.mark.parametrize("values", sorted(VALUES_SETS))
def test_every_object_is_labelled_and_placed(values: str) -> None:
    objs = render(*VALUES_SETS[values])
    assert objs
    for obj in objs:
        where = f"{obj['kind']} {obj['metadata']['name']}"
        labels = obj["metadata"].get("labels", {})
        missing = [k for k in RECOMMENDED_LABELS if k not in labels]
        assert not missing, f"{where} lacks labels {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"
        assert labels["app.kubernetes.io/instance"] == RELEASE
        assert labels["app.kubernetes.io/part-of"] == "serverless-comfyui"
        if obj["kind"] in CLUSTER_SCOPED:
            assert "namespace" not in obj["metadata"], where
        else:
            assert obj["metadata"].get("namespace"), f"{where} has no namespace"
    for obj in objs:
        if obj["kind"] == "Deployment":
            match = obj["spec"]["selector"]["matchLabels"]
            labels = obj["spec"]["template"]["metadata"]["labels"]
            assert match.items() <= labels.items(), obj["metadata"]["name"]
            assert labels["app.kubernetes.io/component"] == match["app.kubernetes.io/component"]


@pytest.mark.parametrize("values", sorted(VALUES_SETS))
def test_every_container_is_hardened_and_requests_resources(values: str) -> None:
    objs = render(*VALUES_SETS[values])
    templates = list(pod_templates(objs))
    if values != "local-processes":
        assert templates, "no pod templates rendered"
    for name, template in templates:
        pod = template["spec"]
        pod_sc = pod.get("securityContext", {})
        assert pod_sc.get("runAsNonRoot") is True, f"{name}: runAsNonRoot"
        assert pod_sc.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        containers = pod["containers"] + pod.get("initContainers", [])
        for container in containers:
            where = f"{name}/{container['name']}"
            sc = container.get("securityContext", {})
            assert sc.get("allowPrivilegeEscalation") is False, where
            assert sc.get("readOnlyRootFilesystem") is True, where
            assert sc.get("capabilities", {}).get("drop") == ["ALL"], where
            assert sc.get("privileged") is not True, where
            requests = container.get("resources", {}).get("requests", {})
            assert {"cpu", "memory"} <= requests.keys(), f"{where}: requests {requests}"
            assert container["image"].count(":") >= 1, f"{where}: image without a tag"


def test_rendering_is_deterministic() -> None:
    # exposed.yaml renders the Secrets and their checksums: nothing may change between renders.
    args = ["-f", str(FIXTURES / "exposed.yaml"), "--include-crds"]
    first, second = render_text(*args), render_text(*args)
    assert first == second
    templates = "".join(p.read_text() for p in sorted((CHART / "templates").iterdir()))
    code = re.sub(r"\{\{-?\s*/\*.*?\*/\s*-?\}\}", "", templates, flags=re.DOTALL)
    actions = " ".join(re.findall(r"\{\{.*?\}\}", code, flags=re.DOTALL))
    assert "include" in actions  # the comments are gone, the code is there
    for forbidden in ("lookup", "randAlphaNum", "randAlpha", "randNumeric", "uuidv4", "now"):
        assert not re.search(rf"\b{forbidden}\b", actions), f"templates call {forbidden}"


# -- defaults ---------------------------------------------------------------------------------


def test_defaults_render_the_whole_product() -> None:
    objs = render()
    assert kinds(objs) == {
        "ServiceAccount": [
            "serverless-comfyui-devpod",
            "serverless-comfyui-operator",
            "serverless-comfyui-proxy",
        ],
        "ConfigMap": ["serverless-comfyui-profiles"],
        "PersistentVolumeClaim": ["pvc-capacity-userdata"],
        "ClusterRole": ["comfy-serverless-comfyui-operator-discovery"],
        "ClusterRoleBinding": ["comfy-serverless-comfyui-operator-discovery"],
        "Role": [
            "serverless-comfyui-operator",
            "serverless-comfyui-proxy",
            "serverless-comfyui-proxy-leases",
        ],
        "RoleBinding": [
            "serverless-comfyui-operator",
            "serverless-comfyui-proxy",
            "serverless-comfyui-proxy-leases",
        ],
        "Service": ["serverless-comfyui-proxy"],
        "Deployment": [
            "serverless-comfyui-devpod",
            "serverless-comfyui-operator",
            "serverless-comfyui-proxy",
        ],
        "FluxWorkflow": ["serverless-comfyui"],
    }


def test_default_fluxworkflow_serves_flux_dev() -> None:
    objs = render()
    fw = get(objs, "FluxWorkflow", "serverless-comfyui")
    assert fw["apiVersion"] == "serverless-comfyui.io/v1alpha1"
    spec = workflow_spec(objs)
    assert spec["image"] == "ghcr.io/serverless-comfyui/comfyui:0.1.0-comfyui-v0.8.0"
    assert spec["resourceProfile"] == "gpu-h100-80gb-hbm3:1"
    assert (spec["minReplicas"], spec["maxReplicas"]) == (0, 1)
    assert (spec["targetRequests"], spec["scaleDownDelaySeconds"]) == (5, 30)
    assert "replicas" not in spec, "spec.replicas belongs to the autoscaler"
    assert spec["workflow"] == {"name": "flux_dev_t5fp8"}
    models = {(m["name"], m["dir"]): m["url"] for m in spec["models"]}
    hf = "https://huggingface.co"
    assert models == {
        ("flux1-dev.safetensors", "diffusion_models"): (
            f"{hf}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors"
        ),
        ("t5xxl_fp8_e4m3fn.safetensors", "text_encoders"): (
            f"{hf}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn.safetensors"
        ),
        ("clip_l.safetensors", "text_encoders"): (
            f"{hf}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors"
        ),
        ("ae.safetensors", "vae"): (
            f"{hf}/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors"
        ),
    }
    assert spec["storage"] == {
        "claimName": "pvc-capacity-userdata",
        "modelsSubPath": "apps/serverless-comfyui/models",
        "inputSubPath": "apps/serverless-comfyui/input",
        "outputSubPath": "apps/serverless-comfyui/output",
    }
    assert "huggingFaceTokenSecret" not in spec  # no token configured
    annotations = fw["metadata"]["annotations"]
    assert annotations["argocd.argoproj.io/sync-options"] == "SkipDryRunOnMissingResource=true"


def test_default_claim_is_created_rwx_and_kept() -> None:
    pvc = get(render(), "PersistentVolumeClaim", "pvc-capacity-userdata")
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]
    assert pvc["spec"]["resources"]["requests"]["storage"] == "200Gi"
    assert "storageClassName" not in pvc["spec"]  # the cluster's default class
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"


def test_claim_options() -> None:
    args = ["--set", "persistence.storageClassName=-", "--set", "persistence.keepOnUninstall=false"]
    pvc = get(render(*args), "PersistentVolumeClaim", "pvc-capacity-userdata")
    assert pvc["spec"]["storageClassName"] == ""
    assert "annotations" not in pvc["metadata"]
    args = ["--set", "persistence.storageClassName=fast", "--set", "persistence.size=1Ti"]
    args += ["--set", "persistence.accessModes={ReadWriteOnce}"]
    pvc = get(render(*args), "PersistentVolumeClaim", "pvc-capacity-userdata")
    assert pvc["spec"]["storageClassName"] == "fast"
    assert pvc["spec"]["resources"]["requests"]["storage"] == "1Ti"
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]


def test_operator_deployment_wiring() -> None:
    objs = render()
    deployment = get(objs, "Deployment", "serverless-comfyui-operator")
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "serverless-comfyui-operator"
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/serverless-comfyui/controller:0.1.0"
    assert container["command"] == ["python", "-m", "serverless_comfyui.controller"]
    env = env_of(container)
    assert json.loads(env["SERVERLESS_COMFYUI_NAMESPACES"]) == [NAMESPACE]
    assert env["SERVERLESS_COMFYUI_DOWNLOADER_IMAGE"] == "ghcr.io/serverless-comfyui/devpod:0.1.0"
    assert env["SERVERLESS_COMFYUI_PROXY_URL"] == "http://serverless-comfyui-proxy.comfy.svc:8080"
    assert env["SERVERLESS_COMFYUI_LIVENESS_ENDPOINT"] == "http://0.0.0.0:8081/healthz"
    profiles_file = Path(env["SERVERLESS_COMFYUI_PROFILES_FILE"])
    mount = next(m for m in container["volumeMounts"] if m["name"] == "profiles")
    assert profiles_file.parent == Path(mount["mountPath"])
    volume = next(v for v in pod["volumes"] if v["name"] == "profiles")
    assert volume["configMap"]["name"] == "serverless-comfyui-profiles"
    configmap = get(objs, "ConfigMap", "serverless-comfyui-profiles")
    assert profiles_file.name in configmap["data"]
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert {"name": "health", "containerPort": 8081} in container["ports"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/profiles"])


def test_profile_changes_restart_the_operator() -> None:
    def checksum(*args: str) -> str:
        deployment = get(render(*args), "Deployment", "serverless-comfyui-operator")
        return str(deployment["spec"]["template"]["metadata"]["annotations"]["checksum/profiles"])

    assert checksum() != checksum("--set", "resourceProfiles.cpu.requests.cpu=3")


def test_profiles_configmap_is_what_the_operator_loads(tmp_path: Path) -> None:
    configmap = get(render(), "ConfigMap", "serverless-comfyui-profiles")
    path = tmp_path / "profiles.yaml"
    path.write_text(configmap["data"]["profiles.yaml"])
    profiles = load_profiles(path)  # the operator's own loader (pydantic, extra keys refused)
    for name in ("gpu-h100-80gb-hbm3", "gpu-h800-80gb-hbm3", "nvidia-gpu", "cpu"):
        assert profiles[name] == DEFAULT_PROFILES[name], name
    assert profiles["gpu-h100-80gb-hbm3"].node_selector == {
        "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"
    }
    assert profiles["gpu-h800-80gb-hbm3"].node_selector == {"nvidia.com/gpu.product": "NVIDIA-H800"}
    assert profiles["gpu-h800"] == profiles["gpu-h800-80gb-hbm3"]
    gpu_toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    assert profiles["nvidia-gpu"].tolerations == [gpu_toleration]
    assert profiles["cpu"].gpu_resource is None
    assert profiles["cpu"].tolerations == []


def test_everything_set_reaches_its_object(tmp_path: Path) -> None:
    objs = render(*VALUES_SETS["everything"])
    configmap = get(objs, "ConfigMap", "serverless-comfyui-profiles")
    (tmp_path / "profiles.yaml").write_text(configmap["data"]["profiles.yaml"])
    h100 = load_profiles(tmp_path / "profiles.yaml")["gpu-h100-80gb-hbm3"]
    assert h100.runtime_class_name == "nvidia"  # added by the values...
    assert h100.node_selector == DEFAULT_PROFILES["gpu-h100-80gb-hbm3"].node_selector  # ...merged
    spec = workflow_spec(objs)
    assert spec["nodeSelector"] == {"topology.kubernetes.io/zone": "zone-a"}
    assert spec["tolerations"][0]["key"] == "dedicated"
    assert spec["resources"]["requests"] == {"cpu": "12", "memory": "96Gi"}
    assert (spec["port"], spec["terminationGracePeriodSeconds"]) == (8288, 900)
    assert spec["models"][0]["sha256"].startswith("4610115b")
    for name in ("operator", "proxy", "devpod"):
        deployment = get(objs, "Deployment", f"serverless-comfyui-{name}")
        pod = deployment["spec"]["template"]["spec"]
        assert pod["imagePullSecrets"] == [{"name": "registry-credentials"}], name
        assert pod["nodeSelector"] == {"kubernetes.io/os": "linux"}, name
        assert pod["tolerations"] and pod["affinity"], name
        assert deployment["spec"]["template"]["metadata"]["labels"]["team"] == "ml", name
        extra = {e["name"] for e in pod["containers"][0]["env"]}
        assert extra & {
            "SERVERLESS_COMFYUI_HEALTH_PORT",
            "SERVERLESS_COMFYUI_PROXY_UPSTREAM_TIMEOUT_SECONDS",
            "HF_HUB_ENABLE_HF_TRANSFER",
        }, name
    proxy = get(objs, "Deployment", "serverless-comfyui-proxy")["spec"]["template"]
    assert proxy["metadata"]["annotations"] == {"prometheus.io/scrape": "true"}
    assert proxy["spec"]["topologySpreadConstraints"][0]["maxSkew"] == 1
    env = env_of(proxy["spec"]["containers"][0])
    assert env["SERVERLESS_COMFYUI_PROXY_MAX_BODY_BYTES"] == "2147483648"
    assert env["NODE_NAME"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    service = get(objs, "Service", "serverless-comfyui-proxy")
    assert (service["spec"]["type"], service["spec"]["ports"][0]["port"]) == ("LoadBalancer", 80)
    pdb = get(objs, "PodDisruptionBudget", "serverless-comfyui-proxy")
    assert pdb["spec"]["maxUnavailable"] == "50%"
    pvc = get(objs, "PersistentVolumeClaim", "pvc-capacity-userdata")
    assert pvc["metadata"]["annotations"] == {"backup.example.com/skip": "true"}
    assert pvc["spec"]["storageClassName"] == "shared-nfs"
    operator = get(objs, "Deployment", "serverless-comfyui-operator")["spec"]["template"]
    env = env_of(operator["spec"]["containers"][0])
    assert env["SERVERLESS_COMFYUI_PROXY_URL"] == "https://comfy.example.com"
    assert json.loads(env["SERVERLESS_COMFYUI_DOWNLOAD_TOKEN_HOSTS"]) == ["hf-mirror.example.com"]
    assert env["SERVERLESS_COMFYUI_RESYNC_SECONDS"] == "30.5"
    devpod = get(objs, "Deployment", "serverless-comfyui-devpod")["spec"]["template"]["spec"]
    mounts = {m["mountPath"] for m in devpod["containers"][0]["volumeMounts"]}
    assert "/data" in mounts


def test_proxy_deployment_wiring() -> None:
    objs = render()
    deployment = get(objs, "Deployment", "serverless-comfyui-proxy")
    pod = deployment["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "serverless-comfyui-proxy"
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/serverless-comfyui/controller:0.1.0"
    assert container["command"] == ["python", "-m", "serverless_comfyui.proxy"]
    env = env_of(container)
    assert env["SERVERLESS_COMFYUI_PROXY_PORT"] == "8080"
    assert json.loads(env["SERVERLESS_COMFYUI_PROXY_NAMESPACES"]) == [NAMESPACE]
    assert env["SERVERLESS_COMFYUI_PROXY_HOLD_TIMEOUT_SECONDS"] == "600"
    assert env["SERVERLESS_COMFYUI_PROXY_MAX_BODY_BYTES"] == "104857600"
    assert env["SERVERLESS_COMFYUI_PROXY_LEASE_NAME"] == "serverless-comfyui-proxy-autoscaler"
    assert env["SERVERLESS_COMFYUI_PROXY_POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert env["SERVERLESS_COMFYUI_PROXY_LEASE_NAMESPACE"] == {
        "fieldRef": {"fieldPath": "metadata.namespace"}
    }
    assert "SERVERLESS_COMFYUI_PROXY_API_KEYS_FILE" not in env
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    service = get(objs, "Service", "serverless-comfyui-proxy")
    assert service["spec"]["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_devpod_mounts_the_claim_with_the_hugging_face_cli() -> None:
    objs = render("--set", "huggingFace.token=hf_x")
    deployment = get(objs, "Deployment", "serverless-comfyui-devpod")
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}
    pod = deployment["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["serviceAccountName"] == "serverless-comfyui-devpod"
    (container,) = pod["containers"]
    assert container["image"] == "ghcr.io/serverless-comfyui/devpod:0.1.0"
    assert container["command"] == ["sleep", "infinity"]
    assert "nvidia.com/gpu" not in json.dumps(container["resources"])  # a CPU pod
    mounts = {m["mountPath"]: m.get("subPath") for m in container["volumeMounts"]}
    assert mounts["/mnt/userdata"] is None
    assert mounts["/mnt/serverless-comfyui/models"] == "apps/serverless-comfyui/models"
    assert mounts["/mnt/serverless-comfyui/output"] == "apps/serverless-comfyui/output"
    claim = next(v for v in pod["volumes"] if v["name"] == "userdata")
    assert claim["persistentVolumeClaim"]["claimName"] == "pvc-capacity-userdata"
    env = env_of(container)
    assert env["HF_TOKEN"]["secretKeyRef"] == {
        "name": "serverless-comfyui-hf-token",
        "key": "token",
        "optional": True,
    }
    assert env["HF_HOME"].startswith("/tmp/")
    # The pod runner emulates ComfyUI for pods of this component: the devpod is not one.
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "devpod"


# -- the seed's values ------------------------------------------------------------------------


def test_seed_values_keep_their_meaning() -> None:
    objs = render("-f", str(SEED))
    spec = workflow_spec(objs)
    seed = yaml.safe_load(SEED.read_text())
    assert spec["image"] == seed["model"]["image"]
    assert spec["image"].startswith("registry.hd-01.alayanew.com:8443/")
    assert spec["resourceProfile"] == "gpu-h100-80gb-hbm3:1"
    assert (spec["minReplicas"], spec["maxReplicas"]) == (0, 1)
    assert (spec["targetRequests"], spec["scaleDownDelaySeconds"]) == (5, 30)
    # volumeMounts: the platform's claim, models only (the seed commented input/output out).
    assert spec["storage"] == {
        "claimName": "pvc-capacity-userdata",
        "modelsSubPath": "apps/serverless-comfyui/models",
    }
    # vksID set: the platform provides the claim, the chart creates none.
    assert "PersistentVolumeClaim" not in kinds(objs)
    devpod = get(objs, "Deployment", "serverless-comfyui-devpod")["spec"]["template"]["spec"]
    claim = next(v for v in devpod["volumes"] if v["name"] == "userdata")
    assert claim["persistentVolumeClaim"]["claimName"] == "pvc-capacity-userdata"
    mounts = {m["mountPath"]: m.get("subPath") for m in devpod["containers"][0]["volumeMounts"]}
    assert mounts["/mnt/serverless-comfyui/models"] == "apps/serverless-comfyui/models"
    assert "/mnt/serverless-comfyui/output" not in mounts
    # The public URL the seed's platform gives the proxy service.
    operator = get(objs, "Deployment", "serverless-comfyui-operator")
    env = env_of(operator["spec"]["template"]["spec"]["containers"][0])
    assert env["SERVERLESS_COMFYUI_PROXY_URL"] == (
        "https://serverless-comfyui-proxy-x-comfy-x-vcacu2dsxxxx.sproxy.hd-01.alayanew.com:22443"
    )


def test_seed_style_mounts_map_each_folder() -> None:
    mounts = [
        ("userdata-pvc", "/app/models", "apps/serverless-comfyui/models"),
        ("userdata-pvc", "/app/output", "apps/serverless-comfyui/output"),
        ("userdata-pvc", "/app/input/", "apps/serverless-comfyui/input"),
    ]
    args = []
    for i, (name, path, sub) in enumerate(mounts):
        args += ["--set", f"model.volumeMounts[{i}].name={name}"]
        args += ["--set", f"model.volumeMounts[{i}].mountPath={path}"]
        args += ["--set", f"model.volumeMounts[{i}].subPath={sub}"]
    spec = workflow_spec(render(*args))
    assert spec["storage"] == {
        "claimName": "pvc-capacity-userdata",
        "modelsSubPath": "apps/serverless-comfyui/models",
        "outputSubPath": "apps/serverless-comfyui/output",
        "inputSubPath": "apps/serverless-comfyui/input",
    }


def test_seed_notes_give_the_platform_url(notes_chart: Path) -> None:
    text = notes(notes_chart, "-f", str(SEED))
    base = "https://serverless-comfyui-proxy-x-comfy-x-vcacu2dsxxxx.sproxy.hd-01.alayanew.com:22443"
    assert f"{base}/openai/api/system_stats" in text
    assert "is the platform's (vksID is set)" in text


def test_workflow_from_a_configmap() -> None:
    args = ["--set", "model.workflow.name=null", "--set", "model.workflow.configMapRef.name=wf"]
    args += ["--set", "model.workflow.warmup.name=warmup", "--set", "model.models=null"]
    spec = workflow_spec(render(*args))
    assert spec["workflow"] == {"configMapRef": {"name": "wf"}, "warmup": {"name": "warmup"}}
    assert "models" not in spec


# -- bring your own claim and secrets ---------------------------------------------------------


def test_existing_claim_and_secrets_are_referenced_not_created() -> None:
    objs = render(*VALUES_SETS["existing-claim"])
    assert "PersistentVolumeClaim" not in kinds(objs)
    assert "Secret" not in kinds(objs)
    spec = workflow_spec(objs)
    assert spec["storage"] == {
        "claimName": "flux-models",
        "modelsSubPath": "flux/models",
        "outputSubPath": "flux/output",
    }
    assert spec["huggingFaceTokenSecret"] == {"name": "hf-token", "key": "HF_TOKEN"}
    devpod = get(objs, "Deployment", "serverless-comfyui-devpod")["spec"]["template"]["spec"]
    claim = next(v for v in devpod["volumes"] if v["name"] == "userdata")
    assert claim["persistentVolumeClaim"]["claimName"] == "flux-models"
    proxy = get(objs, "Deployment", "serverless-comfyui-proxy")["spec"]["template"]["spec"]
    env = env_of(proxy["containers"][0])
    assert (
        env["SERVERLESS_COMFYUI_PROXY_API_KEYS_FILE"] == "/etc/serverless-comfyui/api-keys/keys.txt"
    )
    keys = next(v for v in proxy["volumes"] if v["name"] == "api-keys")
    assert keys["secret"]["secretName"] == "proxy-keys"


# -- RBAC -------------------------------------------------------------------------------------


def test_namespaced_rbac_is_least_privilege() -> None:
    objs = render()
    operator = get(objs, "Role", "serverless-comfyui-operator")
    assert ("serverless-comfyui.io", "fluxworkflows/status", "patch") in rules_of(operator)
    assert ("", "secrets", "get") in rules_of(operator)
    for role in (r for r in objs if r["kind"] in ("Role", "ClusterRole")):
        for group, resource, verb in rules_of(role):
            where = f"{role['kind']} {role['metadata']['name']}"
            assert "*" not in (group, resource, verb), f"{where} has a wildcard"
            if resource == "secrets":
                assert verb == "get", f"{where}: {verb} secrets"
    discovery = get(objs, "ClusterRole", "comfy-serverless-comfyui-operator-discovery")
    assert rules_of(discovery) == {
        ("apiextensions.k8s.io", "customresourcedefinitions", "list"),
        ("apiextensions.k8s.io", "customresourcedefinitions", "watch"),
        ("", "namespaces", "list"),
        ("", "namespaces", "watch"),
    }
    binding = get(objs, "RoleBinding", "serverless-comfyui-proxy")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "serverless-comfyui-proxy",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "serverless-comfyui-proxy", "namespace": NAMESPACE}
    ]


def test_cluster_wide_rbac() -> None:
    objs = render(*VALUES_SETS["cluster-wide"])
    assert kinds(objs)["ClusterRole"] == [
        "comfy-serverless-comfyui-operator",
        "comfy-serverless-comfyui-operator-discovery",
        "comfy-serverless-comfyui-proxy",
    ]
    assert kinds(objs)["Role"] == ["serverless-comfyui-proxy-leases"]  # Leases stay local
    namespaced = get(render(), "Role", "serverless-comfyui-operator")
    cluster = get(objs, "ClusterRole", "comfy-serverless-comfyui-operator")
    assert rules_of(cluster) == rules_of(namespaced)
    discovery = get(objs, "ClusterRole", "comfy-serverless-comfyui-operator-discovery")
    assert {r for _, r, _ in rules_of(discovery)} == {"customresourcedefinitions"}
    binding = get(objs, "ClusterRoleBinding", "comfy-serverless-comfyui-proxy")
    assert binding["subjects"][0]["namespace"] == NAMESPACE
    for name in ("serverless-comfyui-operator", "serverless-comfyui-proxy"):
        container = get(objs, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
        env = env_of(container)
        key = next(k for k in env if k.endswith("_NAMESPACES"))
        assert json.loads(env[key]) == [], f"{name} should watch every namespace"


def test_watch_namespaces_get_roles() -> None:
    objs = render(*VALUES_SETS["watch-namespaces"])
    roles = [
        (r["metadata"]["namespace"], r["metadata"]["name"]) for r in objs if r["kind"] == "Role"
    ]
    for namespace in (NAMESPACE, "team-a", "team-b"):
        assert (namespace, "serverless-comfyui-operator") in roles
        assert (namespace, "serverless-comfyui-proxy") in roles
    assert ("team-a", "serverless-comfyui-proxy-leases") not in roles
    operator = get(objs, "Deployment", "serverless-comfyui-operator")
    env = env_of(operator["spec"]["template"]["spec"]["containers"][0])
    assert json.loads(env["SERVERLESS_COMFYUI_NAMESPACES"]) == [NAMESPACE, "team-a", "team-b"]
    policies = [
        (p["metadata"]["namespace"], p["metadata"]["name"])
        for p in objs
        if p["kind"] == "NetworkPolicy"
    ]
    for namespace in (NAMESPACE, "team-a", "team-b"):
        assert (namespace, "serverless-comfyui-comfyui") in policies


def test_local_processes_keep_accounts_and_rbac(notes_chart: Path) -> None:
    objs = render(*VALUES_SETS["local-processes"])
    found = kinds(objs)
    assert "Deployment" not in found and "Service" not in found
    assert found["ServiceAccount"] == ["serverless-comfyui-operator", "serverless-comfyui-proxy"]
    assert found["Role"] == [
        "serverless-comfyui-operator",
        "serverless-comfyui-proxy",
        "serverless-comfyui-proxy-leases",
    ]
    assert found["ConfigMap"] == ["serverless-comfyui-profiles"]
    assert found["FluxWorkflow"] == ["serverless-comfyui"]
    text = notes(notes_chart, *VALUES_SETS["local-processes"])
    assert "proxy.enabled=false" in text and "operator.enabled=false" in text
    # Replicas 0 is the other way to keep the process out of the cluster.
    deployment = get(render("--set", "operator.replicas=0"), "Deployment", RELEASE + "-operator")
    assert deployment["spec"]["replicas"] == 0


# -- an exposed proxy -------------------------------------------------------------------------


def test_exposed_proxy() -> None:
    objs = render(*VALUES_SETS["exposed"])
    ingress = get(objs, "Ingress", "serverless-comfyui-proxy")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [
        {"secretName": "comfy-example-com-tls", "hosts": ["comfy.example.com"]}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "comfy.example.com"
    (path,) = rule["http"]["paths"]
    assert path["backend"]["service"] == {
        "name": "serverless-comfyui-proxy",
        "port": {"name": "http"},
    }
    annotations = ingress["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) > 600
    pdb = get(objs, "PodDisruptionBudget", "serverless-comfyui-proxy")
    assert pdb["spec"]["maxUnavailable"] == 1
    proxy = get(objs, "Deployment", "serverless-comfyui-proxy")
    assert pdb["spec"]["selector"]["matchLabels"] == proxy["spec"]["selector"]["matchLabels"]
    assert proxy["spec"]["replicas"] == 2
    pod = proxy["spec"]["template"]["spec"]
    env = env_of(pod["containers"][0])
    assert env["SERVERLESS_COMFYUI_PROXY_RATE_LIMIT_PER_MINUTE"] == "120"
    keys_file = Path(env["SERVERLESS_COMFYUI_PROXY_API_KEYS_FILE"])
    secret = get(objs, "Secret", "serverless-comfyui-proxy-api-keys")
    assert secret["stringData"][keys_file.name].split() == ["key-one", "key-two"]
    volume = next(v for v in pod["volumes"] if v["name"] == "api-keys")
    assert volume["secret"]["secretName"] == "serverless-comfyui-proxy-api-keys"
    annotations = proxy["spec"]["template"]["metadata"]["annotations"]
    assert re.fullmatch(r"[0-9a-f]{64}", annotations["checksum/api-keys"])
    hf = get(objs, "Secret", "serverless-comfyui-hf-token")
    assert hf["stringData"] == {"token": "hf_test_token_not_real"}
    spec = workflow_spec(objs, "flux")
    assert spec["huggingFaceTokenSecret"] == {"name": "serverless-comfyui-hf-token", "key": "token"}
    assert spec["resourceProfile"] == "gpu-h800-80gb-hbm3:2"
    assert (spec["minReplicas"], spec["maxReplicas"], spec["targetRequests"]) == (1, 4, 3)
    operator = get(objs, "Deployment", "serverless-comfyui-operator")
    env = env_of(operator["spec"]["template"]["spec"]["containers"][0])
    assert env["SERVERLESS_COMFYUI_PROXY_URL"] == "https://comfy.example.com"
    policy = get(objs, "NetworkPolicy", "serverless-comfyui-comfyui")
    assert policy["spec"]["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/component": "comfyui",
        "app.kubernetes.io/managed-by": "serverless-comfyui",
    }
    (peer,) = policy["spec"]["ingress"][0]["from"]
    assert peer["podSelector"]["matchLabels"] == proxy["spec"]["selector"]["matchLabels"]
    proxy_policy = get(objs, "NetworkPolicy", "serverless-comfyui-proxy")
    assert proxy_policy["spec"]["ingress"][0]["from"][0]["namespaceSelector"]


def test_notes_tell_how_to_use_it(notes_chart: Path) -> None:
    text = notes(notes_chart, *VALUES_SETS["exposed"])
    assert "curl -m 900 -X GET https://comfy.example.com/openai/api/system_stats" in text
    assert """-d '{"model": "flux"}'""" in text
    assert "-X POST https://comfy.example.com/openai/api/prompt" in text
    assert "Authorization: Bearer <api-key>" in text
    assert "https://comfy.example.com/ui/flux/" in text
    assert "COLD START" in text and "~34 GB" in text and "GPU node" in text
    assert "KEEPS it on `helm uninstall`" in text
    assert "kubectl delete crd fluxworkflows.serverless-comfyui.io" in text
    assert "WARNING: no Hugging Face token" not in text  # a token is set
    default = notes(notes_chart)
    assert "kubectl -n comfy port-forward svc/serverless-comfyui-proxy 8080:8080" in default
    assert """http://127.0.0.1:8080/openai/api/system_stats""" in default
    assert "WARNING: no Hugging Face token is set" in default
    assert "is kept on `helm uninstall`" in default
    off = notes(notes_chart, "--set", "crds.enabled=false")
    assert "not managed by this release (crds.enabled=false)" in off


# -- the CRD ----------------------------------------------------------------------------------


def test_crd_comes_from_the_generated_file_and_can_be_switched_off() -> None:
    assert not GENERATED_CRD.is_symlink()
    assert not (CHART / "crds").exists(), "the parent chart must not ship the CRD itself"
    generated = next(d for d in yaml.safe_load_all(GENERATED_CRD.read_text()) if d)
    crds = [o for o in render("--include-crds") if o["kind"] == "CustomResourceDefinition"]
    assert crds == [generated]  # once, unchanged
    off = render("--include-crds", "--set", "crds.enabled=false")
    assert "CustomResourceDefinition" not in kinds(off)
    assert "FluxWorkflow" in kinds(off)  # the default FluxWorkflow still renders
    show = helm("show", "crds", str(CHART))
    assert show.returncode == 0 and "name: fluxworkflows.serverless-comfyui.io" in show.stdout
    assert "CustomResourceDefinition" not in render_text()  # never a templated copy


def test_subchart_is_wired_to_crds_enabled() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    (dependency,) = chart["dependencies"]
    sub = yaml.safe_load((CHART / "charts" / "serverless-comfyui-crds" / "Chart.yaml").read_text())
    assert dependency == {
        "name": sub["name"],
        "alias": "crds",
        "version": sub["version"],
        "condition": "crds.enabled",
    }


# -- invalid values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            ["--set", "proxy.replicas=3"],
            ["proxy.replicas is 3 but proxy.api.storeUrl is empty"],
            id="replicas-need-redis",
        ),
        pytest.param(
            ["--set", "proxy.api.storeUrl=postgres://db"],
            ["/proxy/api/storeUrl"],
            id="store-url-scheme",
        ),
        pytest.param(
            ["--set", "model.resourceProfile=gpu_h100:1"],
            ["/model/resourceProfile", "'gpu_h100:1' does not match pattern"],
            id="resourceProfile-syntax",
        ),
        pytest.param(
            ["--set", "model.resourceProfile=gpu-h100-80gb-hbm3:0"],
            ["/model/resourceProfile", "does not match pattern"],
            id="resourceProfile-zero-gpus",
        ),
        pytest.param(
            ["--set", "model.resourceProfile=gpu-a100:1"],
            ['unknown profile "gpu-a100"', "known profiles: cpu, gpu-h100-80gb-hbm3"],
            id="resourceProfile-unknown",
        ),
        pytest.param(
            ["--set", "model.minReplicas=3", "--set", "model.maxReplicas=2"],
            ["model.minReplicas (3) must not exceed model.maxReplicas (2)"],
            id="min-above-max",
        ),
        pytest.param(
            ["--set", "model.replicaz=1"],
            ["at '/model'", "additional properties 'replicaz' not allowed"],
            id="unknown-key",
        ),
        pytest.param(
            ["--set", "proxy.ingress.hostname=x"],
            ["at '/proxy/ingress'", "additional properties 'hostname' not allowed"],
            id="unknown-nested-key",
        ),
        pytest.param(
            ["--set", "surprise=1"],
            ["additional properties 'surprise' not allowed"],
            id="unknown-top-level-key",
        ),
        pytest.param(
            ["--set-string", "model.maxReplicas=2"],
            ["at '/model/maxReplicas'", "got string, want integer"],
            id="wrong-type",
        ),
        pytest.param(
            ["--set", "proxy.enabled=yes-please"],
            ["at '/proxy/enabled'", "want boolean"],
            id="wrong-type-boolean",
        ),
        pytest.param(
            ["--set", "appName=Flux_Dev"],
            ["at '/appName'", "does not match pattern"],
            id="appName-not-dns",
        ),
        pytest.param(
            ["--set", "operator.replicas=2"],
            ["at '/operator/replicas'", "maximum"],
            id="two-operators",
        ),
        pytest.param(
            ["--set", "model.workflow.configMapRef.name=my-workflow"],
            ["model.workflow: set exactly one of name", "set model.workflow.name to null"],
            id="two-workflow-sources",
        ),
        pytest.param(
            ["-f", "-"],
            ["/model/volumeMounts/0/mountPath", "does not match pattern"],
            id="mount-of-unknown-folder",
        ),
    ],
)
def test_invalid_values_fail_readably(args: list[str], expected: list[str], tmp_path: Path) -> None:
    if args == ["-f", "-"]:
        values = tmp_path / "values.yaml"
        values.write_text(
            "model:\n  volumeMounts:\n"
            "    - {name: x, mountPath: /app/custom_nodes, subPath: apps/x/custom_nodes}\n"
        )
        args = ["-f", str(values)]
    error = render_error(*args)
    for fragment in expected:
        assert fragment in error, f"{fragment!r} not in:\n{error}"


def test_two_mounts_of_one_folder_fail_readably(tmp_path: Path) -> None:
    values = tmp_path / "values.yaml"
    values.write_text(
        "model:\n  volumeMounts:\n"
        "    - {name: a, mountPath: /app/models, subPath: one}\n"
        "    - {name: b, mountPath: /opt/models, subPath: two}\n"
    )
    error = render_error("-f", str(values))
    assert 'model.volumeMounts[1].mountPath "/opt/models": a second mount of the models' in error


# -- documentation and versions ---------------------------------------------------------------

# Maps whose keys are the user's (Kubernetes objects, profile names): documented as a whole.
FREE_FORM = {
    "resourceProfiles",
    "resources",
    "podSecurityContext",
    "securityContext",
    "annotations",
    "workflow",
}


def value_paths(values: dict[str, Any], prefix: str = "") -> Iterator[str]:
    for key, value in values.items():
        path = f"{prefix}.{key}" if prefix else key
        if isinstance(value, dict) and value and key not in FREE_FORM:
            yield from value_paths(value, path)
        else:
            yield path


def test_readme_documents_every_value() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    readme = (CHART / "README.md").read_text()
    section = readme.split("\n## Values\n", 1)[1].split("\n## ", 1)[0]
    rows = set(re.findall(r"^\| `([A-Za-z0-9_.-]+)` \|", section, flags=re.MULTILINE))
    paths = set(value_paths(values))
    assert len(paths) > 100
    assert not paths - rows, f"values missing from README.md's tables: {sorted(paths - rows)}"
    assert not rows - paths, f"README.md documents values that do not exist: {rows - paths}"
    profiles = readme.split("\n## Resource profiles\n", 1)[1].split("\n## ", 1)[0]
    for name in values["resourceProfiles"]:
        assert f"| `{name}` |" in profiles, f"profile {name} is not in README.md"


def read_versions_env() -> dict[str, str]:
    path = REPO / "images" / "versions.env"
    assert path.exists(), "images/versions.env is missing"
    found: dict[str, str] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, _, value = line.partition("=")
        found[key] = re.sub(r"\$\{(\w+)\}", lambda m: found[m.group(1)], value)
    return found


def test_default_images_match_versions_env() -> None:
    versions = read_versions_env()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    controller, devpod = values["images"]["controller"], values["images"]["devpod"]
    assert values["model"]["image"] == versions["COMFYUI_IMAGE"]
    assert f"{controller['repository']}:{controller['tag']}" == versions["CONTROLLER_IMAGE"]
    assert f"{devpod['repository']}:{devpod['tag']}" == versions["DEVPOD_IMAGE"]
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    assert chart["appVersion"] == versions["IMAGE_VERSION"]
    images: set[str] = set()
    for _, template in pod_templates(render()):
        images.update(c["image"] for c in template["spec"]["containers"])
    assert images == {versions["CONTROLLER_IMAGE"], versions["DEVPOD_IMAGE"]}
    operator = get(render(), "Deployment", "serverless-comfyui-operator")
    env = env_of(operator["spec"]["template"]["spec"]["containers"][0])
    assert env["SERVERLESS_COMFYUI_DOWNLOADER_IMAGE"] == versions["DEVPOD_IMAGE"]


def test_schema_is_strict_at_every_level() -> None:
    schema = json.loads((CHART / "values.schema.json").read_text())
    loose: list[str] = []

    def visit(node: Any, where: str) -> None:
        if isinstance(node, dict):
            is_closed_object = node.get("type") == "object" and "properties" in node
            if is_closed_object and node.get("additionalProperties") is not False:
                loose.append(where)
            for key, child in node.items():
                visit(child, f"{where}/{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                visit(child, f"{where}/{i}")

    visit(schema, "#")
    assert not loose, f"objects accepting unknown keys: {loose}"
    assert schema["additionalProperties"] is False


def test_proxy_keeps_generation_api_state_on_the_claim() -> None:
    """The API's file store and results live on the models claim (they must outlive the pod);
    a Redis URL and the webhook secret reach the proxy when set."""
    (deployment,) = [
        o for o in render() if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("proxy")
    ]
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["SERVERLESS_COMFYUI_API_STATE_DIR"]["value"] == "/var/lib/serverless-comfyui/api"
    assert "SERVERLESS_COMFYUI_API_STORE_URL" not in env
    mount = next(m for m in pod["containers"][0]["volumeMounts"] if m["name"] == "api-state")
    assert mount == {
        "name": "api-state",
        "mountPath": "/var/lib/serverless-comfyui/api",
        "subPath": "apps/serverless-comfyui/api",
    }
    volume = next(v for v in pod["volumes"] if v["name"] == "api-state")
    assert volume["persistentVolumeClaim"]["claimName"] == "pvc-capacity-userdata"

    (redis,) = [
        o
        for o in render(
            "--set", "proxy.api.storeUrl=redis://r:6379/0", "--set", "proxy.api.webhookSecret=hooks"
        )
        if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("proxy")
    ]
    env = {e["name"]: e for e in redis["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["SERVERLESS_COMFYUI_API_STORE_URL"]["value"] == "redis://r:6379/0"
    assert env["SERVERLESS_COMFYUI_API_WEBHOOK_SECRET"]["valueFrom"]["secretKeyRef"] == {
        "name": "hooks",
        "key": "webhook-secret",
    }
