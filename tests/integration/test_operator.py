"""The operator on the real control plane: FluxWorkflow -> Job -> Deployment, status, scale."""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from conftest import FileServer
from serverless_comfyui.crd.models import GROUP, PLURAL, VERSION
from serverless_comfyui.testworld import TestWorld
from serverless_comfyui.testworld.nodes import H100_PRODUCT
from serverless_comfyui.testworld.processes import ManagedProcess

FLUX_MODELS = [
    {
        "name": "flux1-dev.safetensors",
        "url": "http://127.0.0.1:9/flux1-dev.safetensors",
        "dir": "diffusion_models",
    },
    {"name": "ae.safetensors", "url": "http://127.0.0.1:9/ae.safetensors", "dir": "vae"},
]


def flux_workflow(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "FluxWorkflow",
        "metadata": {"name": name},
        "spec": {
            "image": "ghcr.io/serverless-comfyui/comfyui:test",
            "resourceProfile": "gpu-h100-80gb-hbm3:1",
            "workflow": {"name": "flux_dev_t5fp8"},
            **spec,
        },
    }


async def get_fw(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    api = client.CustomObjectsApi(kube)
    obj: dict[str, Any] = await api.get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


async def wait_fw(
    kube: client.ApiClient,
    namespace: str,
    name: str,
    check: Callable[[dict[str, Any]], bool],
    seconds: float = 30,
) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for _ in range(int(seconds * 10)):
        obj = await get_fw(kube, namespace, name)
        if check(obj):
            return obj
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"FluxWorkflow {name} never reached the expected state: {obj.get('status')}"
    )


def phase(expected: str) -> Callable[[dict[str, Any]], bool]:
    return lambda obj: obj.get("status", {}).get("phase") == expected


async def create_fw(kube: client.ApiClient, namespace: str, body: dict[str, Any]) -> None:
    api = client.CustomObjectsApi(kube)
    await api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)


async def test_scaled_to_zero_workflow_gets_a_gpu_deployment_with_zero_replicas(
    kube: client.ApiClient, namespace: str, operator: ManagedProcess, models_claim: Path
) -> None:
    await create_fw(kube, namespace, flux_workflow("idle"))
    obj = await wait_fw(kube, namespace, "idle", phase("ScaledToZero"))
    status = obj["status"]
    assert status["observedGeneration"] == obj["metadata"]["generation"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["ModelsReady"]["status"] == "True"
    assert conditions["Ready"]["reason"] == "ScaledToZero"
    assert status["replicas"] == 0

    apps = client.AppsV1Api(kube)
    deployment = await apps.read_namespaced_deployment("idle-comfyui", namespace)
    assert deployment.spec.replicas == 0
    pod = deployment.spec.template.spec
    assert pod.node_selector == {"nvidia.com/gpu.product": H100_PRODUCT}
    assert [t.key for t in pod.tolerations] == ["nvidia.com/gpu"]
    assert pod.containers[0].resources.limits["nvidia.com/gpu"] == "1"
    assert deployment.metadata.owner_references[0].kind == "FluxWorkflow"
    cm = await client.CoreV1Api(kube).read_namespaced_config_map("idle-workflow", namespace)
    graph = json.loads(cm.data["workflow.json"])
    assert {n["class_type"] for n in graph.values()} >= {"UNETLoader", "SaveImage"}


async def test_models_download_for_real_before_any_gpu_pod(
    kube: client.ApiClient,
    namespace: str,
    operator: ManagedProcess,
    models_claim: Path,
    file_server: FileServer,
) -> None:
    """The Job runs the real downloader (via the pod runner) against a local HTTP server; the
    files land in the claim; only then does the GPU Deployment appear."""
    unet_url, unet_sha = file_server.add("flux1-dev.safetensors", os.urandom(300_000))
    vae_url, _ = file_server.add("ae.safetensors", os.urandom(50_000))
    models = [
        {
            "name": "flux1-dev.safetensors",
            "url": unet_url,
            "dir": "diffusion_models",
            "sha256": unet_sha,
        },
        {"name": "ae.safetensors", "url": vae_url, "dir": "vae"},
    ]
    apps = client.AppsV1Api(kube)
    await create_fw(kube, namespace, flux_workflow("dl", models=models))
    seen_phases = set()

    def downloaded(obj: dict[str, Any]) -> bool:
        seen_phases.add(obj.get("status", {}).get("phase"))
        return obj.get("status", {}).get("phase") == "ScaledToZero"

    obj = await wait_fw(kube, namespace, "dl", downloaded, seconds=60)
    assert "Downloading" in seen_phases
    on_disk = models_claim / "apps/serverless-comfyui/models"
    assert (on_disk / "diffusion_models/flux1-dev.safetensors").stat().st_size == 300_000
    assert (on_disk / "vae/ae.safetensors").stat().st_size == 50_000
    assert not list(on_disk.rglob("*.part"))
    states = {m["name"]: m for m in obj["status"]["models"]}
    assert states["flux1-dev.safetensors"]["verified"] is True
    assert states["flux1-dev.safetensors"]["bytes"] == 300_000
    assert states["ae.safetensors"]["bytes"] == 50_000
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["ModelsReady"]
    assert ready["status"] == "True" and ready["reason"] == "Downloaded"
    deployment = await apps.read_namespaced_deployment("dl-comfyui", namespace)
    assert deployment.spec.replicas == 0


async def test_gated_model_reports_missing_then_wrong_token(
    kube: client.ApiClient,
    namespace: str,
    operator: ManagedProcess,
    models_claim: Path,
    file_server: FileServer,
) -> None:
    file_server.token = "hf_right"
    url, _ = file_server.add("flux1-dev.safetensors", os.urandom(1000))
    models = [{"name": "flux1-dev.safetensors", "url": url, "dir": "diffusion_models"}]
    token = {"name": "hf-token"}
    await create_fw(
        kube, namespace, flux_workflow("gated", models=models, huggingFaceTokenSecret=token)
    )
    obj = await wait_fw(kube, namespace, "gated", phase("Failed"))
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["Ready"]
    assert ready["reason"] == "SecretNotFound" and "hf-token" in ready["message"]

    core = client.CoreV1Api(kube)
    await core.create_namespaced_secret(
        namespace,
        client.V1Secret(
            metadata=client.V1ObjectMeta(name="hf-token"), string_data={"token": "hf_wrong"}
        ),
    )

    def download_failed(obj: dict[str, Any]) -> bool:
        conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        return conditions.get("ModelsReady", {}).get("reason") == "DownloadFailed"

    # The resync timer (or the Secret's next reconcile) notices the Secret; give it a nudge by
    # touching the spec, as a user fixing their resource would.
    api = client.CustomObjectsApi(kube)
    await api.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        namespace,
        PLURAL,
        "gated",
        {"spec": {"scaleDownDelaySeconds": 31}},
        _content_type="application/merge-patch+json",
    )
    obj = await wait_fw(kube, namespace, "gated", download_failed, seconds=60)
    assert obj["status"]["phase"] == "Failed"
    (state,) = obj["status"]["models"]
    assert "authentication failed" in state["error"]
    assert not (
        models_claim / "apps/serverless-comfyui/models/diffusion_models/flux1-dev.safetensors"
    ).exists()
    # The permanent failure failed the Job at once (podFailurePolicy): one attempt, no retries.
    pods = await core.list_namespaced_pod(namespace, label_selector="job-name=gated-models")
    assert len(pods.items) == 1


