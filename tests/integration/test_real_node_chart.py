"""The chart as users run it, on the test world's real node: `helm install` with the images built
by `make images` (imported into the node's containerd; pull policy Never), the operator and the
proxy as pods that find the apiserver through the `kubernetes` Service, in a namespace that
enforces the `restricted` Pod Security Standard; the model-download Job (devpod image) fills the
claim (a hostPath volume on the node) from an HTTP server inside the node's network namespace;
a request at zero replicas cold-starts the real ComfyUI in our ComfyUI image, on CPU, and the
image comes back. The host reaches the proxy pod at its pod IP, through the world's route."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from test_comfyui_web_ui import check_graph_editor
from test_real_node import POD_WAIT, watch_node

from serverless_comfyui.testworld import MissingToolError, TestWorld, find_tools_bin
from serverless_comfyui.testworld.images import ImageBuildError
from serverless_comfyui.testworld.kubeclient import kube_api
from serverless_comfyui.testworld.nodeteardown import leftovers
from serverless_comfyui.testworld.processes import ManagedProcess
from serverless_comfyui.testworld.realchart import (
    APP,
    MODELS_SUB_PATH,
    RealRelease,
    install,
    saved_images,
)
from serverless_comfyui.testworld.realnode import RealNode
from serverless_comfyui.testworld.waiters import pod_ready, wait_for_pods

pytestmark = [pytest.mark.cluster, pytest.mark.images]

REPO = Path(__file__).resolve().parents[2]
WARMUP_GRAPH: dict[str, Any] = json.loads(
    (REPO / "workflows" / "warmup" / "workflow.json").read_text()
)
FILE_SERVER_PORT = 8000  # inside the node's own network namespace: nothing else listens there
# The real ComfyUI imports torch for a minute idle, several on a loaded 2-core machine, then warms
# up: the hold and this wait allow for that (`make bench` measures it; nothing here times it).
COLD_START_SECONDS = 900
# A weightless prompt that runs for a while on CPU (~10 s on an idle 2-core machine): a Gaussian
# blur of radius 31 (a 63 x 63 kernel) over 512 x 512 pixels, saved small.
SLOW_GRAPH: dict[str, Any] = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": 8421504},
    },
    "2": {
        "class_type": "ImageBlur",
        "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 10.0},
    },
    "3": {
        "class_type": "ImageScale",
        "inputs": {
            "image": ["2", 0],
            "upscale_method": "nearest-exact",
            "width": 64,
            "height": 64,
            "crop": "disabled",
        },
    },
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "slow"}},
}
MODEL_FILE = "tiny.safetensors"
MODEL_BYTES = os.urandom(1 << 20)


def file_server(world: TestWorld, node: RealNode, folder: Path) -> tuple[ManagedProcess, str]:
    """An HTTP server inside the node's network namespace, at the node's address (pods reach it
    through their bridge); returns it and the model file's URL."""
    assert node.network is not None
    folder.mkdir()
    (folder / MODEL_FILE).write_bytes(MODEL_BYTES)
    address = node.network.node_ip
    proc = ManagedProcess(
        "model-file-server",
        [
            "nsenter",
            f"--net={node.network.netns_path}",
            "--",
            sys.executable,
            "-m",
            "http.server",
            f"--bind={address}",
            f"--directory={folder}",
            str(FILE_SERVER_PORT),
        ],
        world.logs / "model-file-server.log",
    )
    proc.start()
    return proc, f"http://{address}:{FILE_SERVER_PORT}/{MODEL_FILE}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealRelease]:
    try:
        tools = find_tools_bin()
        images = saved_images()
    except (MissingToolError, ImageBuildError) as exc:
        pytest.fail(str(exc), pytrace=False)
    state = tmp_path_factory.mktemp("chartworld")
    world = TestWorld(
        state_dir=state / "world",
        tools_bin=tools,
        pod_cidr="127.76.0.0/16",
        pod_runner=False,
        real_nodes=1,
    )
    world.start(timeout=300)
    node = world.nodes[0]
    server: ManagedProcess | None = None
    try:
        server, url = file_server(world, node, state / "files")
        model = {
            "name": MODEL_FILE,
            "url": url,
            "dir": "checkpoints",
            "sha256": hashlib.sha256(MODEL_BYTES).hexdigest(),
        }
        namespace = f"t-chart-{uuid.uuid4().hex[:6]}"
        release = install(world, state, namespace, models=[model], images=images)
        sizes = {name: f"{path.stat().st_size / 1e9:.2f} GB" for name, path in images.items()}
        print(f"images {sizes}; seconds { ({k: round(v) for k, v in release.timings.items()}) }")
        yield release
    finally:
        if server is not None:
            server.stop(grace=5)
        folder = node.files.root
        world.stop()
        assert leftovers(folder) == []


