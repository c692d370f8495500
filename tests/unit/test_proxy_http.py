"""The proxy's request path against real (emulated) ComfyUI pods, in static mode.

The seed's calls in their exact shape, model extraction and removal (checked on what an upstream
received), prompts spread by outstanding work, per-prompt routing across two pods and across a
proxy restart, aggregation, failover, bounded holds and bad input.
"""

from __future__ import annotations

import asyncio
import io
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from PIL import Image

from serverless_comfyui.emulator import EmulatorSettings
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator
from serverless_comfyui.proxy import ids
from serverless_comfyui.proxy.registry import PodState
from serverless_comfyui.proxy.settings import ProxySettings
from serverless_comfyui.proxy.testing import RunningProxy, serve_proxy

SEED_APP = "serverless-comfyui"
FORM = "application/x-www-form-urlencoded"  # what curl -d sends


def empty_image_prompt(prefix: str = "ComfyUI") -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 255},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def load_image_prompt(name: str) -> dict[str, Any]:
    return {
        "5": {"class_type": "LoadImage", "inputs": {"image": name, "upload": "image"}},
        "6": {"class_type": "ImageInvert", "inputs": {"image": ["5", 0]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": "inv"}},
    }


def png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def pod_of(prompt_id: str) -> int:
    """Which static pod (`<model>-<index>`) a minted id names."""
    route = ids.decode(prompt_id)
    assert route is not None, prompt_id
    for index in range(4):
        for model in (SEED_APP, "flux"):
            if route.pod_hash == ids.pod_hash(f"{model}-{index}"):
                return index
    raise AssertionError(f"{prompt_id} names no static pod")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Recorder:
    """A tiny upstream that records what it receives and answers `{}`."""

    url: str = ""
    all_seen: list[dict[str, Any]] = field(default_factory=list)

    @property
    def seen(self) -> list[dict[str, Any]]:
        """What the request path sent (not the queue monitor's /ws and /queue)."""
        return [s for s in self.all_seen if s["path"] not in ("/ws", "/queue")]


@pytest.fixture
async def recorder() -> AsyncIterator[Recorder]:
    rec = Recorder()

    async def record(request: web.Request) -> web.Response:
        rec.all_seen.append(
            {
                "method": request.method,
                "path": request.path,
                "query": dict(request.rel_url.query),
                "headers": dict(request.headers),
                "body": await request.read(),
            }
        )
        return web.json_response({"queue_running": [], "queue_pending": []})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    rec.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    yield rec
    await runner.cleanup()


@pytest.fixture
async def emus(tmp_path: Path) -> AsyncIterator[list[RunningEmulator]]:
    async with AsyncExitStack() as stack:
        running = []
        for index in range(2):
            settings = EmulatorSettings(data_dir=tmp_path / f"pod{index}", step_seconds=0.01)
            running.append(await stack.enter_async_context(serve_emulator(settings)))
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def proxy_settings(**backends: list[str]) -> ProxySettings:
    return ProxySettings(static_backends=backends, hold_timeout_seconds=0.5)


async def wait_history(
    http: aiohttp.ClientSession, proxy: RunningProxy, prompt_id: str, model: str = "flux"
) -> dict[str, Any]:
    for _ in range(300):
        async with http.get(
            f"{proxy.url}/openai/api/history/{prompt_id}", data=f'{{"model": "{model}"}}'
        ) as response:
            assert response.status == 200, await response.text()
            body = await response.json()
        if body:
            entry: dict[str, Any] = body[prompt_id]
            return entry
        await asyncio.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} did not finish")


async def submit(
    http: aiohttp.ClientSession, proxy: RunningProxy, prompt: dict[str, Any], **extra: Any
) -> str:
    body = {"model": "flux", "prompt": prompt, **extra}
    async with http.post(f"{proxy.url}/api/prompt", json=body) as response:
        assert response.status == 200, await response.text()
        answer = await response.json()
    assert answer["node_errors"] == {}
    prompt_id: str = answer["prompt_id"]
    return prompt_id


async def metric(http: aiohttp.ClientSession, proxy: RunningProxy, name: str) -> float | None:
    async with http.get(f"{proxy.url}/metrics") as response:
        text = await response.text()
    match = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else None


def upload_form(image_text: bool = False, kind: str = "input") -> aiohttp.FormData:
    form = aiohttp.FormData()
    form.add_field("model", "flux")
    if image_text:
        form.add_field("image", "not a file")
    else:
        form.add_field("image", png_bytes(), filename="a.png", content_type="image/png")
    form.add_field("type", kind)
    return form


# -- the seed's calls ---------------------------------------------------------------------------


async def test_seed_calls_in_their_documented_shape(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(proxy_settings(**{SEED_APP: [emus[0].url]})) as proxy:
        base = f"{proxy.url}/openai"
        model = f'{{"model": "{SEED_APP}"}}'
        # curl -X GET <proxy>/openai/api/system_stats -d '{"model": ...}' (form content type)
        async with http.get(
            f"{base}/api/system_stats", data=model, headers={"Content-Type": FORM}
        ) as r:
            assert r.status == 200
            assert (await r.json())["system"]["comfyui_version"] == "0.8.0"
        # ... and the variant with --header 'Content-Type: application/json' -d ' { ... }'
        async with http.get(
            f"{base}/api/system_stats",
            data=f' {{ "model": "{SEED_APP}" }}',
            headers={"Content-Type": "application/json"},
        ) as r:
            assert r.status == 200

        # curl -X POST <proxy>/openai/api/upload/image -F image=@test.png -F model=<app>
        form = aiohttp.FormData()
        form.add_field("image", png_bytes(), filename="test.png", content_type="image/png")
        form.add_field("model", SEED_APP)
        async with http.post(f"{base}/api/upload/image", data=form) as r:
            assert r.status == 200
            assert await r.json() == {"name": "test.png", "subfolder": "", "type": "input"}

        # /api/prompt -> /api/history/<id> -> /api/view?filename=&type=output&subfolder=
        body = {"model": SEED_APP, "client_id": "bc85655", "prompt": load_image_prompt("test.png")}
        async with http.post(
            f"{base}/api/prompt", json=body, headers={"Content-Type": "application/json"}
        ) as r:
            assert r.status == 200
            answer = await r.json()
        prompt_id = answer["prompt_id"]
        assert set(answer) == {"prompt_id", "number", "node_errors"}
        entry = await wait_history(http, proxy, prompt_id, SEED_APP)
        assert entry["status"]["status_str"] == "success"
        image = entry["outputs"]["7"]["images"][0]
        assert image["subfolder"] == prompt_id  # outputs are per prompt: no collisions
        view = f"{base}/api/view?filename={image['filename']}&type=output&subfolder={prompt_id}"
        async with http.get(view, data=model, headers={"Content-Type": "application/json"}) as r:
            assert r.status == 200 and r.content_type == "image/png"
            data = await r.read()
        pixel = Image.open(io.BytesIO(data)).convert("RGB").getpixel((0, 0))
        # The uploaded image, inverted as ComfyUI does (float32, truncated: 200 becomes 54).
        assert pixel == (245, 54, 225)


# -- model extraction and header hygiene --------------------------------------------------------


async def test_model_is_removed_wherever_it_came_from(
    recorder: Recorder, http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(proxy_settings(rec=[recorder.url])) as proxy:
        url = f"{proxy.url}/openai/api"
        async with http.get(f"{url}/system_stats", data='{"model": "rec", "x": 1}') as r:
            assert r.status == 200
        async with http.get(f"{url}/object_info/KSampler?model=rec&token=t&a=b") as r:
            assert r.status == 200
        async with http.get(f"{proxy.url}/features", headers={"X-Model": "rec"}) as r:
            assert r.status == 200
        form = aiohttp.FormData()
        form.add_field("model", "rec")
        form.add_field("image", b"bytes", filename="a.png", content_type="image/png")
        form.add_field("original_ref", '{"filename": "a.png"}')
        async with http.post(f"{url}/upload/mask", data=form) as r:
            assert r.status == 200
        async with http.post(f"{proxy.url}/api/models", json={"model": "rec"}) as r:
            assert r.status == 405  # not ComfyUI's method for this path: not forwarded
            assert r.headers["Allow"] == "GET, HEAD"
        async with http.post(f"{proxy.url}/openai/api/userdata/x.json?model=rec") as r:
            assert r.status == 200  # the rest of ComfyUI's /api is forwarded as is

    json_get, query_get, header_get, upload, other = recorder.seen
    assert other["path"] == "/api/userdata/x.json" and other["method"] == "POST"
    assert json_get["path"] == "/api/system_stats" and json_get["body"] == b'{"x": 1}'
    assert query_get["path"] == "/api/object_info/KSampler" and query_get["query"] == {"a": "b"}
    assert header_get["path"] == "/features" and "X-Model" not in header_get["headers"]
    assert upload["path"] == "/api/upload/mask"
    assert b'name="model"' not in upload["body"] and b"bytes" in upload["body"]
    for seen in recorder.seen:
        assert "Origin" not in seen["headers"] and "Authorization" not in seen["headers"]
        assert seen["headers"]["X-Forwarded-For"] == "127.0.0.1"
        assert seen["headers"]["X-Forwarded-Proto"] == "http"
        assert seen["headers"]["X-Forwarded-Host"].startswith("127.0.0.1:")


async def test_hop_by_hop_and_credentials_never_reach_the_pod(
    recorder: Recorder, http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(proxy_settings(rec=[recorder.url])) as proxy:
        headers = {
            "Origin": "http://elsewhere.example",
            "X-API-Key": "secret",
            "Connection": "keep-alive, X-Hop",
            "X-Hop": "1",
            "X-Keep": "yes",
            "Cookie": "scui_token=secret; theme=dark",
        }
        async with http.get(f"{proxy.url}/api/embeddings?model=rec", headers=headers) as r:
            assert r.status == 200
    seen = recorder.seen[0]["headers"]
    assert seen["X-Keep"] == "yes" and seen["Cookie"] == "theme=dark"
    assert not {"Origin", "X-API-Key", "X-Hop"} & set(seen)


async def test_origin_header_does_not_cause_403(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(proxy_settings(flux=[emus[0].url])) as proxy:
        headers = {"Origin": "https://my-app.example.com", "Referer": "https://my-app.example.com/"}
        async with http.get(f"{proxy.url}/api/system_stats?model=flux", headers=headers) as r:
            assert r.status == 200
        body = {"model": "flux", "prompt": empty_image_prompt()}
        async with http.post(f"{proxy.url}/prompt", json=body, headers=headers) as r:
            assert r.status == 200
        # Sent straight to the pod, the same Origin is refused: the proxy is what fixes it.
        async with http.get(f"{emus[0].url}/system_stats", headers=headers) as r:
            assert r.status == 403


# -- affinity and balancing ---------------------------------------------------------------------


async def test_prompts_go_to_the_pod_with_the_fewest_outstanding(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    for emu in emus:
        emu.state.controls.step_seconds = 5.0  # prompts stay queued for the whole test
    async with serve_proxy(proxy_settings(flux=[e.url for e in emus])) as proxy:
        app = proxy.registry.apps["flux"]
        # Three prompts straight to pod 0: its monitor learns it has 3 outstanding.
        for _ in range(3):
            async with http.post(
                f"{emus[0].url}/prompt", json={"prompt": empty_image_prompt()}
            ) as r:
                assert r.status == 200
        for _ in range(200):
            if app.pods["flux-0"].queue_remaining == 3:
                break
            await asyncio.sleep(0.01)
        assert app.pods["flux-0"].queue_remaining == 3
        placed = [pod_of(await submit(http, proxy, empty_image_prompt())) for _ in range(5)]
        # Pod 1 takes prompts until it has as many as pod 0 (3), then they alternate.
        assert placed[:3] == [1, 1, 1]
        assert sorted(placed[3:]) == [0, 1]
        assert app.pods["flux-0"].outstanding == 4 and app.pods["flux-1"].outstanding == 4
        assert app.outstanding == 8
        assert emus[1].state.queue.tasks_remaining() == 4
        assert await metric(http, proxy, 'scui_proxy_outstanding_prompts{model="flux"}') == 8


async def test_a_burst_of_concurrent_prompts_is_spread(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    for emu in emus:
        emu.state.controls.step_seconds = 5.0
    async with serve_proxy(proxy_settings(flux=[e.url for e in emus])) as proxy:
        burst = [submit(http, proxy, empty_image_prompt()) for _ in range(6)]
        placed = [pod_of(p) for p in await asyncio.gather(*burst)]
        assert sorted(placed) == [0, 0, 0, 1, 1, 1]
        assert [e.state.queue.tasks_remaining() for e in emus] == [3, 3]


async def test_each_prompt_is_served_by_its_pod_and_survives_a_proxy_restart(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    settings = proxy_settings(flux=[e.url for e in emus])
    async with serve_proxy(settings) as proxy:
        prompt_ids = [await submit(http, proxy, empty_image_prompt()) for _ in range(2)]
        assert sorted(pod_of(p) for p in prompt_ids) == [0, 1]
        for prompt_id in prompt_ids:
            await wait_history(http, proxy, prompt_id)
    for prompt_id in prompt_ids:  # each pod has only its own prompt
        owner = emus[pod_of(prompt_id)].state.queue.history
        other = emus[1 - pod_of(prompt_id)].state.queue.history
        assert prompt_id in owner and prompt_id not in other

    async with serve_proxy(settings) as restarted:  # new registry, same backends
        for prompt_id in prompt_ids:
            entry = await wait_history(http, restarted, prompt_id)
            image = entry["outputs"]["2"]["images"][0]
            async with http.get(f"{restarted.url}/api/jobs/{prompt_id}?model=flux") as r:
                assert r.status == 200 and (await r.json())["status"] == "completed"
            # No model at all: the id (and the output's subfolder) carries the route.
            async with http.get(f"{restarted.url}/history/{prompt_id}") as r:
                assert prompt_id in await r.json()
            params = {"filename": image["filename"], "subfolder": image["subfolder"]}
            async with http.get(f"{restarted.url}/view", params=params) as r:
                assert r.status == 200 and r.content_type == "image/png"
        # Both pods named the first output ComfyUI_00001_.png: the prefix keeps them apart.
        async with http.get(f"{restarted.url}/history?model=flux") as r:
            merged = await r.json()
        assert set(merged) == set(prompt_ids)
        async with http.get(f"{restarted.url}/api/jobs?model=flux&limit=1") as r:
            jobs = await r.json()
        assert len(jobs["jobs"]) == 1 and jobs["pagination"]["total"] == 2
        assert jobs["pagination"]["has_more"] is True


async def test_queue_delete_and_interrupt_reach_the_prompts_pods(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    for emu in emus:
        emu.state.controls.step_seconds = 5.0
    async with serve_proxy(proxy_settings(flux=[e.url for e in emus])) as proxy:
        prompt_ids = [await submit(http, proxy, empty_image_prompt()) for _ in range(4)]
        by_pod: dict[int, list[str]] = {0: [], 1: []}
        for prompt_id in prompt_ids:
            by_pod[pod_of(prompt_id)].append(prompt_id)
        assert [len(v) for v in by_pod.values()] == [2, 2]
        await asyncio.sleep(0.1)  # the first of each pod is running now
        async with http.get(f"{proxy.url}/queue?model=flux") as r:
            queue = await r.json()
        assert len(queue["queue_running"]) == 2 and len(queue["queue_pending"]) == 2
        async with http.get(f"{proxy.url}/prompt?model=flux") as r:
            assert await r.json() == {"exec_info": {"queue_remaining": 4}}

        pending = [by_pod[0][1], by_pod[1][1]]
        foreign = str(uuid.uuid4())
        async with http.post(
            f"{proxy.url}/api/queue", json={"model": "flux", "delete": [*pending, foreign]}
        ) as r:
            assert r.status == 200
        for emu in emus:
            running, waiting = emu.state.queue.current()
            assert len(running) == 1 and waiting == []

        running_on_1 = by_pod[1][0]
        async with http.post(
            f"{proxy.url}/interrupt", json={"model": "flux", "prompt_id": running_on_1}
        ) as r:
            assert r.status == 200
        assert emus[1].state.interrupt_requested and not emus[0].state.interrupt_requested

        async with http.post(f"{proxy.url}/api/interrupt", json={"model": "flux"}) as r:
            assert r.status == 200  # no id: every pod
        assert emus[0].state.interrupt_requested
        async with http.post(
            f"{proxy.url}/free", json={"model": "flux", "unload_models": True}
        ) as r:
            assert r.status == 200


async def test_client_prompt_ids_retries_and_foreign_ids(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(proxy_settings(flux=[e.url for e in emus])) as proxy:
        first = await submit(http, proxy, empty_image_prompt())
        await wait_history(http, proxy, first)
        # A retry with the minted id goes to the same pod and is not queued twice.
        again = await submit(http, proxy, empty_image_prompt(), prompt_id=first)
        assert again == first
        assert emus[pod_of(first)].state.prompts_executed == 1
        # An id that is not ours is replaced: the answer carries the id to use.
        foreign = str(uuid.uuid4())
        replaced = await submit(http, proxy, empty_image_prompt(), prompt_id=foreign)
        assert replaced != foreign and ids.decode(replaced) is not None
        # Foreign ids are still looked up on every pod (e.g. prompts queued by the UI).
        async with http.post(f"{emus[1].url}/prompt", json={"prompt": empty_image_prompt()}) as r:
            direct = (await r.json())["prompt_id"]
        entry = await wait_history(http, proxy, direct)
        assert entry["status"]["status_str"] == "success"
        async with http.get(f"{proxy.url}/api/jobs/{direct}?model=flux") as r:
            assert r.status == 200
        async with http.get(f"{proxy.url}/api/jobs/{uuid.uuid4()}?model=flux") as r:
            assert r.status == 404
        async with http.get(f"{proxy.url}/history/{uuid.uuid4()}?model=flux") as r:
            assert r.status == 200 and await r.json() == {}


async def test_prompt_to_a_dead_pod_is_resubmitted_to_another(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    async with serve_proxy(proxy_settings(flux=[dead, emus[0].url])) as proxy:
        prompt_id = await submit(http, proxy, empty_image_prompt())
        assert pod_of(prompt_id) == 1  # flux-0 (dead) was picked first, then failed over
        await wait_history(http, proxy, prompt_id)
        async with http.get(f"{proxy.url}/system_stats?model=flux") as r:
            assert r.status == 200  # idempotent GETs fail over too
        async with http.get(f"{proxy.url}/queue?model=flux") as r:
            assert r.status == 200  # aggregation skips the dead pod


async def test_uploads_reach_every_pod(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(proxy_settings(flux=[e.url for e in emus])) as proxy:
        form = aiohttp.FormData()
        form.add_field("model", "flux")
        form.add_field("image", png_bytes(), filename="shared.png", content_type="image/png")
        async with http.post(f"{proxy.url}/openai/upload/image", data=form) as r:
            assert r.status == 200
        for emu in emus:
            assert (Path(emu.state.dirs.input) / "shared.png").read_bytes() == png_bytes()
        prompt_ids = [await submit(http, proxy, load_image_prompt("shared.png")) for _ in range(2)]
        assert sorted(pod_of(p) for p in prompt_ids) == [0, 1]
        for prompt_id in prompt_ids:
            assert (await wait_history(http, proxy, prompt_id))["status"]["completed"]


async def test_comfyui_validation_errors_pass_through_unchanged(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    async with serve_proxy(proxy_settings(flux=[emus[0].url])) as proxy:
        bad = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
        async with http.post(f"{proxy.url}/prompt", json={"model": "flux", "prompt": bad}) as r:
            via_proxy = (r.status, await r.json())
        async with http.post(f"{emus[0].url}/prompt", json={"prompt": bad}) as r:
            direct = (r.status, await r.json())
        assert via_proxy == direct
        assert via_proxy[0] == 400 and via_proxy[1]["error"]["type"] == "invalid_prompt"
        assert "node_errors" in via_proxy[1]


# -- holds ----------------------------------------------------------------------------------------


async def test_hold_is_bounded_and_the_held_gauge_returns_to_zero(
    http: aiohttp.ClientSession,
) -> None:
    async with serve_proxy(proxy_settings(empty=[])) as proxy:
        started = asyncio.get_running_loop().time()
        task = asyncio.create_task(http.get(f"{proxy.url}/openai/api/system_stats?model=empty"))
        await until(lambda: proxy.registry.apps["empty"].held == 1)
        assert await metric(http, proxy, 'scui_proxy_held_requests{model="empty"}') == 1
        async with await task as r:
            elapsed = asyncio.get_running_loop().time() - started
            assert r.status == 503 and int(r.headers["Retry-After"]) >= 1
            error = (await r.json())["error"]
        assert error["type"] == "hold_timeout" and "empty" in error["message"]
        assert 0.45 < elapsed < 3
        assert await metric(http, proxy, 'scui_proxy_held_requests{model="empty"}') == 0
        assert proxy.registry.apps["empty"].held == 0
        # Requests bound to a prompt, and lists, never wake nor wait.
        gone = ids.mint("empty", "empty-7")
        for path, status in (
            (f"/history/{gone}", 404),
            (f"/api/jobs/{gone}", 404),
            (f"/view?filename=x.png&subfolder={gone}", 404),
            ("/queue?model=empty", 200),
            ("/history?model=empty", 200),
            ("/api/jobs?model=empty", 200),
        ):
            async with http.get(proxy.url + path, timeout=aiohttp.ClientTimeout(total=0.4)) as r:
                assert r.status == status, path
        async with http.get(f"{proxy.url}/queue?model=empty") as r:
            assert await r.json() == {"queue_running": [], "queue_pending": []}
        async with http.get(f"{proxy.url}/healthz") as r:
            assert r.status == 200


async def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Waits for condition (polling): fixed sleeps fail on a loaded 2-core machine."""
    for _ in range(int(seconds / 0.01)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def test_held_request_released_when_a_pod_becomes_ready(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    settings = ProxySettings(static_backends={"flux": []}, hold_timeout_seconds=10)
    async with serve_proxy(settings) as proxy:
        # The metrics registry is per process (as in production): count from here on.
        cold_starts = 'scui_proxy_cold_start_seconds_count{model="flux"}'
        before = await metric(http, proxy, cold_starts)
        task = asyncio.create_task(http.get(f"{proxy.url}/system_stats?model=flux"))
        app = proxy.registry.apps["flux"]
        await until(lambda: app.held == 1)
        assert app.wake_started is not None
        app.set_pod(PodState("flux-0", emus[0].url, ready=True))
        async with await task as r:
            assert r.status == 200
        assert app.held == 0 and app.wake_started is None
        assert await metric(http, proxy, cold_starts) == (before or 0) + 1


async def test_hold_queue_is_capped_and_a_client_that_leaves_is_forgotten(
    http: aiohttp.ClientSession,
) -> None:
    settings = ProxySettings(
        static_backends={"flux": []}, hold_timeout_seconds=30, max_held_per_model=1
    )
    async with serve_proxy(settings) as proxy:
        app = proxy.registry.apps["flux"]
        with pytest.raises(TimeoutError):
            async with http.get(
                f"{proxy.url}/system_stats?model=flux", timeout=aiohttp.ClientTimeout(total=0.3)
            ):
                pass
        for _ in range(100):
            if app.held == 0:
                break
            await asyncio.sleep(0.02)
        assert app.held == 0  # the disconnected client no longer holds a place
        held = asyncio.create_task(http.get(f"{proxy.url}/system_stats?model=flux"))
        await until(lambda: app.held == 1)
        async with http.get(f"{proxy.url}/object_info?model=flux") as r:
            assert r.status == 503 and "Retry-After" in r.headers
            assert (await r.json())["error"]["type"] == "hold_rejected"
        held.cancel()


# -- bad input --------------------------------------------------------------------------------


async def test_bad_input_is_a_clear_4xx_and_the_proxy_stays_healthy(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    settings = ProxySettings(static_backends={"flux": [emus[0].url]}, max_body_bytes=4096)
    async with serve_proxy(settings) as proxy:
        cases: list[tuple[str, str, dict[str, Any], int, str]] = [
            ("POST", "/prompt", {"data": b'{"model": "flux", "prompt": {'}, 400, "invalid_json"),
            (
                "POST",
                "/prompt",
                {"data": b'["flux"]', "headers": {"X-Model": "flux"}},
                400,
                "invalid_prompt_body",
            ),
            ("POST", "/prompt", {"json": {"prompt": {}}}, 400, "missing_model"),
            ("GET", "/system_stats", {}, 400, "missing_model"),
            ("POST", "/prompt", {"json": {"model": "nope", "prompt": {}}}, 404, "unknown_model"),
            (
                "POST",
                "/prompt",
                {"json": {"model": "flux", "p": "x" * 5000}},
                413,
                "body_too_large",
            ),
            ("POST", "/queue", {"json": {"model": "flux", "delete": "abc"}}, 400, "bad_request"),
            # What ComfyUI itself would answer with a bare 500:
            (
                "POST",
                "/prompt",
                {"json": {"model": "flux", "prompt": "x"}},
                400,
                "invalid_prompt_body",
            ),
            (
                "POST",
                "/prompt",
                {"json": {"model": "flux", "prompt": {}, "extra_data": [], "number": "n"}},
                400,
                "invalid_prompt_body",
            ),
            ("GET", "/history?model=flux&max_items=x", {}, 400, "bad_request"),
            ("POST", "/interrupt", {"json": {"model": "flux"}}, 200, ""),
            (
                "POST",
                "/upload/image",
                {"data": upload_form(image_text=True)},
                400,
                "invalid_upload",
            ),
            ("POST", "/upload/image", {"data": upload_form(kind="x")}, 400, "invalid_upload"),
            ("POST", "/upload/mask", {"data": upload_form()}, 400, "invalid_upload"),
            ("GET", "/no/such/path", {}, 404, "not_found"),
            ("DELETE", "/prompt", {}, 405, "method_not_allowed"),
            ("POST", "/openai/api/jobs", {}, 405, "method_not_allowed"),
        ]
        for method, path, kwargs, status, kind in cases:
            async with http.request(method, proxy.url + path, **kwargs) as r:
                assert r.status == status, (path, kind, await r.text())
                if kind:
                    error = (await r.json())["error"]
                    assert error["type"] == kind and error["message"]
        async with http.get(f"{proxy.url}/prompt") as r:
            assert "model" in (await r.json())["error"]["message"]  # says where to put it
        async with http.get(f"{proxy.url}/queue?model=nope") as r:
            assert "'nope'" in (await r.json())["error"]["message"]
        async with http.get(f"{proxy.url}/healthz") as r:
            assert r.status == 200
        async with http.get(f"{proxy.url}/readyz") as r:
            assert r.status == 200 and (await r.json())["applications"] == ["flux"]
        assert (
            await metric(
                http, proxy, 'scui_proxy_requests_total{model="",route="prompt",status="400"}'
            )
            == 2
        )
