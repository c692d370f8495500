"""Pure functions from a FluxWorkflow to the objects the operator owns: the workflow ConfigMap,
the model-download Job, the ComfyUI Deployment and its Service. No I/O: they return dicts ready
for server-side apply, so the reconcile is `apply(desired)` and repeating it changes nothing."""

from __future__ import annotations

import copy
import hashlib
import json
from typing import Any

from serverless_comfyui.controller.profiles import ResourceProfile
from serverless_comfyui.controller.settings import OperatorSettings
from serverless_comfyui.crd.models import API_VERSION, KIND, FluxWorkflowSpec

MANAGED_BY = "serverless-comfyui"
WORKFLOW_LABEL = "serverless-comfyui.io/workflow"
COMPONENT_LABEL = "app.kubernetes.io/component"
COMFYUI_COMPONENT = "comfyui"
DOWNLOADER_COMPONENT = "model-downloader"
MODELS_HASH_ANNOTATION = "serverless-comfyui.io/models-hash"
# ComfyUI folders in the image (images/comfyui/Dockerfile).
COMFYUI_HOME = "/opt/ComfyUI"
CONFIG_DIR = "/etc/serverless-comfyui"
MODELS_MOUNT = "/models"
# Every pod the operator makes meets the Pod Security Standards' `restricted` profile, so it
# runs in namespaces that enforce it (pod-security.kubernetes.io/enforce=restricted). The
# images run as 1000:1000; writable places are volumes (tmp, user, the claim's folders).
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": 1000,
    "runAsGroup": 1000,
    "fsGroup": 1000,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}


def owner_reference(name: str, uid: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "name": name,
        "uid": uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def labels(name: str, component: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "comfyui",
        "app.kubernetes.io/instance": name,
        COMPONENT_LABEL: component,
        "app.kubernetes.io/managed-by": MANAGED_BY,
        WORKFLOW_LABEL: name,
    }


def pod_selector(name: str) -> dict[str, str]:
    """Labels selecting the ComfyUI pods of one FluxWorkflow."""
    return {WORKFLOW_LABEL: name, COMPONENT_LABEL: COMFYUI_COMPONENT}


def selector_string(name: str) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(pod_selector(name).items()))


def _metadata(kind: str, name: str, namespace: str, uid: str, component: str) -> dict[str, Any]:
    """Metadata of the object of this kind owned by FluxWorkflow `name`."""
    return {
        "name": object_names(name)[kind],
        "namespace": namespace,
        "labels": labels(name, component),
        "ownerReferences": [owner_reference(name, uid)],
    }


def object_names(name: str) -> dict[str, str]:
    return {
        "deployment": f"{name}-comfyui",
        "service": name,
        "configmap": f"{name}-workflow",
        "job": f"{name}-models",
    }


