"""Resource profiles: what `resourceProfile: gpu-h100-80gb-hbm3:1` means on a cluster.

A profile maps to a nodeSelector, tolerations, affinity, the GPU resource name, an optional
runtimeClassName and default requests. The chart writes the profiles into a ConfigMap the operator
reads; the defaults below are what an NVIDIA GPU-operator cluster with H100 / H800 nodes needs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel

GPU_TOLERATION = {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}


class ResourceProfile(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid")

    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)
    affinity: dict[str, Any] | None = None
    gpu_resource: str | None = "nvidia.com/gpu"
    """Extended resource multiplied by the profile's count; None for CPU-only profiles."""
    runtime_class_name: str | None = None
    requests: dict[str, str] = Field(default_factory=dict)
    limits: dict[str, str] = Field(default_factory=dict)


def _gpu(product: str | None, cpu: str, memory: str) -> ResourceProfile:
    return ResourceProfile(
        node_selector={"nvidia.com/gpu.product": product} if product else {},
        tolerations=[GPU_TOLERATION],
        requests={"cpu": cpu, "memory": memory},
    )


DEFAULT_PROFILES: dict[str, ResourceProfile] = {
    "gpu-h100-80gb-hbm3": _gpu("NVIDIA-H100-80GB-HBM3", "8", "64Gi"),
    "gpu-h800-80gb-hbm3": _gpu("NVIDIA-H800", "8", "64Gi"),
    "nvidia-gpu": _gpu(None, "4", "32Gi"),
    "cpu": ResourceProfile(gpu_resource=None, requests={"cpu": "2", "memory": "8Gi"}),
}


class UnknownProfileError(KeyError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(name)
        self.message = f"unknown resource profile {name!r}; known profiles: {', '.join(known)}"

    def __str__(self) -> str:
        return self.message


def load_profiles(path: Path | None) -> dict[str, ResourceProfile]:
    """The profiles from a YAML file (`{name: profile}`), or the defaults when path is None."""
    if path is None:
        return dict(DEFAULT_PROFILES)
    raw = yaml.safe_load(path.read_text()) or {}
    return {name: ResourceProfile.model_validate(value) for name, value in raw.items()}


def get_profile(profiles: dict[str, ResourceProfile], name: str) -> ResourceProfile:
    try:
        return profiles[name]
    except KeyError:
        raise UnknownProfileError(name, sorted(profiles)) from None
