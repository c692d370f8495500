"""The test world: a real Kubernetes control plane on loopback with fake GPU nodes (KWOK) and
emulated ComfyUI pods. It stands in for a GPU cluster in tests and in `make up`; see
controlplane.py for what is real and podrunner.py for what is emulated."""

from serverless_comfyui.testworld import components
from serverless_comfyui.testworld.controlplane import MissingToolError, TestWorld, find_tools_bin

__all__ = ["MissingToolError", "TestWorld", "components", "find_tools_bin"]