async def test_missing_claim_is_reported(
    kube: client.ApiClient, namespace: str, operator: ManagedProcess
) -> None:
    await create_fw(kube, namespace, flux_workflow("noclaim"))
    obj = await wait_fw(kube, namespace, "noclaim", phase("Failed"))
    ready = next(c for c in obj["status"]["conditions"] if c["type"] == "Ready")
    assert ready["reason"] == "ClaimNotFound"
    assert "pvc-capacity-userdata" in ready["message"]
    events = await client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector="involvedObject.name=noclaim"
    )
    assert any(e.reason == "ClaimNotFound" and e.type == "Warning" for e in events.items)


async def test_invalid_workflows_rejected_by_api_server(
    kube: client.ApiClient, namespace: str, crd: Any
) -> None:
    cases = {
        "bad profile": ({"resourceProfile": "H100"}, "resourceProfile must be"),
        "min > max": ({"minReplicas": 3, "maxReplicas": 1}, "minReplicas must not exceed"),
        "model without url": (
            {"models": [{"name": "a.safetensors", "dir": "vae"}]},
            "spec.models[0].url: Required value",
        ),
    }
    for case, (spec, message) in cases.items():
        body = flux_workflow("bad", **spec)
        try:
            await create_fw(kube, namespace, body)
        except ApiException as exc:
            assert exc.status == 422, case
            assert message in exc.body, (case, exc.body)
        else:
            raise AssertionError(f"{case}: accepted")


async def test_scale_subresource_is_clamped(
    kube: client.ApiClient,
    namespace: str,
    operator: ManagedProcess,
    world: TestWorld,
    models_claim: Path,
) -> None:
    await create_fw(kube, namespace, flux_workflow("scaled", maxReplicas=2))
    await wait_fw(kube, namespace, "scaled", phase("ScaledToZero"))
    result = world.kubectl("-n", namespace, "scale", "fw/scaled", "--replicas=5")
    assert result.returncode == 0, result.stderr
    apps = client.AppsV1Api(kube)
    for _ in range(100):
        deployment = await apps.read_namespaced_deployment("scaled-comfyui", namespace)
        if deployment.spec.replicas == 2:
            break
        await asyncio.sleep(0.1)
    assert deployment.spec.replicas == 2


