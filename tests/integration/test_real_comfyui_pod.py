"""A FluxWorkflow whose pods run the real ComfyUI 0.8.0 (pod annotation
`testworld.serverless-comfyui.io/comfyui: real`): the operator's pod, the image entrypoint with
the real ComfyUI as its child (on CPU), warm-up before Ready, and a cold start through the proxy
from zero replicas to an image."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from kubernetes_asyncio import client
from test_proxy_kube import warm_workflow
from test_proxy_kube_e2e import (
    WARMUP_GRAPH,
    ProxyFactory,
    create,
    fw_replicas,
    history,
    pods,
    proxies,  # noqa: F401  (the fixture)
)

from serverless_comfyui.testworld import TestWorld
from serverless_comfyui.testworld.realcomfy import COMFYUI_ANNOTATION

# The real ComfyUI imports torch before it listens (25 s idle, minutes on a loaded machine) and
# then warms up: the hold and the waits allow for that; `make bench` measures it.
COLD_START_SECONDS = 900


def container_log(world: TestWorld, pod: Any) -> str:
    path = world.state_dir / "pods" / pod.metadata.namespace / pod.metadata.name / "container.log"
    return path.read_text(errors="replace")


@pytest.mark.timeout(COLD_START_SECONDS + 300)
async def test_a_workflow_on_the_real_comfyui_cold_starts_through_the_proxy(
    kube: client.ApiClient,
    namespace: str,
    models_claim: Path,
    proxies: ProxyFactory,  # noqa: F811
    world: TestWorld,
) -> None:
    body = warm_workflow("real", scaleDownDelaySeconds=600)
    body["spec"]["podAnnotations"] = {COMFYUI_ANNOTATION: "real"}
    await create(kube, namespace, body)
    proxy = await proxies(hold_timeout_seconds=str(COLD_START_SECONDS))
    assert await fw_replicas(kube, namespace, "real") == 0

    timeout = aiohttp.ClientTimeout(total=COLD_START_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        started = time.monotonic()
        prompt = {"model": "real", "prompt": WARMUP_GRAPH}
        async with http.post(f"{proxy.url}/openai/api/prompt", json=prompt) as answer:
            assert answer.status == 200, await answer.text()
            prompt_id = (await answer.json())["prompt_id"]
        print(f"cold start on the real ComfyUI: held {time.monotonic() - started:.0f} s")
        deadline = time.monotonic() + 120
        entry: Any = None
        while time.monotonic() < deadline and not entry:
            status, data = await history(http, proxy, "real", prompt_id)
            assert status == 200
            entry = data.get(prompt_id)
        assert entry and entry["status"]["status_str"] == "success", entry
        (image,) = next(iter(entry["outputs"].values()))["images"]
        params = {**image, "model": "real"}
        async with http.get(f"{proxy.url}/openai/api/view", params=params) as answer:
            assert answer.status == 200
            assert (await answer.read()).startswith(b"\x89PNG\r\n\x1a\n")

    (pod,) = await pods(kube, namespace, "real")
    log = container_log(world, pod)
    # The entrypoint ran the real ComfyUI on CPU and warmed it up before Ready.
    assert "ComfyUI runs on CPU" in log and "warm-up ok: ready" in log
    assert "To see the GUI go to" in log  # ComfyUI's own start-up line, not the emulator's
    assert "serverless_comfyui.emulator" not in log
