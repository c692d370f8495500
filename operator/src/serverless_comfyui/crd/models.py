"""The FluxWorkflow custom resource as pydantic models: the one source of truth.

The CRD YAML in the chart is generated from these models (`python -m serverless_comfyui.crd`),
so every constraint lives here twice at most: as a pydantic constraint (checked in Python) and,
where the JSON schema cannot say it, as a CEL rule (`x-kubernetes-validations`) that mirrors a
pydantic validator. Field names are snake_case in Python and camelCase on the wire.

Docstrings of models and fields become the `description` of the CRD schema nodes, so write them
for the person running `kubectl explain fluxworkflow.spec`.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    WithJsonSchema,
    model_validator,
)
from pydantic.alias_generators import to_camel

GROUP = "serverless-comfyui.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "FluxWorkflow"
PLURAL = "fluxworkflows"
SINGULAR = "fluxworkflow"
SHORT_NAMES = ("fw",)
CRD_NAME = f"{PLURAL}.{GROUP}"

# --------------------------------------------------------------------------------------------
# Patterns shared by pydantic and the CRD. They are written for both Python `re` and RE2 (the
# regex engine of the API server's OpenAPI `pattern` and CEL `matches`): no look-arounds.
# --------------------------------------------------------------------------------------------

#: `<profile>:<count>`: the GPU resource label without `nvidia.com/` and the GPU count.
PROFILE_PATTERN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?:[1-9][0-9]*$"
PROFILE_MESSAGE = (
    "resourceProfile must be '<profile>:<count>' with a lowercase profile name "
    "(letters, digits, '-') and a GPU count >= 1, e.g. 'gpu-h100-80gb-hbm3:1'"
)
#: A DNS-1123 subdomain: names of Secrets, ConfigMaps, PersistentVolumeClaims.
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
#: A DNS-1035 label: names of Services (the operator names its objects after the resource).
DNS1035_LABEL = r"^[a-z]([-a-z0-9]*[a-z0-9])?$"
#: A key in a ConfigMap or Secret.
CONFIG_KEY = r"^[-._a-zA-Z0-9]+$"
#: A model file name: no path separators, not hidden (`.part` files and the downloader's
#: `.serverless-comfyui` folder start with a dot).
MODEL_NAME_PATTERN = r"^[^./\\][^/\\]*$"
HTTP_URL_PATTERN = r"^https?://[^\s/?#]+[^\s]*$"
SHA256_PATTERN = r"^[0-9a-fA-F]{64}$"
#: A relative path inside the claim: segments of safe characters, no leading or trailing '/'.
SUBPATH_PATTERN = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
#: A `..` path segment anywhere (refused: a subPath must stay inside the claim).
DOTDOT_SEGMENT = r"(^|/)[.][.](/|$)"
#: A name in the workflows library shipped with the proxy, e.g. `flux_dev_t5fp8`.
WORKFLOW_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"
QUANTITY_PATTERN = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|"
    r"([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# metav1.Condition, as controller-gen writes it.
CONDITION_TYPE_PATTERN = (
    r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
    r"(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
)
CONDITION_REASON_PATTERN = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

MIN_MAX_MESSAGE = "minReplicas must not exceed maxReplicas"
WORKFLOW_SOURCE_MESSAGE = "exactly one of name and configMapRef must be set"
SUBPATH_MESSAGE = "must be a relative path inside the claim without '..' segments"
NAME_MESSAGE = (
    "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a "
    "letter, at most 63 characters): it names the Deployment and the Service"
)


def cel(rule: str, message: str, **extra: str) -> dict[str, Any]:
    """One `x-kubernetes-validations` entry."""
    return {"rule": rule, "message": message, **extra}


def cel_rules(*rules: dict[str, Any]) -> dict[str, Any]:
    """`json_schema_extra` carrying CEL rules."""
    return {"x-kubernetes-validations": list(rules)}


def _cel_string(pattern: str) -> str:
    """A regex as a CEL single-quoted string literal (our CEL patterns need no escaping)."""
    if "'" in pattern or "\\" in pattern:  # pragma: no cover - none of ours has one
        raise ValueError(f"pattern {pattern!r} needs escaping in CEL")
    return f"'{pattern}'"


# --------------------------------------------------------------------------------------------
# Reusable field types
# --------------------------------------------------------------------------------------------


def _check_profile(value: str) -> str:
    if not re.fullmatch(PROFILE_PATTERN, value):
        raise ValueError(PROFILE_MESSAGE)
    return value


def _check_subpath(value: str) -> str:
    if re.search(DOTDOT_SEGMENT, value):
        raise ValueError(SUBPATH_MESSAGE)
    return value


ResourceProfile = Annotated[
    str,
    Field(
        max_length=253,
        json_schema_extra=cel_rules(
            cel(f"self.matches({_cel_string(PROFILE_PATTERN)})", PROFILE_MESSAGE)
        ),
    ),
    AfterValidator(_check_profile),
]
SubPath = Annotated[
    str,
    Field(
        pattern=SUBPATH_PATTERN,
        max_length=1024,
        json_schema_extra=cel_rules(
            cel(f"!self.matches({_cel_string(DOTDOT_SEGMENT)})", SUBPATH_MESSAGE)
        ),
    ),
    AfterValidator(_check_subpath),
]
ObjectName = Annotated[str, Field(pattern=DNS1123_SUBDOMAIN, min_length=1, max_length=253)]
ConfigKey = Annotated[str, Field(pattern=CONFIG_KEY, min_length=1, max_length=253)]
Int32 = Annotated[int, Field(ge=0, le=2**31 - 1, json_schema_extra={"format": "int32"})]
PositiveInt32 = Annotated[int, Field(ge=1, le=2**31 - 1, json_schema_extra={"format": "int32"})]
Int64 = Annotated[int, Field(ge=0, json_schema_extra={"format": "int64"})]
Quantity = Annotated[
    int | Annotated[str, Field(pattern=QUANTITY_PATTERN)],
    WithJsonSchema(
        {
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
            "x-kubernetes-int-or-string": True,
        }
    ),
]
"""A Kubernetes resource quantity: `4`, `"500m"`, `"64Gi"`."""
Timestamp = Annotated[
    AwareDatetime,
    PlainSerializer(
        lambda t: t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        return_type=str,
        when_used="json",
    ),
]
"""An RFC 3339 time with a zone, written in UTC to the second like metav1.Time."""


def parse_profile(profile: str) -> tuple[str, int]:
    """Split a resource profile: `"gpu-h100-80gb-hbm3:2"` -> `("gpu-h100-80gb-hbm3", 2)`.

    Raises `ValueError` with the same message as the CRD's validation when it is malformed.
    """
    _check_profile(profile)
    name, _, count = profile.rpartition(":")
    return name, int(count)


class CrdModel(BaseModel):
    """Base: camelCase on the wire, snake_case in Python, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        use_attribute_docstrings=True,
        extra="forbid",
    )

    def wire(self) -> dict[str, Any]:
        """The JSON-ready camelCase dict, without unset optional fields (`None`)."""
        return self.model_dump(mode="json", exclude_none=True)