@pytest.fixture
async def core(installed: RealRelease) -> AsyncIterator[client.CoreV1Api]:
    async with kube_api(installed.world.kubeconfig) as api:
        yield client.CoreV1Api(api)


async def ready_pods(core: client.CoreV1Api, installed: RealRelease, component: str) -> list[Any]:
    selector = f"app.kubernetes.io/component={component}"
    pods = await wait_for_pods(
        core,
        installed.namespace,
        selector,
        lambda found: bool(found) and all(map(pod_ready, found.values())),
        POD_WAIT,
    )
    return list(pods.values())


def proxy_url(pod: Any) -> str:
    return f"http://{pod.status.pod_ip}:8080"


async def test_operator_and_proxy_run_as_pods_and_reach_the_apiserver(
    installed: RealRelease, core: client.CoreV1Api
) -> None:
    await watch_node(core, lambda n: "nvidia.com/gpu" in (n.status.allocatable or {}), "GPUs")
    for component in ("operator", "proxy"):
        (pod,) = await ready_pods(core, installed, component)
        assert pod.spec.node_name == installed.node.name
        assert installed.node.network is not None
        assert installed.node.network.contains(pod.status.pod_ip)

    # The operator, in its pod, read the FluxWorkflow and wrote its status: it reached the
    # apiserver at the `kubernetes` Service's address, with its ServiceAccount's token.
    def reconciled() -> bool:
        done = installed.kubectl("get", "fluxworkflow", APP, "-o", "json")
        status = json.loads(done.stdout or "{}").get("status", {}) if done.returncode == 0 else {}
        return bool(status.get("conditions")) and status.get("observedGeneration") == 1

    installed.wait(reconciled, POD_WAIT, "the operator's status on the FluxWorkflow")
    (proxy,) = await ready_pods(core, installed, "proxy")
    async with aiohttp.ClientSession() as http, http.get(f"{proxy_url(proxy)}/readyz") as answer:
        assert answer.status == 200, await answer.text()


def test_the_namespace_refuses_pods_that_are_not_restricted(installed: RealRelease) -> None:
    """The enforcement the chart's and the operator's pods pass: a plain pod is refused."""
    done = installed.kubectl(
        "run", "plain", f"--image={installed.node.images['busybox'].name}", "--dry-run=server"
    )
    assert done.returncode != 0
    assert 'violates PodSecurity "restricted:latest"' in done.stderr, done.stderr


def test_the_download_job_fills_the_claim_with_the_devpod_image(installed: RealRelease) -> None:
    selector = "app.kubernetes.io/component=model-downloader"

    def jobs() -> list[Any]:
        done = installed.kubectl("get", "jobs", "-l", selector, "-o", "json")
        return list(json.loads(done.stdout or "{}").get("items", []))

    def finished() -> bool:
        return any(j.get("status", {}).get(k) for j in jobs() for k in ("succeeded", "failed"))

    installed.wait(finished, POD_WAIT, "the model-download Job to finish")
    (job,) = jobs()
    assert job["status"].get("succeeded") == 1, installed.diagnose()
    assert job["spec"]["template"]["spec"]["containers"][0]["image"].endswith("/devpod:0.1.0")
    downloaded = installed.claim_dir / MODELS_SUB_PATH / "checkpoints"
    assert (downloaded / MODEL_FILE).read_bytes() == MODEL_BYTES


