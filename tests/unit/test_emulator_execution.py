"""Execution behaviour of the ComfyUI emulator: images, timing, caching, queue order, files."""

from __future__ import annotations

import asyncio
import copy
import io
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from serverless_comfyui.emulator import EmulatorSettings
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator

FIXTURES = Path(__file__).parents[1] / "fixtures" / "comfyui-0.8.0"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    async with serve_emulator(EmulatorSettings(data_dir=tmp_path, step_seconds=0.01)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def flux_prompt(steps: int = 4, prefix: str = "flux", text: str = "a lighthouse") -> dict[str, Any]:
    """The Flux.1-dev workflow recorded in history_execution_error.json (256x256)."""
    history = json.loads((FIXTURES / "history_execution_error.json").read_text())
    prompt: dict[str, Any] = copy.deepcopy(next(iter(history.values()))["prompt"][2])
    prompt["17"]["inputs"]["steps"] = steps
    prompt["39"]["inputs"]["filename_prefix"] = prefix
    prompt["43"]["inputs"]["text"] = text
    return prompt


def image_prompt(prefix: str, width: int = 32, height: int = 16, batch: int = 1) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": width, "height": height, "batch_size": batch, "color": 0xFF0000},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


async def submit(
    http: aiohttp.ClientSession, emu: RunningEmulator, prompt: dict[str, Any], **extra: Any
) -> dict[str, Any]:
    async with http.post(f"{emu.url}/prompt", json={"prompt": prompt, **extra}) as response:
        body: dict[str, Any] = await response.json()
        assert response.status == 200, body
        return body


async def wait_done(http: aiohttp.ClientSession, emu: RunningEmulator, prompt_id: str) -> Any:
    deadline = time.monotonic() + 60  # a bound for a broken emulator, not a speed check
    while time.monotonic() < deadline:
        async with http.get(f"{emu.url}/api/history/{prompt_id}") as response:
            body = await response.json()
        if body:
            return body[prompt_id]
        await asyncio.sleep(0.01)
    raise AssertionError(f"prompt {prompt_id} did not finish")


async def until_executing_none(ws: aiohttp.ClientWebSocketResponse) -> list[dict[str, Any]]:
    messages = []
    while True:
        message = await ws.receive_json(timeout=5)
        messages.append(message)
        if message["type"] == "executing" and message["data"]["node"] is None:
            return messages


async def test_full_cycle_yields_a_real_png(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    for prefix in ("", "/api"):
        async with http.ws_connect(f"{emu.ws_url}{prefix}/ws?clientId=cycle") as ws:
            hello = await ws.receive_json(timeout=5)
            assert hello["data"]["sid"] == "cycle"
            prompt = flux_prompt(prefix="out/run", text=f"lighthouse {prefix}")
            body = await submit(http, emu, prompt, client_id="cycle")
            messages = await until_executing_none(ws)
        prompt_id = body["prompt_id"]
        executed = [m["data"] for m in messages if m["type"] == "executed"]
        assert executed[0]["node"] == "39"
        image = executed[0]["output"]["images"][0]
        assert image["subfolder"] == "out"
        entry = await wait_done(http, emu, prompt_id)
        assert entry["outputs"]["39"]["images"][0] == image
        async with http.get(f"{emu.url}{prefix}/view", params=image) as response:
            assert response.status == 200
            assert response.headers["Content-Type"] == "image/png"
            data = await response.read()
        assert data.startswith(PNG_SIGNATURE)
        with Image.open(io.BytesIO(data)) as png:
            assert png.size == (64, 64)  # 256x256 scaled to max_image_side
            assert json.loads(png.info["prompt"])["39"]["class_type"] == "SaveImage"
    names = sorted(os.listdir(os.path.join(emu.state.dirs.output, "out")))
    assert names == ["run_00001_.png", "run_00002_.png"]


async def test_sampler_progress_timing_and_model_loading(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = EmulatorSettings(data_dir=tmp_path, step_seconds=0.02, model_load_seconds=0.3)
    async with (
        serve_emulator(settings) as emu,
        http.ws_connect(f"{emu.ws_url}/ws?clientId=p") as ws,
    ):
        await ws.receive_json(timeout=5)
        timings = []
        for text in ("first", "second"):
            start = time.monotonic()
            await submit(http, emu, flux_prompt(steps=5, text=text), client_id="p")
            messages = await until_executing_none(ws)
            timings.append(time.monotonic() - start)
        cached = [m["data"]["nodes"] for m in messages if m["type"] == "execution_cached"]
        progress = [m["data"] for m in messages if m["type"] == "progress"]
        async with http.post(f"{emu.url}/free", json={"unload_models": True}) as response:
            assert response.status == 200
        await asyncio.sleep(0.05)
        start = time.monotonic()
        await submit(http, emu, flux_prompt(steps=5, text="third"), client_id="p")
        await until_executing_none(ws)
        timings.append(time.monotonic() - start)
    assert [(p["value"], p["max"], p["node"]) for p in progress] == [
        (i, 5, "40") for i in range(1, 6)
    ]
    # Loaders and the unchanged nodes are cached the second time; only the text changed.
    assert set(cached[0]) == {"10", "11", "17", "44", "45", "46", "47", "48"}
    assert timings[0] >= 0.3 + 5 * 0.02
    assert timings[1] < 0.3
    assert timings[2] >= 0.3  # /free unloaded the models, so they load again


async def test_counter_continues_from_existing_files(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    output = Path(emu.state.dirs.output)
    (output / "batch_00007_.png").write_bytes(b"old")
    body = await submit(http, emu, image_prompt("batch", batch=2))
    entry = await wait_done(http, emu, body["prompt_id"])
    names = [i["filename"] for i in entry["outputs"]["2"]["images"]]
    assert names == ["batch_00008_.png", "batch_00009_.png"]
    with Image.open(output / names[0]) as png:
        assert png.size == (32, 16)
        assert png.convert("RGB").getpixel((0, 0)) == (255, 0, 0)


async def test_upload_then_load_image(emu: RunningEmulator, http: aiohttp.ClientSession) -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (20, 10), (0, 0, 255)).save(buffer, format="PNG")
    names = []
    for content in (buffer.getvalue(), b"other", buffer.getvalue()):
        form = aiohttp.FormData()
        form.add_field("image", content, filename="pic.png", content_type="image/png")
        async with http.post(f"{emu.url}/api/upload/image", data=form) as response:
            names.append((await response.json())["name"])
    assert names == ["pic.png", "pic (1).png", "pic.png"]
    form = aiohttp.FormData()
    form.add_field("image", b"x", filename="escape.png")
    form.add_field("subfolder", "../..")
    async with http.post(f"{emu.url}/upload/image", data=form) as response:
        assert response.status == 400

    async with http.get(f"{emu.url}/object_info/LoadImage") as response:
        listed = (await response.json())["LoadImage"]["input"]["required"]["image"][0]
    assert listed == ["pic (1).png", "pic.png"]
    prompt = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "pic.png"}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inv"}},
    }
    entry = await wait_done(http, emu, (await submit(http, emu, prompt))["prompt_id"])
    image = entry["outputs"]["3"]["images"][0]
    with Image.open(Path(emu.state.dirs.output) / image["filename"]) as png:
        assert png.size == (20, 10)
        assert png.convert("RGB").getpixel((0, 0)) == (255, 255, 0)


async def test_view_refuses_path_traversal(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    (Path(emu.state.dirs.input) / "in.png").write_bytes(b"data")
    cases = [
        ({"filename": "../input/in.png"}, 400),
        ({"filename": "/etc/passwd"}, 400),
        ({"filename": "in.png", "type": "input", "subfolder": "../../"}, 403),
        ({"filename": "in.png", "type": "bogus"}, 400),
        ({"filename": "in.png", "type": "input"}, 200),
        ({"filename": "in.png [input]"}, 200),
    ]
    for params, status in cases:
        async with http.get(f"{emu.url}/view", params=params) as response:
            assert response.status == status, params


async def test_front_and_number_order_the_queue(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    async with serve_emulator(EmulatorSettings(data_dir=tmp_path, step_seconds=0.2)) as emu:
        # 500 steps of 0.2 s: still running however slowly the next three arrive.
        await submit(http, emu, flux_prompt(steps=500))
        later = await submit(http, emu, image_prompt("later"))
        first = await submit(http, emu, image_prompt("first"), front=True)
        explicit = await submit(http, emu, image_prompt("explicit"), number=-100)
        assert first["number"] == -2
        assert explicit["number"] == -100.0
        async with http.get(f"{emu.url}/queue") as response:
            pending = [item[1] for item in (await response.json())["queue_pending"]]
        assert set(pending) == {later["prompt_id"], first["prompt_id"], explicit["prompt_id"]}
        async with http.post(f"{emu.url}/interrupt", json={}) as response:  # the blocker
            assert response.status == 200
        await wait_done(http, emu, later["prompt_id"])
        order = list(emu.state.queue.history)
    assert order[1:] == [explicit["prompt_id"], first["prompt_id"], later["prompt_id"]]


async def test_interrupt_and_queue_management(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(f"{emu.ws_url}/ws?clientId=i") as ws:
        await ws.receive_json(timeout=5)
        running = await submit(http, emu, flux_prompt(steps=500), client_id="i")
        queued = await submit(http, emu, image_prompt("never"), client_id="i")
        while True:
            message = await ws.receive_json(timeout=5)
            if message["type"] == "progress":
                break
        # Reconnecting while the prompt runs tells the client which node is executing.
        async with http.ws_connect(f"{emu.ws_url}/ws?clientId=i") as again:
            assert (await again.receive_json(timeout=5))["type"] == "status"
            assert await again.receive_json(timeout=5) == {
                "type": "executing",
                "data": {"node": "40"},
            }
        async with http.post(f"{emu.url}/interrupt", json={"prompt_id": "other"}) as response:
            assert response.status == 200
        assert not emu.state.interrupt_requested
        async with http.post(f"{emu.url}/queue", json={"delete": [queued["prompt_id"]]}) as r:
            assert r.status == 200
        async with http.post(f"{emu.url}/api/interrupt") as response:
            assert response.status == 200
        entry = await wait_done(http, emu, running["prompt_id"])
    status = entry["status"]
    assert status["status_str"] == "error" and status["completed"] is False
    assert status["messages"][-1][0] == "execution_interrupted"
    assert status["messages"][-1][1]["node_id"] == "40"
    assert set(status["messages"][-1][1]) == {
        "prompt_id",
        "node_id",
        "node_type",
        "executed",
        "timestamp",
    }
    async with http.get(f"{emu.url}/api/jobs/{running['prompt_id']}") as response:
        assert (await response.json())["status"] == "failed"
    async with http.get(f"{emu.url}/history/{queued['prompt_id']}") as response:
        assert await response.json() == {}
    async with http.post(f"{emu.url}/history", json={"delete": [running["prompt_id"]]}) as r:
        assert r.status == 200
    async with http.get(f"{emu.url}/history") as response:
        assert await response.json() == {}


async def test_feature_flags_handshake(emu: RunningEmulator, http: aiohttp.ClientSession) -> None:
    async with http.ws_connect(f"{emu.ws_url}/ws") as ws:
        hello = await ws.receive_json(timeout=5)
        assert len(hello["data"]["sid"]) == 32
        await ws.send_json({"type": "feature_flags", "data": {"supports_preview_metadata": True}})
        reply = await ws.receive_json(timeout=5)
    features = json.loads((FIXTURES / "features.json").read_text())[1]
    assert reply == {"type": "feature_flags", "data": features}


async def test_models_dir_lists_model_files(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    models = tmp_path / "models"
    for rel in ("unet/legacy.sft", "diffusion_models/sub/new.safetensors", "vae/ae.safetensors"):
        (models / rel).parent.mkdir(parents=True, exist_ok=True)
        (models / rel).write_bytes(b"")
    (models / "vae" / "notes.txt").write_text("not a model")
    settings = EmulatorSettings(data_dir=tmp_path / "data", models_dir=models)
    async with serve_emulator(settings) as emu:
        async with http.get(f"{emu.url}/object_info") as response:
            info = await response.json()
        async with http.get(f"{emu.url}/models/diffusion_models") as response:
            listed = await response.json()
    assert info["UNETLoader"]["input"]["required"]["unet_name"][0] == listed
    assert listed == ["legacy.sft", "sub/new.safetensors"]
    assert info["VAELoader"]["input"]["required"]["vae_name"][0] == [
        "ae.safetensors",
        "pixel_space",
    ]
    assert info["DualCLIPLoader"]["input"]["required"]["clip_name1"][0] == []