# --------------------------------------------------------------------------------------------
# spec
# --------------------------------------------------------------------------------------------


class ModelDir(StrEnum):
    """A ComfyUI model folder (under `ComfyUI/models`)."""

    DIFFUSION_MODELS = "diffusion_models"
    TEXT_ENCODERS = "text_encoders"
    VAE = "vae"
    LORAS = "loras"
    CHECKPOINTS = "checkpoints"
    CLIP_VISION = "clip_vision"
    UPSCALE_MODELS = "upscale_models"
    CONTROLNET = "controlnet"
    UNET = "unet"
    CLIP = "clip"


class ModelFile(CrdModel):
    """A model file to download into the models volume (also one entry of the downloader's
    manifest)."""

    name: Annotated[str, Field(pattern=MODEL_NAME_PATTERN, min_length=1, max_length=255)]
    """File name inside its folder, e.g. `flux1-dev.safetensors` (no '/', not hidden)."""
    url: Annotated[str, Field(pattern=HTTP_URL_PATTERN, min_length=1, max_length=4096)]
    """Where to download it from (http or https), e.g. a Hugging Face `resolve` URL."""
    dir: ModelDir
    """ComfyUI model folder it belongs in."""
    sha256: Annotated[str | None, Field(pattern=SHA256_PATTERN)] = None
    """Expected SHA-256 of the file (64 hex characters); when set the download is verified."""