async def test_unschedulable_gpu_request_is_explained_in_status_and_events(
    kube: client.ApiClient, namespace: str, operator: ManagedProcess, models_claim: Path
) -> None:
    """9 GPUs per pod: no fake node has that many; `kubectl describe fw` must say why."""
    body = flux_workflow("toobig", resourceProfile="gpu-h100-80gb-hbm3:9", minReplicas=1)
    await create_fw(kube, namespace, body)

    def unschedulable(obj: dict[str, Any]) -> bool:
        conditions = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
        return conditions.get("Ready", {}).get("reason") == "Unschedulable"

    obj = await wait_fw(kube, namespace, "toobig", unschedulable)
    assert obj["status"]["phase"] == "Starting"
    ready = {c["type"]: c for c in obj["status"]["conditions"]}["Ready"]
    assert "Insufficient nvidia.com/gpu" in ready["message"]
    events = await client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector="involvedObject.name=toobig"
    )
    assert any(e.reason == "Unschedulable" and e.type == "Warning" for e in events.items)


async def test_warm_replicas_become_ready_only_after_warm_up_and_scale(
    kube: client.ApiClient,
    namespace: str,
    operator: ManagedProcess,
    models_claim: Path,
    world: TestWorld,
) -> None:
    """minReplicas: 1 gives one Ready pod on the H100 node, Ready only once the image's
    entrypoint has run the warm-up graph; `kubectl scale` gives more, clamped to max."""
    body = flux_workflow("warm", workflow={"name": "warmup"}, minReplicas=1, maxReplicas=2)
    await create_fw(kube, namespace, body)
    obj = await wait_fw(kube, namespace, "warm", phase("Ready"), seconds=60)
    assert obj["status"]["readyReplicas"] == 1
    core = client.CoreV1Api(kube)
    pods = (
        await core.list_namespaced_pod(namespace, label_selector=obj["status"]["selector"])
    ).items
    assert [p.spec.node_name for p in pods] == ["gpu-h100-0"]
    # The warm-up run left its output under warmup/ in the pod's output folder.
    output = world.state_dir / "pods" / namespace / pods[0].metadata.name / "emptydir" / "output"
    assert list((output / "warmup").rglob("*.png")), f"no warm-up output in {output}"

    result = world.kubectl("-n", namespace, "scale", "fw/warm", "--replicas=5")
    assert result.returncode == 0, result.stderr

    def two_ready(obj: dict[str, Any]) -> bool:
        return obj.get("status", {}).get("readyReplicas") == 2

    obj = await wait_fw(kube, namespace, "warm", two_ready, seconds=60)
    assert obj["spec"]["replicas"] == 5 and obj["status"]["phase"] == "Ready"
    deployment = await client.AppsV1Api(kube).read_namespaced_deployment("warm-comfyui", namespace)
    assert deployment.spec.replicas == 2


async def test_deletion_removes_owned_objects_and_keeps_the_models(
    kube: client.ApiClient,
    namespace: str,
    operator: ManagedProcess,
    models_claim: Path,
    file_server: FileServer,
) -> None:
    url, _ = file_server.add("ae.safetensors", os.urandom(10_000))
    models = [{"name": "ae.safetensors", "url": url, "dir": "vae"}]
    await create_fw(kube, namespace, flux_workflow("gone", models=models))
    await wait_fw(kube, namespace, "gone", phase("ScaledToZero"), seconds=60)
    model_file = models_claim / "apps/serverless-comfyui/models/vae/ae.safetensors"
    assert model_file.stat().st_size == 10_000

    api = client.CustomObjectsApi(kube)
    await api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "gone")
    apps, core, batch = client.AppsV1Api(kube), client.CoreV1Api(kube), client.BatchV1Api(kube)
    selector = "serverless-comfyui.io/workflow=gone"
    # The garbage collector learns about a new CRD at its 30 s discovery resync: allow for it.
    for _ in range(600):
        remaining = (
            (await apps.list_namespaced_deployment(namespace, label_selector=selector)).items
            + (await core.list_namespaced_service(namespace, label_selector=selector)).items
            + (await core.list_namespaced_config_map(namespace, label_selector=selector)).items
            + (await batch.list_namespaced_job(namespace, label_selector=selector)).items
        )
        if not remaining:
            break
        await asyncio.sleep(0.1)
    assert not remaining, [o.metadata.name for o in remaining]
    # The user's claim and the downloaded weights are untouched.
    claim = await core.read_namespaced_persistent_volume_claim("pvc-capacity-userdata", namespace)
    assert claim.metadata.deletion_timestamp is None
    assert model_file.stat().st_size == 10_000