def models_hash(spec: FluxWorkflowSpec) -> str:
    """Changes when the model list or the token changes: a new download Job is needed."""
    payload = {
        "models": [m.model_dump(mode="json", by_alias=True) for m in spec.models or []],
        "token": spec.hugging_face_token_secret.model_dump(by_alias=True)
        if spec.hugging_face_token_secret
        else None,
        "storage": spec.storage.model_dump(by_alias=True),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def workflow_configmap(
    name: str, namespace: str, uid: str, spec: FluxWorkflowSpec, served: str, warmup: str
) -> dict[str, Any]:
    """The workflow the pods serve, the graph they warm up with, and the download manifest."""
    meta = _metadata("configmap", name, namespace, uid, COMFYUI_COMPONENT)
    manifest = [m.model_dump(mode="json", by_alias=True, exclude_none=True) for m in spec.models]
    data = {
        "models.json": json.dumps(manifest, indent=2, sort_keys=True),
        "workflow.json": served,
        "warmup.json": warmup,
    }
    source = spec.workflow.model_dump(mode="json", by_alias=True, exclude_none=True)
    data["workflow-ref.json"] = json.dumps(source, sort_keys=True)
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": data}


def _models_volume(spec: FluxWorkflowSpec) -> dict[str, Any]:
    return {"name": "models", "persistentVolumeClaim": {"claimName": spec.storage.claim_name}}


def _placement(settings: OperatorSettings) -> dict[str, Any]:
    """The download Job's nodeSelector and tolerations (the chart's `downloadJob` values)."""
    placement: dict[str, Any] = {}
    if settings.downloader_node_selector:
        placement["nodeSelector"] = dict(settings.downloader_node_selector)
    if settings.downloader_tolerations:
        placement["tolerations"] = copy.deepcopy(settings.downloader_tolerations)
    return placement


def download_job(
    name: str, namespace: str, uid: str, spec: FluxWorkflowSpec, settings: OperatorSettings
) -> dict[str, Any]:
    """A CPU-only Job that downloads the models into the claim before any GPU pod starts."""
    meta = _metadata("job", name, namespace, uid, DOWNLOADER_COMPONENT)
    meta["annotations"] = {MODELS_HASH_ANNOTATION: models_hash(spec)}
    env: list[dict[str, Any]] = []
    token = spec.hugging_face_token_secret
    if token is not None:
        env.append(
            {
                "name": "HF_TOKEN",
                "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}},
            }
        )
    pod_labels = labels(name, DOWNLOADER_COMPONENT)
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "backoffLimit": 3,
            # The downloader exits 3 when retrying cannot help (bad token, 404, checksum).
            "podFailurePolicy": {
                "rules": [
                    {
                        "action": "FailJob",
                        "onExitCodes": {
                            "containerName": "downloader",
                            "operator": "In",
                            "values": [2, 3],
                        },
                    }
                ]
            },
            "template": {
                "metadata": {"labels": pod_labels},
                "spec": {
                    "restartPolicy": "Never",
                    **_placement(settings),
                    "securityContext": copy.deepcopy(POD_SECURITY),
                    "containers": [
                        {
                            "name": "downloader",
                            "image": settings.downloader_image,
                            "command": ["python", "-m", "serverless_comfyui.downloader"],
                            "args": [
                                f"--dest={MODELS_MOUNT}",
                                f"--manifest={CONFIG_DIR}/models.json",
                                "--termination-log=/dev/termination-log",
                                *(f"--token-host={h}" for h in settings.download_token_hosts),
                            ],
                            "env": env,
                            "resources": {
                                "requests": {"cpu": "500m", "memory": "512Mi"},
                                "limits": {"memory": "2Gi"},
                            },
                            "securityContext": copy.deepcopy(CONTAINER_SECURITY),
                            "terminationMessagePath": "/dev/termination-log",
                            "terminationMessagePolicy": "FallbackToLogsOnError",
                            "volumeMounts": [
                                {
                                    "name": "models",
                                    "mountPath": MODELS_MOUNT,
                                    "subPath": spec.storage.models_sub_path,
                                },
                                {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},
                            ],
                        }
                    ],
                    "volumes": [
                        _models_volume(spec),
                        {"name": "config", "configMap": {"name": object_names(name)["configmap"]}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _resources(spec: FluxWorkflowSpec, profile: ResourceProfile) -> dict[str, Any]:
    _, count = spec.gpu_profile()
    requests: dict[str, Any] = dict(profile.requests)
    limits: dict[str, Any] = dict(profile.limits)
    if spec.resources is not None:
        requests.update(spec.resources.requests or {})
        limits.update(spec.resources.limits or {})
    if profile.gpu_resource:
        # Only the GPU is multiplied by the profile's count; extended resources need
        # requests == limits, so set the limit (the API server copies it to requests).
        limits[profile.gpu_resource] = str(count)
        requests.pop(profile.gpu_resource, None)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def _volume_mounts(spec: FluxWorkflowSpec) -> list[dict[str, Any]]:
    mounts: list[dict[str, Any]] = [
        {
            "name": "models",
            "mountPath": f"{COMFYUI_HOME}/models",
            "subPath": spec.storage.models_sub_path,
            "readOnly": True,
        },
        {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
        {"name": "tmp", "mountPath": "/tmp"},
        # ComfyUI's settings and database: writable, and the root filesystem is read-only.
        {"name": "user", "mountPath": f"{COMFYUI_HOME}/user"},
    ]
    for folder, sub_path in (
        ("input", spec.storage.input_sub_path),
        ("output", spec.storage.output_sub_path),
    ):
        mount: dict[str, Any] = {"name": folder, "mountPath": f"{COMFYUI_HOME}/{folder}"}
        if sub_path is not None:
            mount = {**mount, "name": "models", "subPath": sub_path}
        mounts.append(mount)
    return mounts


def _volumes(name: str, spec: FluxWorkflowSpec) -> list[dict[str, Any]]:
    volumes: list[dict[str, Any]] = [
        _models_volume(spec),
        {"name": "config", "configMap": {"name": object_names(name)["configmap"]}},
        {"name": "tmp", "emptyDir": {}},
        {"name": "user", "emptyDir": {}},
    ]
    if spec.storage.input_sub_path is None:
        volumes.append({"name": "input", "emptyDir": {}})
    if spec.storage.output_sub_path is None:
        volumes.append({"name": "output", "emptyDir": {}})
    return volumes


# What the entrypoint needs after its drain: stopping ComfyUI (CHILD_STOP_TIMEOUT_SECONDS).
STOP_SECONDS = 10


def _drain_seconds(spec: FluxWorkflowSpec) -> int:
    return max(0, spec.termination_grace_period_seconds - STOP_SECONDS)


def comfyui_deployment(
    name: str,
    namespace: str,
    uid: str,
    spec: FluxWorkflowSpec,
    profile: ResourceProfile,
    settings: OperatorSettings,
    replicas: int,
) -> dict[str, Any]:
    """The ComfyUI pods. Readiness comes from the image's entrypoint, which reports Ready only
    after the warm-up workflow has loaded the weights; preStop drains the pod's queue."""
    health = settings.health_port
    pod_spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": spec.termination_grace_period_seconds,
        "enableServiceLinks": False,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "nodeSelector": spec.node_selector
        if spec.node_selector is not None
        else profile.node_selector,
        "tolerations": [t.model_dump(by_alias=True, exclude_none=True) for t in spec.tolerations]
        if spec.tolerations is not None
        else profile.tolerations,
        "containers": [
            {
                "name": "comfyui",
                "image": spec.image,
                "ports": [
                    {"name": "http", "containerPort": spec.port},
                    {"name": "health", "containerPort": health},
                ],
                "env": [
                    {"name": "COMFYUI_PORT", "value": str(spec.port)},
                    {"name": "HEALTH_PORT", "value": str(health)},
                    {"name": "WARMUP_WORKFLOW", "value": f"{CONFIG_DIR}/warmup.json"},
                    # The drain ends before the grace period does, leaving ComfyUI time to stop.
                    {"name": "DRAIN_TIMEOUT_SECONDS", "value": str(_drain_seconds(spec))},
                    *[e.model_dump(by_alias=True, exclude_none=True) for e in spec.env or []],
                ],
                "resources": _resources(spec, profile),
                "readinessProbe": {
                    "httpGet": {"path": "/readyz", "port": "health"},
                    "periodSeconds": 2,
                    "failureThreshold": 2,
                },
                "livenessProbe": {
                    "httpGet": {"path": "/livez", "port": "health"},
                    "periodSeconds": 10,
                    "failureThreshold": 3,
                },
                "startupProbe": {
                    "httpGet": {"path": "/livez", "port": "health"},
                    "periodSeconds": 5,
                    # Flux weights are ~34 GB: allow up to 30 minutes to start and warm up.
                    "failureThreshold": 360,
                },
                "lifecycle": {"preStop": {"httpGet": {"path": "/drain", "port": "health"}}},
                "securityContext": copy.deepcopy(CONTAINER_SECURITY),
                "volumeMounts": _volume_mounts(spec),
            }
        ],
        "volumes": _volumes(name, spec),
    }
    if profile.affinity:
        pod_spec["affinity"] = profile.affinity
    if profile.runtime_class_name:
        pod_spec["runtimeClassName"] = profile.runtime_class_name
    meta = _metadata("deployment", name, namespace, uid, COMFYUI_COMPONENT)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta,
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": pod_selector(name)},
            # New pods must be warm before old ones go: never drop below the running count.
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0}},
            "template": {
                "metadata": {
                    "labels": labels(name, COMFYUI_COMPONENT),
                    "annotations": dict(spec.pod_annotations or {}),
                },
                "spec": pod_spec,
            },
        },
    }


def comfyui_service(name: str, namespace: str, uid: str, spec: FluxWorkflowSpec) -> dict[str, Any]:
    """A headless Service naming the pods (the proxy itself routes by watching Pods)."""
    meta = _metadata("service", name, namespace, uid, COMFYUI_COMPONENT)
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {
            "clusterIP": "None",
            "selector": pod_selector(name),
            "ports": [{"name": "http", "port": spec.port, "targetPort": "http"}],
            "publishNotReadyAddresses": False,
        },
    }