class SecretKeyRef(CrdModel):
    """A key of a Secret in the same namespace."""

    name: ObjectName
    """Name of the Secret."""
    key: ConfigKey = "token"
    """Key in the Secret holding the value."""


class ConfigMapKeyRef(CrdModel):
    """A key of a ConfigMap in the same namespace."""

    name: ObjectName
    """Name of the ConfigMap."""
    key: ConfigKey = "workflow.json"
    """Key in the ConfigMap holding the workflow (ComfyUI API format JSON)."""


_ONE_SOURCE = cel_rules(cel("has(self.name) != has(self.configMapRef)", WORKFLOW_SOURCE_MESSAGE))


class WorkflowSource(CrdModel):
    """A ComfyUI workflow in API format: a library name or a ConfigMap key (exactly one)."""

    model_config = ConfigDict(json_schema_extra=_ONE_SOURCE)

    name: Annotated[str | None, Field(pattern=WORKFLOW_NAME_PATTERN, max_length=253)] = None
    """Name of a workflow in the workflows library, e.g. `flux_dev_t5fp8`."""
    config_map_ref: ConfigMapKeyRef | None = None
    """A workflow stored in a ConfigMap."""

    @model_validator(mode="after")
    def _exactly_one(self) -> WorkflowSource:
        if (self.name is None) == (self.config_map_ref is None):
            raise ValueError(WORKFLOW_SOURCE_MESSAGE)
        return self


class WorkflowRef(WorkflowSource):
    """The workflow this application serves, and the warm-up run that makes a pod Ready."""

    model_config = ConfigDict(json_schema_extra=_ONE_SOURCE)

    warmup: WorkflowSource | None = None
    """Workflow run once at pod start to load the weights before the pod reports Ready;
    unset: the operator derives a minimal run of the served workflow."""


class Storage(CrdModel):
    """Where models, inputs and outputs live: sub-paths of one PersistentVolumeClaim."""

    claim_name: ObjectName = "pvc-capacity-userdata"
    """PersistentVolumeClaim holding the models (the seed platform mounts only this claim)."""
    models_sub_path: SubPath = "apps/serverless-comfyui/models"
    """Folder in the claim mounted as `ComfyUI/models`."""
    input_sub_path: SubPath | None = None
    """Folder in the claim mounted as `ComfyUI/input`; unset: an emptyDir per pod."""
    output_sub_path: SubPath | None = None
    """Folder in the claim mounted as `ComfyUI/output` (shared outputs let any proxy replica
    serve `/view`); unset: an emptyDir per pod."""


class Toleration(CrdModel):
    """A Kubernetes Toleration (core/v1), copied to the ComfyUI pods."""

    key: str | None = None
    """Taint key to match; empty with operator Exists matches all taints."""
    operator: str | None = None
    """`Exists` or `Equal` (default `Equal`); checked by the API server on the pods."""
    value: str | None = None
    """Taint value to match (with `Equal`)."""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] | None = None
    """Taint effect to match; empty matches all effects."""
    toleration_seconds: Annotated[int | None, Field(json_schema_extra={"format": "int64"})] = None
    """For NoExecute: how long the pod stays bound after the taint appears."""


class ResourceRequirements(CrdModel):
    """CPU and memory (or other) requests and limits for the ComfyUI container. The GPU count
    comes from `resourceProfile`."""

    requests: dict[str, Quantity] | None = None
    """Minimum resources, e.g. `{cpu: "8", memory: 64Gi}`."""
    limits: dict[str, Quantity] | None = None
    """Maximum resources, e.g. `{memory: 96Gi}`."""


class EnvVar(CrdModel):
    """An environment variable of the ComfyUI container."""

    name: Annotated[str, Field(min_length=1, max_length=1024)]
    """Variable name."""
    value: str | None = None
    """Variable value (empty when unset)."""


_MIN_MAX = cel_rules(
    cel("self.minReplicas <= self.maxReplicas", MIN_MAX_MESSAGE, fieldPath=".minReplicas")
)


