"""An async Kubernetes client for a test world's kubeconfig (tests and benchmarks)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from kubernetes_asyncio import client, config


@contextlib.asynccontextmanager
async def kube_api(kubeconfig: Path) -> AsyncIterator[client.ApiClient]:
    """One client per event loop: each async test has its own loop."""
    configuration = client.Configuration()
    await config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    async with client.ApiClient(configuration) as api:
        yield api
