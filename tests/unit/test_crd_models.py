"""The FluxWorkflow pydantic models: what they accept, refuse and write on the wire."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from serverless_comfyui.crd import (
    API_VERSION,
    GROUP,
    KIND,
    PLURAL,
    VERSION,
    Condition,
    ConfigMapKeyRef,
    FluxWorkflow,
    FluxWorkflowSpec,
    FluxWorkflowStatus,
    ModelDir,
    ModelFile,
    ModelStatus,
    Phase,
    WorkflowRef,
    parse_profile,
)
from serverless_comfyui.crd.models import MIN_MAX_MESSAGE, PROFILE_MESSAGE

HF = "https://huggingface.co"
FLUX_DEV_SHA = "a" * 64


def seed_spec() -> dict[str, Any]:
    """The seed chart's values (appName serverless-comfyui, gpu-h100-80gb-hbm3:1, 0..1 replicas,
    targetRequests 5, scaleDownDelaySeconds 30, PVC pvc-capacity-userdata) with the Flux.1-dev
    model files, as a user would write the FluxWorkflow."""
    return {
        "image": "registry.example.com/vc-app_market/comfyui:pytorch2.6-cuda124-root-0.0.1",
        "resourceProfile": "gpu-h100-80gb-hbm3:1",
        "minReplicas": 0,
        "maxReplicas": 1,
        "targetRequests": 5,
        "scaleDownDelaySeconds": 30,
        "storage": {
            "claimName": "pvc-capacity-userdata",
            "modelsSubPath": "apps/serverless-comfyui/models",
            "outputSubPath": "apps/serverless-comfyui/output",
        },
        "models": [
            {
                "name": "flux1-dev.safetensors",
                "url": f"{HF}/black-forest-labs/FLUX.1-dev/resolve/main/flux1-dev.safetensors",
                "dir": "diffusion_models",
                "sha256": FLUX_DEV_SHA,
            },
            {
                "name": "t5xxl_fp8_e4m3fn.safetensors",
                "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/"
                "t5xxl_fp8_e4m3fn.safetensors?download=true",
                "dir": "text_encoders",
            },
            {
                "name": "clip_l.safetensors",
                "url": f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                "dir": "text_encoders",
            },
            {
                "name": "ae.safetensors",
                "url": f"{HF}/black-forest-labs/FLUX.1-schnell/resolve/main/ae.safetensors",
                "dir": "vae",
            },
        ],
        "huggingFaceTokenSecret": {"name": "hf-token"},
        "workflow": {"name": "flux_dev_t5fp8"},
    }


def minimal_spec() -> dict[str, Any]:
    return {
        "image": "comfyui:latest",
        "resourceProfile": "gpu-h100-80gb-hbm3:1",
        "workflow": {"name": "flux_dev_t5fp8"},
    }


def errors_of(exc: pytest.ExceptionInfo[ValidationError]) -> str:
    return "\n".join(f"{e['loc']}: {e['msg']}" for e in exc.value.errors())


def test_constants() -> None:
    assert (GROUP, VERSION, KIND, PLURAL) == (
        "serverless-comfyui.io",
        "v1alpha1",
        "FluxWorkflow",
        "fluxworkflows",
    )
    assert API_VERSION == "serverless-comfyui.io/v1alpha1"


def test_seed_example_validates_and_round_trips() -> None:
    spec = FluxWorkflowSpec.model_validate(seed_spec())
    assert spec.resource_profile == "gpu-h100-80gb-hbm3:1"
    assert spec.gpu_profile() == ("gpu-h100-80gb-hbm3", 1)
    assert spec.storage.claim_name == "pvc-capacity-userdata"
    assert spec.models[0].dir is ModelDir.DIFFUSION_MODELS
    assert spec.hugging_face_token_secret is not None
    assert spec.hugging_face_token_secret.key == "token"
    wire = spec.wire()
    assert wire["resourceProfile"] == "gpu-h100-80gb-hbm3:1"
    assert wire["scaleDownDelaySeconds"] == 30
    assert wire["storage"]["modelsSubPath"] == "apps/serverless-comfyui/models"
    assert "inputSubPath" not in wire["storage"]  # unset optional fields stay off the wire
    assert FluxWorkflowSpec.model_validate(wire) == spec


def test_defaults() -> None:
    spec = FluxWorkflowSpec.model_validate(minimal_spec())
    assert (spec.replicas, spec.min_replicas, spec.max_replicas) == (0, 0, 1)
    assert spec.target_requests == 5
    assert spec.scale_down_delay_seconds == 30
    assert spec.port == 8188
    assert spec.termination_grace_period_seconds == 600
    assert spec.storage.claim_name == "pvc-capacity-userdata"
    assert spec.storage.models_sub_path == "apps/serverless-comfyui/models"
    assert spec.storage.input_sub_path is None and spec.storage.output_sub_path is None
    assert spec.models == []
    assert spec.node_selector is None and spec.tolerations is None


def test_python_names_are_accepted_too() -> None:
    spec = FluxWorkflowSpec(
        image="comfyui",
        resource_profile="gpu-h800:8",
        workflow=WorkflowRef(config_map_ref=ConfigMapKeyRef(name="my-workflow")),
    )
    assert spec.wire()["workflow"] == {
        "configMapRef": {"name": "my-workflow", "key": "workflow.json"}
    }


def test_min_replicas_must_not_exceed_max() -> None:
    with pytest.raises(ValidationError) as exc:
        FluxWorkflowSpec.model_validate({**minimal_spec(), "minReplicas": 2, "maxReplicas": 1})
    assert MIN_MAX_MESSAGE in errors_of(exc)
    FluxWorkflowSpec.model_validate({**minimal_spec(), "minReplicas": 2, "maxReplicas": 2})


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("maxReplicas", 0),
        ("minReplicas", -1),
        ("replicas", -1),
        ("targetRequests", 0),
        ("scaleDownDelaySeconds", -5),
        ("port", 0),
        ("port", 70000),
        ("terminationGracePeriodSeconds", -1),
        ("image", ""),
    ],
)
def test_bounds(field: str, value: Any) -> None:
    with pytest.raises(ValidationError):
        FluxWorkflowSpec.model_validate({**minimal_spec(), field: value})


@pytest.mark.parametrize("required", ["image", "resourceProfile", "workflow"])
def test_required(required: str) -> None:
    spec = minimal_spec()
    del spec[required]
    with pytest.raises(ValidationError):
        FluxWorkflowSpec.model_validate(spec)


def test_unknown_fields_are_refused() -> None:
    with pytest.raises(ValidationError):
        FluxWorkflowSpec.model_validate({**minimal_spec(), "minReplica": 1})


@pytest.mark.parametrize(
    "profile", ["gpu-h100-80gb-hbm3:1", "gpu-h800:8", "a:1", "gpu-h100-80gb-hbm3:16"]
)
def test_good_profiles(profile: str) -> None:
    FluxWorkflowSpec.model_validate({**minimal_spec(), "resourceProfile": profile})
    name, count = parse_profile(profile)
    assert f"{name}:{count}" == profile


@pytest.mark.parametrize(
    "profile",
    [
        "gpu-h100-80gb-hbm3",
        "gpu-h100-80gb-hbm3:0",
        "gpu-h100-80gb-hbm3:01",
        "nvidia.com/gpu-h100:1",
        "GPU-H100:1",
        "-gpu:1",
        "gpu-:1",
        ":1",
        "gpu:1:2",
        "gpu: 1",
        "gpu:1\n",
        "",
    ],
)
def test_bad_profiles(profile: str) -> None:
    with pytest.raises(ValidationError) as exc:
        FluxWorkflowSpec.model_validate({**minimal_spec(), "resourceProfile": profile})
    assert PROFILE_MESSAGE in errors_of(exc)
    with pytest.raises(ValueError, match="resourceProfile must be"):
        parse_profile(profile)


def test_parse_profile() -> None:
    assert parse_profile("gpu-h100-80gb-hbm3:2") == ("gpu-h100-80gb-hbm3", 2)


@pytest.mark.parametrize(
    "workflow",
    [
        {},
        {"name": "flux_dev_t5fp8", "configMapRef": {"name": "wf"}},
        {"name": "flux_dev_t5fp8", "warmup": {}},
        {"name": "flux_dev_t5fp8", "warmup": {"name": "a", "configMapRef": {"name": "wf"}}},
        {"name": "bad name"},
        {"configMapRef": {"name": "Not_A_DNS_Name"}},
    ],
)
def test_bad_workflow_refs(workflow: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        FluxWorkflowSpec.model_validate({**minimal_spec(), "workflow": workflow})


def test_workflow_ref_with_warmup() -> None:
    spec = FluxWorkflowSpec.model_validate(
        {
            **minimal_spec(),
            "workflow": {
                "configMapRef": {"name": "my-workflows", "key": "flux.json"},
                "warmup": {"name": "empty_image"},
            },
        }
    )
    assert spec.workflow.config_map_ref is not None
    assert spec.workflow.config_map_ref.key == "flux.json"
    assert spec.workflow.warmup is not None and spec.workflow.warmup.name == "empty_image"


@pytest.mark.parametrize(
    "model",
    [
        {"name": "a/b.safetensors", "url": "https://x/y", "dir": "vae"},
        {"name": "..", "url": "https://x/y", "dir": "vae"},
        {"name": ".hidden", "url": "https://x/y", "dir": "vae"},
        {"name": "a\\b", "url": "https://x/y", "dir": "vae"},
        {"name": "", "url": "https://x/y", "dir": "vae"},
        {"name": "a", "url": "", "dir": "vae"},
        {"name": "a", "url": "ftp://x/y", "dir": "vae"},
        {"name": "a", "url": "https://", "dir": "vae"},
        {"name": "a", "url": "file:///etc/passwd", "dir": "vae"},
        {"name": "a", "url": "https://x/y", "dir": "custom_nodes"},
        {"name": "a", "url": "https://x/y", "dir": "vae", "sha256": "abc"},
        {"name": "a", "url": "https://x/y", "dir": "vae", "sha256": "g" * 64},
        {"name": "a", "url": "https://x/y"},
    ],
)
def test_bad_model_files(model: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ModelFile.model_validate(model)


def test_good_model_file() -> None:
    model = ModelFile.model_validate(
        {"name": "My LoRA (v2).safetensors", "url": "http://10.0.0.1:8080/x?y=1", "dir": "loras"}
    )
    assert model.wire() == {
        "name": "My LoRA (v2).safetensors",
        "url": "http://10.0.0.1:8080/x?y=1",
        "dir": "loras",
    }
    assert {d.value for d in ModelDir} == {
        "diffusion_models",
        "text_encoders",
        "vae",
        "loras",
        "checkpoints",
        "clip_vision",
        "upscale_models",
        "controlnet",
        "unet",
        "clip",
    }


def test_duplicate_model_names_are_refused() -> None:
    spec = seed_spec()
    spec["models"].append({**spec["models"][0], "dir": "unet"})
    with pytest.raises(ValidationError, match=r"duplicate model names: flux1-dev\.safetensors"):
        FluxWorkflowSpec.model_validate(spec)


@pytest.mark.parametrize(
    "sub_path", ["/abs/path", "a/../b", "..", "a/..", "a//b", "a/", "has space", ""]
)
def test_bad_sub_paths(sub_path: str) -> None:
    with pytest.raises(ValidationError):
        FluxWorkflowSpec.model_validate({**minimal_spec(), "storage": {"modelsSubPath": sub_path}})


@pytest.mark.parametrize("sub_path", ["models", "apps/serverless-comfyui/models", "a/..b/c"])
def test_good_sub_paths(sub_path: str) -> None:
    FluxWorkflowSpec.model_validate({**minimal_spec(), "storage": {"inputSubPath": sub_path}})


def test_overrides() -> None:
    spec = FluxWorkflowSpec.model_validate(
        {
            **minimal_spec(),
            "nodeSelector": {"nvidia.com/gpu.product": "NVIDIA-H800"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"},
                {"operator": "Exists", "tolerationSeconds": 30, "effect": "NoExecute"},
            ],
            "resources": {"requests": {"cpu": 8, "memory": "64Gi"}, "limits": {"cpu": "16500m"}},
            "env": [{"name": "COMFYUI_ARGS", "value": "--fast"}, {"name": "EMPTY"}],
        }
    )
    wire = spec.wire()
    assert wire["tolerations"][1] == {
        "operator": "Exists",
        "tolerationSeconds": 30,
        "effect": "NoExecute",
    }
    assert wire["resources"] == {
        "requests": {"cpu": 8, "memory": "64Gi"},
        "limits": {"cpu": "16500m"},
    }
    assert wire["env"] == [{"name": "COMFYUI_ARGS", "value": "--fast"}, {"name": "EMPTY"}]


@pytest.mark.parametrize("quantity", ["lots", "1.5.3", "64 Gi", "-"])
def test_bad_quantities(quantity: str) -> None:
    with pytest.raises(ValidationError):
        FluxWorkflowSpec.model_validate(
            {**minimal_spec(), "resources": {"limits": {"cpu": quantity}}}
        )


def test_bad_toleration_effect() -> None:
    with pytest.raises(ValidationError):
        FluxWorkflowSpec.model_validate({**minimal_spec(), "tolerations": [{"effect": "Never"}]})


def test_effective_replicas() -> None:
    spec = FluxWorkflowSpec.model_validate({**minimal_spec(), "minReplicas": 1, "maxReplicas": 3})
    assert spec.effective_replicas() == 1  # replicas defaults to 0: min wins
    assert spec.effective_replicas(2) == 2
    assert spec.effective_replicas(9) == 3


def test_status_wire_shape() -> None:
    status = FluxWorkflowStatus(
        phase=Phase.DOWNLOADING,
        replicas=0,
        ready_replicas=0,
        selector="app.kubernetes.io/instance=flux",
        models=[ModelStatus(name="flux1-dev.safetensors", bytes=10, total_bytes=100)],
        observed_generation=3,
    )
    status.set_condition(Condition.now("ModelsReady", False, "Downloading", "1 of 4 files"))
    wire = status.wire()
    assert wire["phase"] == "Downloading"
    assert wire["readyReplicas"] == 0
    assert wire["models"] == [
        {"name": "flux1-dev.safetensors", "bytes": 10, "totalBytes": 100, "verified": False}
    ]
    condition = wire["conditions"][0]
    assert condition["status"] == "False"
    assert condition["lastTransitionTime"].endswith("Z")
    assert datetime.strptime(condition["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")
    assert FluxWorkflowStatus.model_validate(wire) == status
    assert FluxWorkflowStatus().wire() == {}
    assert {p.value for p in Phase} == {
        "Pending",
        "Downloading",
        "ScaledToZero",
        "Starting",
        "Ready",
        "Degraded",
        "Failed",
    }


def test_set_condition_keeps_transition_time_while_status_is_unchanged() -> None:
    status = FluxWorkflowStatus()
    first = Condition.now("Ready", True, "Warm")
    first = first.model_copy(
        update={"last_transition_time": first.last_transition_time - timedelta(hours=1)}
    )
    assert status.set_condition(first)
    assert not status.set_condition(first)
    assert status.set_condition(Condition.now("Ready", True, "Warm", "still warm"))
    current = status.condition("Ready")
    assert current is not None
    assert current.last_transition_time == first.last_transition_time
    assert current.message == "still warm"
    assert status.set_condition(Condition.now("Ready", False, "ScaledToZero"))
    current = status.condition("Ready")
    assert current is not None and current.last_transition_time > first.last_transition_time
    assert len(status.conditions or []) == 1


def test_condition_shape_is_checked() -> None:
    now = datetime.now(UTC)
    with pytest.raises(ValidationError):
        Condition(type="Ready", status="Maybe", reason="X", last_transition_time=now)
    with pytest.raises(ValidationError):
        Condition(type="Ready", status="True", reason="not a reason", last_transition_time=now)
    with pytest.raises(ValidationError):  # naive times are ambiguous
        Condition(type="Ready", status="True", reason="X", last_transition_time=datetime.now())


def test_whole_object() -> None:
    obj = FluxWorkflow.model_validate(
        {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "metadata": {"name": "serverless-comfyui", "namespace": "default", "generation": 1},
            "spec": seed_spec(),
            "status": {"phase": "ScaledToZero", "replicas": 0},
        }
    )
    assert obj.status is not None and obj.status.phase is Phase.SCALED_TO_ZERO
    with pytest.raises(ValidationError, match="DNS-1035"):
        FluxWorkflow.model_validate({"metadata": {"name": "flux.dev"}, "spec": seed_spec()})
    with pytest.raises(ValidationError, match="DNS-1035"):
        FluxWorkflow.model_validate({"metadata": {"name": "a" * 64}, "spec": seed_spec()})