@pytest.mark.timeout(COLD_START_SECONDS + 300)
async def test_a_prompt_at_zero_cold_starts_the_real_comfyui_image_on_the_node(
    installed: RealRelease, core: client.CoreV1Api
) -> None:
    (proxy,) = await ready_pods(core, installed, "proxy")
    url = proxy_url(proxy)
    timeout = aiohttp.ClientTimeout(total=COLD_START_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.monotonic()
        prompt_id = await post_prompt(http, url, WARMUP_GRAPH)
        print(f"cold start through the proxy pod: held {time.monotonic() - started:.0f} s")
        await fetch_image(http, url, await finished_entry(http, url, prompt_id))
    (pod,) = await ready_pods(core, installed, "comfyui")
    assert pod.spec.node_name == installed.node.name
    name = pod.metadata.name
    log = installed.kubectl("logs", name, "-c", "comfyui").stdout
    # Our entrypoint ran the real ComfyUI on CPU (no NVIDIA device in the container) and warmed
    # it up before Ready.
    assert "ComfyUI runs on CPU" in log and "warm-up ok: ready" in log, log[-3000:]
    assert "To see the GUI go to" in log  # ComfyUI's own start-up line

    def in_comfyui(*command: str) -> subprocess.CompletedProcess[str]:
        return installed.kubectl("exec", name, "-c", "comfyui", "--", *command)

    assert in_comfyui("id", "-u").stdout.strip() == "1000"
    write = in_comfyui("sh", "-c", "echo x > /x")
    assert write.returncode != 0 and "Read-only file system" in write.stderr + write.stdout
    listed = in_comfyui("ls", "/opt/ComfyUI/models/checkpoints")
    assert MODEL_FILE in listed.stdout.split(), listed.stderr


async def post_prompt(http: aiohttp.ClientSession, url: str, graph: dict[str, Any]) -> str:
    body = {"model": APP, "prompt": graph}
    async with http.post(f"{url}/openai/api/prompt", json=body) as answer:
        assert answer.status == 200, await answer.text()
        return str((await answer.json())["prompt_id"])


async def fetch_image(http: aiohttp.ClientSession, url: str, entry: Any) -> None:
    """The prompt succeeded and its one image comes back through the proxy."""
    assert entry["status"]["status_str"] == "success", entry
    (image,) = next(iter(entry["outputs"].values()))["images"]
    async with http.get(f"{url}/openai/api/view", params={**image, "model": APP}) as answer:
        assert answer.status == 200, await answer.text()
        assert (await answer.read()).startswith(b"\x89PNG\r\n\x1a\n")


async def wait_running(http: aiohttp.ClientSession, url: str, prompt_id: str) -> None:
    """Until ComfyUI runs the prompt (its queue through the proxy)."""
    deadline = time.monotonic() + COLD_START_SECONDS
    while time.monotonic() < deadline:
        async with http.get(f"{url}/openai/api/queue", params={"model": APP}) as answer:
            assert answer.status == 200, await answer.text()
            running = (await answer.json())["queue_running"]
        if any(prompt_id in item for item in running):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"prompt {prompt_id} never ran")


async def finished_entry(
    http: aiohttp.ClientSession, url: str, prompt_id: str, wait: float = POD_WAIT
) -> Any:
    """The prompt's history entry once it is finished (None when it is not within wait)."""
    deadline = time.monotonic() + wait
    while True:
        params = {"model": APP}
        async with http.get(f"{url}/openai/api/history/{prompt_id}", params=params) as answer:
            assert answer.status == 200, await answer.text()
            entry = (await answer.json()).get(prompt_id)
        if entry and entry.get("status", {}).get("completed") is not None:
            return entry
        if time.monotonic() >= deadline:
            if wait:
                raise AssertionError(f"prompt {prompt_id} has no finished history entry")
            return None
        await asyncio.sleep(0.5)


def patch_delay(installed: RealRelease, seconds: int) -> None:
    body = json.dumps({"spec": {"scaleDownDelaySeconds": seconds}})
    done = installed.kubectl("patch", "fluxworkflow", APP, "--type=merge", "-p", body)
    assert done.returncode == 0, done.stderr


def comfyui_pods(installed: RealRelease) -> list[dict[str, Any]]:
    done = installed.kubectl(
        "get", "pods", "-l", "app.kubernetes.io/component=comfyui", "-o", "json"
    )
    assert done.returncode == 0, done.stderr
    return list(json.loads(done.stdout)["items"])


def replicas(installed: RealRelease) -> int:
    done = installed.kubectl("get", "fluxworkflow", APP, "-o", "jsonpath={.spec.replicas}")
    return int(done.stdout or 0)