class FluxWorkflowSpec(CrdModel):
    """Desired state of a serverless ComfyUI application."""

    model_config = ConfigDict(json_schema_extra=_MIN_MAX)

    image: Annotated[str, Field(min_length=1, max_length=1024)]
    """ComfyUI container image."""
    resource_profile: ResourceProfile
    """GPU profile and count per pod, `<profile>:<count>`: the node label (without
    `nvidia.com/`) and the number of GPUs, e.g. `gpu-h100-80gb-hbm3:1`."""
    node_selector: dict[str, str] | None = None
    """Per-workflow node selector; replaces the one derived from the profile and the chart."""
    tolerations: Annotated[list[Toleration] | None, Field(max_length=64)] = None
    """Per-workflow tolerations; replace the chart's defaults."""
    pod_annotations: dict[str, str] | None = None
    """Extra annotations on the ComfyUI pods (e.g. for metrics scraping or sidecar injection)."""
    replicas: Int32 = 0
    """Replicas the autoscaler asks for (the `/scale` subresource). The operator runs
    `min(max(replicas, minReplicas), maxReplicas)` pods."""
    min_replicas: Int32 = 0
    """Replicas kept warm; 0 lets the application scale to zero when idle."""
    max_replicas: PositiveInt32 = 1
    """Most replicas the autoscaler may start."""
    target_requests: PositiveInt32 = 5
    """Average outstanding prompts (queued or running) per pod the autoscaler aims for."""
    scale_down_delay_seconds: Int32 = 30
    """Idle time (no request, prompt or open session) before scaling down."""
    models: Annotated[
        list[ModelFile],
        Field(
            max_length=64,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = Field(default_factory=list)
    """Model files to download into the models folder before the first pod starts
    (names are unique)."""
    hugging_face_token_secret: SecretKeyRef | None = None
    """Secret holding a Hugging Face token, for gated models such as FLUX.1-dev."""
    storage: Storage = Field(default_factory=Storage, json_schema_extra={"default": {}})
    """Volumes for models, inputs and outputs."""
    workflow: WorkflowRef
    """The workflow served and used for warm-up."""
    resources: ResourceRequirements | None = None
    """Requests and limits overrides for the ComfyUI container."""
    env: Annotated[
        list[EnvVar] | None,
        Field(
            max_length=256,
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            },
        ),
    ] = None
    """Extra environment variables of the ComfyUI container."""
    port: Annotated[int, Field(ge=1, le=65535, json_schema_extra={"format": "int32"})] = 8188
    """Port ComfyUI listens on."""
    termination_grace_period_seconds: Annotated[
        int, Field(ge=0, json_schema_extra={"format": "int64"})
    ] = 600
    """Time a pod being removed gets to finish its queued and running prompts."""

    @model_validator(mode="after")
    def _check(self) -> FluxWorkflowSpec:
        if self.min_replicas > self.max_replicas:
            raise ValueError(MIN_MAX_MESSAGE)
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"duplicate model names: {', '.join(duplicates)}")
        env_names = [e.name for e in self.env or []]
        if len(env_names) != len(set(env_names)):
            raise ValueError("duplicate env names")
        return self

    def gpu_profile(self) -> tuple[str, int]:
        """`(profile, count)` from `resource_profile`."""
        return parse_profile(self.resource_profile)

    def effective_replicas(self, replicas: int | None = None) -> int:
        """Pods to run for `replicas` (default `self.replicas`), clamped to [min, max]."""
        wanted = self.replicas if replicas is None else replicas
        return min(max(wanted, self.min_replicas), self.max_replicas)


# --------------------------------------------------------------------------------------------
# status
# --------------------------------------------------------------------------------------------


