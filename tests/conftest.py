"""Shared fixtures. `world` is the real control plane (session scope); tests that use it are
marked `cluster` automatically. A missing tool fails the run with a clear message: it never
skips."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from aiohttp import web
from kubernetes_asyncio import client

from serverless_comfyui.testworld import MissingToolError, TestWorld, components, find_tools_bin
from serverless_comfyui.testworld.kubeclient import kube_api
from serverless_comfyui.testworld.processes import ManagedProcess, wait_until
from serverless_comfyui.testworld.waiters import create_hostpath_claim

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
    async with kube_api(world.kubeconfig) as api:
        yield api


@pytest.fixture
async def namespace(kube: client.ApiClient) -> AsyncIterator[str]:
    """A fresh namespace, deleted after the test."""
    name = await create_namespace(kube, "t")
    yield name
    await client.CoreV1Api(kube).delete_namespace(name, propagation_policy="Background")


async def create_namespace(kube: client.ApiClient, prefix: str) -> str:
    """A fresh namespace `<prefix>-<random>` whose default ServiceAccount exists."""
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    core = client.CoreV1Api(kube)
    await core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    # Pods are refused until the ServiceAccount controller has created `default`.
    for _ in range(100):
        accounts = await core.list_namespaced_service_account(name)
        if any(sa.metadata.name == "default" for sa in accounts.items):
            break
        await asyncio.sleep(0.1)
    return name


CHART = Path(__file__).parents[1] / "charts" / "serverless-comfyui"
CRD_FILE = components.CRD_FILE


@pytest.fixture
async def models_claim(
    kube: client.ApiClient, namespace: str, tmp_path: Path
) -> AsyncIterator[Path]:
    """The seed's claim `pvc-capacity-userdata` in the test namespace, backed by a host folder."""
    host_dir = tmp_path / "pvc-capacity-userdata"
    host_dir.mkdir()
    core = client.CoreV1Api(kube)
    await create_hostpath_claim(core, namespace, "pvc-capacity-userdata", str(host_dir))
    yield host_dir
    await core.delete_persistent_volume(f"{namespace}-pvc-capacity-userdata")


@dataclass
class FileServer:
    """A real HTTP server on loopback serving model files (Range supported), optionally
    behind a bearer token, like a Hugging Face `resolve` URL of a gated model."""

    root: Path
    base: str
    token: str | None = None
    requests: list[str] = field(default_factory=list)

    def add(self, name: str, data: bytes) -> tuple[str, str]:
        """Serve data as name; returns (url, sha256)."""
        (self.root / name).write_bytes(data)
        return f"{self.base}/{name}", hashlib.sha256(data).hexdigest()


@pytest.fixture
async def file_server(tmp_path: Path) -> AsyncIterator[FileServer]:
    root = tmp_path / "files"
    root.mkdir()
    server = FileServer(root=root, base="")

    async def serve(request: web.Request) -> web.StreamResponse:
        server.requests.append(f"{request.method} {request.path}")
        if server.token and request.headers.get("Authorization") != f"Bearer {server.token}":
            return web.json_response({"error": "Invalid credentials"}, status=401)
        path = root / request.match_info["name"]
        if not path.is_file():
            return web.json_response({"error": "Entry not found"}, status=404)
        return web.FileResponse(path)

    app = web.Application()
    app.router.add_route("*", "/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    server.base = f"http://127.0.0.1:{port}"
    yield server
    await runner.cleanup()


@pytest.fixture(scope="session")
def crd(world: TestWorld) -> Path:
    """The FluxWorkflow CRD from the chart, installed and established."""
    components.install_crd(world)
    return CRD_FILE


@pytest.fixture(scope="session")
def operator(world: TestWorld, crd: Path) -> Iterator[ManagedProcess]:
    """The operator running as a host process against the test world, as it would in-cluster."""
    proc = start_operator(world)
    wait_until_reconciling(world, proc)
    try:
        yield proc
    finally:
        proc.stop()


def wait_until_reconciling(world: TestWorld, proc: ManagedProcess) -> None:
    """kopf answers its liveness probe before its watches run (and a just-created CRD can keep
    the apiserver busy for a while): wait until a canary FluxWorkflow gets a status."""
    namespace = f"t-canary-{uuid.uuid4().hex[:6]}"
    canary = {
        "apiVersion": "serverless-comfyui.io/v1alpha1",
        "kind": "FluxWorkflow",
        "metadata": {"name": "canary", "namespace": namespace},
        "spec": {
            "image": "canary",
            "resourceProfile": "cpu:1",
            "workflow": {"name": "warmup"},
        },
    }
    assert world.kubectl("create", "namespace", namespace).returncode == 0
    created = world.kubectl("apply", "-f", "-", input=json.dumps(canary))
    assert created.returncode == 0, created.stderr

    def has_status() -> bool:
        proc.ensure_alive()
        phase = world.kubectl("-n", namespace, "get", "fw/canary", "-o", "jsonpath={.status.phase}")
        return bool(phase.stdout.strip())

    try:
        wait_until(has_status, 120, "the operator's first reconcile")
    finally:
        world.kubectl("delete", "namespace", namespace, "--wait=false")


def start_operator(
    world: TestWorld, name: str = "operator", namespaces: str = "t-*"
) -> ManagedProcess:
    """An operator process serving the namespaces matching the glob (test namespaces are
    `t-*`; a test that runs its own operator uses another prefix so the two never overlap)."""
    env = {
        "SERVERLESS_COMFYUI_NAMESPACES": json.dumps([namespaces]),
        "SERVERLESS_COMFYUI_PROXY_URL": "http://127.0.0.1:8080",
        # The test file server is on loopback; it may receive the (test) Hugging Face token.
        "SERVERLESS_COMFYUI_DOWNLOAD_TOKEN_HOSTS": '["127.0.0.1"]',
    }
    return components.start_operator(world, name, env)