@pytest.mark.timeout(COLD_START_SECONDS + 300)
async def test_scale_down_leaves_a_pod_alone_while_its_prompt_runs(
    installed: RealRelease, core: client.CoreV1Api
) -> None:
    """A 2 s scale-down delay passes many times over while the prompt runs: the autoscaler
    counts the running prompt as demand, so the pod stays until the image is back; then the
    FluxWorkflow goes to zero."""
    url = installed.proxy_url()
    timeout = aiohttp.ClientTimeout(total=COLD_START_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        prompt_id = await post_prompt(http, url, SLOW_GRAPH)
        await wait_running(http, url, prompt_id)
        (pod,) = comfyui_pods(installed)
        patch_delay(installed, 2)
        entry = None
        while entry is None:  # each look also checks that the busy pod is kept
            assert replicas(installed) == 1
            (kept,) = comfyui_pods(installed)
            assert kept["metadata"]["uid"] == pod["metadata"]["uid"]
            assert "deletionTimestamp" not in kept["metadata"], "the busy pod is being removed"
            entry = await finished_entry(http, url, prompt_id, wait=0)
            await asyncio.sleep(0.5)
        await fetch_image(http, url, entry)
    installed.wait(lambda: replicas(installed) == 0, POD_WAIT, "the scale-down to zero")
    installed.wait(lambda: not comfyui_pods(installed), POD_WAIT, "the pod to go")


@pytest.mark.timeout(COLD_START_SECONDS + 300)
async def test_a_deleted_pod_drains_its_prompt_before_it_stops(
    installed: RealRelease, core: client.CoreV1Api
) -> None:
    """A pod deleted mid-prompt (a node drain, a rolling update) runs its preStop drain under the
    real grace period: ComfyUI keeps running until the prompt is done, and its image is served
    from the terminating pod (the proxy routes by the prompt's id)."""
    patch_delay(installed, 600)
    url = installed.proxy_url()
    timeout = aiohttp.ClientTimeout(total=COLD_START_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        prompt_id = await post_prompt(http, url, SLOW_GRAPH)  # a cold start from zero
        await wait_running(http, url, prompt_id)
        (pod,) = comfyui_pods(installed)
        name = pod["metadata"]["name"]
        # The container's log to its end (the pod's object and log go when it stops).
        world = installed.world
        follow = await asyncio.create_subprocess_exec(
            *(world.tool("kubectl"), f"--kubeconfig={world.kubeconfig}", "-n", installed.namespace),
            *("logs", "--follow", name, "-c", "comfyui"),
            stdout=asyncio.subprocess.PIPE,
        )
        deleted = installed.kubectl("delete", "pod", name, "--wait=false")
        assert deleted.returncode == 0, deleted.stderr
        entry = await finished_entry(http, url, prompt_id)
        await fetch_image(http, url, entry)
        # The prompt finished in a pod being deleted: the drain held the container.
        terminating = [p for p in comfyui_pods(installed) if p["metadata"]["name"] == name]
        assert terminating and "deletionTimestamp" in terminating[0]["metadata"]
    out, _ = await asyncio.wait_for(follow.communicate(), POD_WAIT)
    log = out.decode(errors="replace")
    drained = [json.loads(line) for line in log.splitlines() if '"event": "drained"' in line]
    assert drained and drained[0]["waited"] is True, log[-2000:]


@pytest.mark.timeout(COLD_START_SECONDS + 300)
async def test_the_real_web_ui_renders_through_the_proxy_pod(
    installed: RealRelease, tmp_path: Path
) -> None:
    """The graph editor of the ComfyUI pod on the node, in headless Chromium, via the proxy
    pod's `/ui/real/` (screenshot: .artifacts/webui-real.png)."""
    await check_graph_editor(installed.proxy_url(), APP, tmp_path)


async def test_the_generation_api_runs_the_applications_own_workflow(
    installed: RealRelease,
) -> None:
    """`/v1/generate` with only a model runs the workflow its FluxWorkflow serves (`warmup`,
    weightless), not the API's default Flux workflow, and returns the PNG inline."""
    timeout = aiohttp.ClientTimeout(total=COLD_START_SECONDS)
    async with (
        aiohttp.ClientSession(timeout=timeout) as http,
        http.post(f"{installed.proxy_url()}/v1/generate", json={"model": APP}) as answer,
    ):
        task = await answer.json()
    assert answer.status == 200, task
    assert task["workflow"] == "warmup" and task["status"] == "completed", task
    png = base64.b64decode(task["results"][0]["base64"])
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
