"""The operator's pods meet the Pod Security Standards' `restricted` profile (the chart's
namespace may enforce it; tests/integration/test_real_node_chart.py runs them there)."""

from __future__ import annotations

from typing import Any

import pytest

from serverless_comfyui.controller.builders import comfyui_deployment, download_job
from serverless_comfyui.controller.profiles import ResourceProfile
from serverless_comfyui.controller.settings import OperatorSettings
from serverless_comfyui.crd.models import FluxWorkflowSpec

SPEC = FluxWorkflowSpec.model_validate(
    {
        "image": "ghcr.io/serverless-comfyui/comfyui:0.1.0-comfyui-v0.8.0",
        "resourceProfile": "gpu-h100-80gb-hbm3:1",
        "workflow": {"name": "warmup"},
        "models": [{"name": "a.safetensors", "url": "https://example.com/a", "dir": "checkpoints"}],
    }
)


def pod_templates() -> dict[str, dict[str, Any]]:
    settings = OperatorSettings()
    deployment = comfyui_deployment(
        "app", "ns", "uid", SPEC, ResourceProfile(), settings, replicas=1
    )
    job = download_job("app", "ns", "uid", SPEC, settings)
    return {
        "comfyui": deployment["spec"]["template"]["spec"],
        "downloader": job["spec"]["template"]["spec"],
    }


@pytest.mark.parametrize("which", ["comfyui", "downloader"])
def test_pods_are_restricted(which: str) -> None:
    pod = pod_templates()[which]
    assert pod["securityContext"] == {
        "runAsNonRoot": True,
        "runAsUser": 1000,
        "runAsGroup": 1000,
        "fsGroup": 1000,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    for container in pod["containers"]:
        assert container["securityContext"] == {
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        }
    assert not any("hostPath" in volume for volume in pod["volumes"])


def test_comfyui_writes_only_to_volumes() -> None:
    """With a read-only root, ComfyUI's writable folders are mounts."""
    (container,) = pod_templates()["comfyui"]["containers"]
    mounted = {m["mountPath"]: m.get("readOnly", False) for m in container["volumeMounts"]}
    for writable in ("/tmp", "/opt/ComfyUI/user", "/opt/ComfyUI/input", "/opt/ComfyUI/output"):
        assert mounted.get(writable) is False, writable
    assert mounted["/opt/ComfyUI/models"] is True


def test_built_pods_do_not_share_their_security_contexts() -> None:
    first, second = pod_templates(), pod_templates()
    first["comfyui"]["securityContext"]["runAsUser"] = 0
    assert second["comfyui"]["securityContext"]["runAsUser"] == 1000


def test_the_download_job_goes_where_the_settings_say() -> None:
    toleration = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
    settings = OperatorSettings(
        downloader_node_selector={"pool": "cpu"}, downloader_tolerations=[toleration]
    )
    pod = download_job("app", "ns", "uid", SPEC, settings)["spec"]["template"]["spec"]
    assert pod["nodeSelector"] == {"pool": "cpu"} and pod["tolerations"] == [toleration]
    anywhere = download_job("app", "ns", "uid", SPEC, OperatorSettings())
    assert not {"nodeSelector", "tolerations"} & anywhere["spec"]["template"]["spec"].keys()


def test_the_chart_passes_the_download_job_placement_as_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SERVERLESS_COMFYUI_DOWNLOADER_NODE_SELECTOR", '{"pool": "cpu"}')
    monkeypatch.setenv("SERVERLESS_COMFYUI_DOWNLOADER_TOLERATIONS", "[]")
    settings = OperatorSettings()
    assert settings.downloader_node_selector == {"pool": "cpu"}
    assert settings.downloader_tolerations == []


def test_the_drain_ends_before_the_grace_period() -> None:
    spec = SPEC.model_copy(update={"termination_grace_period_seconds": 120})
    deployment = comfyui_deployment(
        "app", "ns", "uid", spec, ResourceProfile(), OperatorSettings(), replicas=1
    )
    pod = deployment["spec"]["template"]["spec"]
    env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
    assert pod["terminationGracePeriodSeconds"] == 120
    assert env["DRAIN_TIMEOUT_SECONDS"] == "110"