class Phase(StrEnum):
    """Lifecycle phase of the application."""

    PENDING = "Pending"
    DOWNLOADING = "Downloading"
    SCALED_TO_ZERO = "ScaledToZero"
    STARTING = "Starting"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class Condition(CrdModel):
    """A metav1.Condition: one aspect of the current state."""

    type: Annotated[str, Field(pattern=CONDITION_TYPE_PATTERN, max_length=316)]
    """Condition type in CamelCase, e.g. `Ready`, `ModelsReady`."""
    status: Literal["True", "False", "Unknown"]
    """`True`, `False` or `Unknown`."""
    observed_generation: Int64 | None = None
    """`metadata.generation` the condition was set for."""
    last_transition_time: Timestamp
    """When the condition last changed status."""
    reason: Annotated[str, Field(pattern=CONDITION_REASON_PATTERN, min_length=1, max_length=1024)]
    """Machine-readable CamelCase reason of the last transition."""
    message: Annotated[str, Field(max_length=32768)] = ""
    """Human-readable details."""

    @classmethod
    def now(
        cls,
        type: str,
        status: bool | Literal["True", "False", "Unknown"],
        reason: str,
        message: str = "",
        observed_generation: int | None = None,
    ) -> Condition:
        """A condition that changed now; `status` may be a bool."""
        text = status if isinstance(status, str) else ("True" if status else "False")
        return cls(
            type=type,
            status=text,
            reason=reason,
            message=message,
            observed_generation=observed_generation,
            last_transition_time=datetime.now(UTC).replace(microsecond=0),
        )


class ModelStatus(CrdModel):
    """Download state of one model file."""

    name: str
    """File name, as in `spec.models`."""
    bytes: Int64 = 0
    """Bytes on the volume so far."""
    total_bytes: Int64 | None = None
    """Size of the file, when the server told."""
    verified: bool = False
    """The file is complete and matched `sha256`."""
    error: str | None = None
    """Why the last download attempt failed."""


class FluxWorkflowStatus(CrdModel):
    """Observed state, written by the operator."""

    phase: Phase | None = None
    """Lifecycle phase."""
    conditions: Annotated[
        list[Condition] | None,
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["type"],
            }
        ),
    ] = None
    """Current conditions (one per type)."""
    replicas: Int32 | None = None
    """Pods that exist (the `/scale` subresource's status)."""
    ready_replicas: Int32 | None = None
    """Pods that are Ready (warmed up)."""
    selector: str | None = None
    """Label selector of the pods, serialized (the `/scale` subresource's selector)."""
    models: Annotated[
        list[ModelStatus] | None,
        Field(
            json_schema_extra={
                "x-kubernetes-list-type": "map",
                "x-kubernetes-list-map-keys": ["name"],
            }
        ),
    ] = None
    """Per-model download state."""
    endpoint: str | None = None
    """Where clients reach the application (through the proxy)."""
    observed_generation: Int64 | None = None
    """`metadata.generation` of the spec this status describes."""

    def condition(self, type: str) -> Condition | None:
        """The condition of that type, if any."""
        return next((c for c in self.conditions or [] if c.type == type), None)

    def set_condition(self, condition: Condition) -> bool:
        """Add or replace the condition of its type, keeping `lastTransitionTime` when the
        status did not change. Returns whether anything changed."""
        current = self.condition(condition.type)
        if current is not None and current.status == condition.status:
            condition = condition.model_copy(
                update={"last_transition_time": current.last_transition_time}
            )
        if current == condition:
            return False
        others = [c for c in self.conditions or [] if c.type != condition.type]
        self.conditions = [*others, condition]
        return True


# --------------------------------------------------------------------------------------------
# the whole object
# --------------------------------------------------------------------------------------------


class FluxWorkflow(CrdModel):
    """A ComfyUI (Flux) application that scales to zero when idle."""

    model_config = ConfigDict(extra="ignore")

    api_version: Literal["serverless-comfyui.io/v1alpha1"] = "serverless-comfyui.io/v1alpha1"
    kind: Literal["FluxWorkflow"] = "FluxWorkflow"
    metadata: dict[str, Any] = Field(default_factory=dict)
    spec: FluxWorkflowSpec
    status: FluxWorkflowStatus | None = None

    @model_validator(mode="after")
    def _check_name(self) -> FluxWorkflow:
        name = self.metadata.get("name")
        if isinstance(name, str) and not (len(name) <= 63 and re.fullmatch(DNS1035_LABEL, name)):
            raise ValueError(NAME_MESSAGE)
        return self


#: Root-level rule of the CRD (mirrors `FluxWorkflow._check_name`; the CRD caps the length with
#: `maxLength: 63` on metadata.name).
NAME_RULE = cel(
    f"self.metadata.name.matches({_cel_string(DNS1035_LABEL)})",
    NAME_MESSAGE,
    fieldPath=".metadata.name",
)
