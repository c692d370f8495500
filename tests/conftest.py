"""Shared fixtures. `world` is the real control plane (session scope); tests that use it are
marked `cluster` automatically. A missing tool fails the run with a clear message: it never
skips."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kubernetes_asyncio import client, config

from serverless_comfyui.testworld import MissingToolError, TestWorld, find_tools_bin

FIXTURES = Path(__file__).parent / "fixtures"
COMFYUI_FIXTURES = FIXTURES / "comfyui-0.8.0"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "world" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cluster)


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestWorld]:
    try:
        tools = find_tools_bin()
    except MissingToolError as exc:
        pytest.fail(str(exc), pytrace=False)
    test_world = TestWorld(state_dir=tmp_path_factory.mktemp("world"), tools_bin=tools)
    test_world.start()
    try:
        yield test_world
    finally:
        test_world.stop()


@pytest.fixture
async def kube(world: TestWorld) -> AsyncIterator[client.ApiClient]:
    """An async Kubernetes client for the test world (one per test: each test has its loop)."""
    configuration = client.Configuration()
    await config.load_kube_config(
        config_file=str(world.kubeconfig), client_configuration=configuration
    )
    async with client.ApiClient(configuration) as api:
        yield api


@pytest.fixture
async def namespace(kube: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace, deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused until the ServiceAccount controller has created `default`.
    for _ in range(100):
        accounts = await core.list_namespaced_service_account(name)
        if any(sa.metadata.name == "default" for sa in accounts.items):
            break
        await asyncio.sleep(0.1)
    yield name
    await core.delete_namespace(name, propagation_policy="Background")
