"""The fake nodes of the test world: GPU nodes shaped like real H100 / H800 nodes (NVIDIA GPU
operator labels, `nvidia.com/gpu` capacity, the usual GPU taint) and one CPU-only node."""

from __future__ import annotations

from typing import Any

# KWOK manages only nodes carrying this annotation.
FAKE_NODE_ANNOTATION = "kwok.x-k8s.io/node"
GPU_TAINT = {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
H100_PRODUCT = "NVIDIA-H100-80GB-HBM3"
H800_PRODUCT = "NVIDIA-H800"
# Real kubelet nodes (realnode.py) are named real-h100-<i>; the pod runner leaves their pods alone.
REAL_NODE_PREFIX = "real-"


def _node(
    name: str, cpu: str, memory: str, labels: dict[str, str], gpus: int = 0
) -> dict[str, Any]:
    capacity = {"cpu": cpu, "memory": memory, "pods": "110", "ephemeral-storage": "1Ti"}
    spec: dict[str, Any] = {}
    if gpus:
        capacity["nvidia.com/gpu"] = str(gpus)
        spec["taints"] = [GPU_TAINT]
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {FAKE_NODE_ANNOTATION: "fake"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
                **labels,
            },
        },
        "spec": spec,
        "status": {"capacity": capacity, "allocatable": capacity},
    }


def gpu_labels(product: str, gpus: int) -> dict[str, str]:
    return {
        "nvidia.com/gpu.present": "true",
        "nvidia.com/gpu.product": product,
        "nvidia.com/gpu.count": str(gpus),
        "nvidia.com/gpu.memory": "81559",
    }


def fake_nodes() -> list[dict[str, Any]]:
    """One H100 node and one H800 node with 8 GPUs each, and one CPU-only node."""
    return [
        _node("gpu-h100-0", "208", "1800Gi", gpu_labels(H100_PRODUCT, 8), gpus=8),
        _node("gpu-h800-0", "192", "1800Gi", gpu_labels(H800_PRODUCT, 8), gpus=8),
        _node("cpu-0", "16", "64Gi", {"node-role.kubernetes.io/cpu": ""}),
    ]
