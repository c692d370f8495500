"""The contract between the request path and discovery.

The request path reads applications and pods from the `Registry`; a `Control` fills it and wakes
applications. Two implementations: `static.StaticControl` (fixed backends, no Kubernetes) and
`kube.KubeControl` (watches FluxWorkflows and Pods, patches the scale subresource, autoscales).
Both are built as `Control(settings, registry)`; the proxy application calls `start()` when it
starts serving and `stop()` when it shuts down.
"""

from __future__ import annotations

from typing import Protocol

from serverless_comfyui.proxy.registry import App


class Control(Protocol):
    async def start(self) -> None:
        """Begin discovery (and autoscaling); returns once started, not once synced."""

    async def stop(self) -> None:
        """Stop everything start() began."""

    async def wake(self, app: App) -> None:
        """Make a scaled-to-zero application start now. Called by every held request, so it
        must return fast and be idempotent."""

    @property
    def synced(self) -> bool:
        """Discovery has its initial state (the proxy is ready, /readyz answers 200)."""
        ...
