"""The proxy's ComfyUI-facing paths against the real ComfyUI 0.8.0 (on CPU, weightless graphs)
and against the emulator, with the same assertions: the seed's calls, prompt -> history -> view,
the WebSocket message sequence, error passthrough and uploads. Where the two differed (ImageInvert
rounding), the emulator was fixed and `test_emulator_and_comfyui_agree` keeps them equal."""

from __future__ import annotations

import asyncio
import io
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from comfyui_backends import Stack, proxy_in_front, start_backend
from serverless_comfyui.proxy import ids

pytestmark = pytest.mark.comfyui

FIXTURES = Path(__file__).parents[1] / "fixtures" / "comfyui-0.8.0"
# A CPU run of these graphs takes milliseconds; the first prompt after a pause ~2 s. The limit
# is for a loaded machine.
PROMPT_SECONDS = 120.0
RESULTS: dict[str, dict[str, Any]] = {}


@pytest.fixture(scope="module", params=["emulator", "real"])
def stack(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    kind = str(request.param)
    folder = tmp_path_factory.mktemp(kind)
    with start_backend(kind, folder / "comfyui") as backend, proxy_in_front(backend, folder) as s:
        yield s


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROMPT_SECONDS)) as s:
        yield s


def invert_graph(image: dict[str, Any], prefix: str = "inv") -> dict[str, Any]:
    return {
        "1": image,
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


def empty_image(color: int, width: int = 8, height: int = 8) -> dict[str, Any]:
    inputs = {"width": width, "height": height, "batch_size": 1, "color": color}
    return {"class_type": "EmptyImage", "inputs": inputs}


async def post_prompt(
    http: aiohttp.ClientSession, stack: Stack, graph: dict[str, Any], **extra: Any
) -> tuple[int, Any]:
    body = {"model": stack.model, "prompt": graph, **extra}
    async with http.post(f"{stack.proxy_url}/api/prompt", json=body) as answer:
        return answer.status, await answer.json()


async def history(http: aiohttp.ClientSession, stack: Stack, prompt_id: str) -> Any:
    deadline = time.monotonic() + PROMPT_SECONDS
    while time.monotonic() < deadline:
        url = f"{stack.proxy_url}/api/history/{prompt_id}"
        async with http.get(url, params={"model": stack.model}) as answer:
            assert answer.status == 200
            body = await answer.json()
        if body:
            return body[prompt_id]
        await asyncio.sleep(0.1)
    raise AssertionError(f"{prompt_id} did not finish in {PROMPT_SECONDS:.0f} s")


async def view(http: aiohttp.ClientSession, stack: Stack, image: dict[str, str]) -> Image.Image:
    params = {**image, "model": stack.model}
    async with http.get(f"{stack.proxy_url}/api/view", params=params) as answer:
        assert answer.status == 200, await answer.text()
        assert answer.content_type == "image/png"
        return Image.open(io.BytesIO(await answer.read()))


async def test_seed_calls(stack: Stack, http: aiohttp.ClientSession) -> None:
    """The seed's wake-up call (a GET with a JSON body naming the model) and the queue."""
    body = json.dumps({"model": stack.model})
    async with http.get(f"{stack.proxy_url}/openai/api/system_stats", data=body) as answer:
        assert answer.status == 200
        stats = await answer.json()
    assert stats["system"]["comfyui_version"] == "0.8.0"
    async with http.get(f"{stack.proxy_url}/openai/api/queue", data=body) as answer:
        assert answer.status == 200
        assert set(await answer.json()) == {"queue_running", "queue_pending"}


async def test_prompt_history_view(stack: Stack, http: aiohttp.ClientSession) -> None:
    status, answer = await post_prompt(http, stack, invert_graph(empty_image(0xC8C8C8)))
    assert status == 200, answer
    prompt_id = answer["prompt_id"]
    route = ids.decode(prompt_id)  # minted by the proxy, carrying its application
    assert route is not None and route.model_hash == ids.model_hash(stack.model)
    entry = await history(http, stack, prompt_id)
    assert entry["status"]["status_str"] == "success"
    (image,) = entry["outputs"]["3"]["images"]
    assert image["subfolder"] == prompt_id  # the filename prefix, rewritten per prompt
    png = await view(http, stack, image)
    assert png.size == (8, 8)
    RESULTS.setdefault("invert_200", {})[stack.backend.kind] = png.convert("RGB").getpixel((0, 0))


def _types(messages: list[dict[str, Any]]) -> list[str]:
    """Message types in order, repeated status messages collapsed."""
    types: list[str] = []
    for message in messages:
        if not (types and types[-1] == message["type"] == "status"):
            types.append(message["type"])
    return types


async def test_websocket_sequence(stack: Stack, http: aiohttp.ClientSession) -> None:
    client_id = f"ws-{uuid.uuid4()}"
    ws_url = stack.proxy_url.replace("http", "ws") + "/ws"
    params = {"clientId": client_id, "model": stack.model}
    async with http.ws_connect(ws_url, params=params) as ws:
        greeting = await ws.receive_json(timeout=30)
        assert greeting["type"] == "status" and greeting["data"]["sid"] == client_id
        status, answer = await post_prompt(
            http, stack, invert_graph(empty_image(0x102030), "ws"), client_id=client_id
        )
        assert status == 200, answer
        messages = [greeting]
        while True:
            message = await ws.receive_json(timeout=PROMPT_SECONDS)
            messages.append(message)
            data = message.get("data") or {}
            if message["type"] == "executing" and data.get("node") is None:
                break
    assert data["prompt_id"] == answer["prompt_id"]
    recorded = json.loads((FIXTURES / "ws_success.json").read_text())["messages"]
    seen = _types(messages)
    # ComfyUI's order (the recording's): start, cached, progress, executing/executed per node,
    # success, then executing null last; our graph has one more node than the recording's.
    assert seen[0] == "status" and seen[-1] == "executing"
    assert seen.index("execution_start") < seen.index("executed") < seen.index("execution_success")
    assert set(seen) <= set(_types(recorded)) | {"progress"}
    RESULTS.setdefault("ws_types", {})[stack.backend.kind] = seen


async def test_errors_pass_through(stack: Stack, http: aiohttp.ClientSession) -> None:
    recorded = {name: body for name, (_, body) in json.loads(
        (FIXTURES / "prompt_errors.json").read_text()).items()}  # fmt: skip
    status, answer = await post_prompt(
        http, stack, {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    )
    assert status == 400
    assert answer["error"]["type"] == "invalid_prompt" and answer["node_errors"] == {}
    assert set(answer["error"]) == set(next(iter(recorded.values()))["error"])
    status, answer = await post_prompt(http, stack, invert_graph(empty_image(0, width=-5)))
    assert status == 400
    assert answer["error"]["type"] == "prompt_outputs_failed_validation"
    assert answer["node_errors"]["1"]["errors"][0]["type"] == "value_smaller_than_min"
    RESULTS.setdefault("errors", {})[stack.backend.kind] = answer


async def test_upload_then_invert(stack: Stack, http: aiohttp.ClientSession) -> None:
    gradient = Image.new("L", (16, 16))
    gradient.putdata(list(range(256)))
    buffer = io.BytesIO()
    gradient.convert("RGB").save(buffer, format="PNG")
    form = aiohttp.FormData()
    form.add_field("model", stack.model)
    form.add_field("image", buffer.getvalue(), filename="gradient.png", content_type="image/png")
    async with http.post(f"{stack.proxy_url}/api/upload/image", data=form) as answer:
        assert answer.status == 200, await answer.text()
        uploaded = await answer.json()
    assert uploaded["name"].startswith("gradient") and uploaded["type"] == "input"
    load = {"class_type": "LoadImage", "inputs": {"image": uploaded["name"]}}
    status, answer = await post_prompt(http, stack, invert_graph(load, "upload"))
    assert status == 200, answer
    entry = await history(http, stack, answer["prompt_id"])
    (image,) = entry["outputs"]["3"]["images"]
    png = (await view(http, stack, image)).convert("L")
    RESULTS.setdefault("invert_gradient", {})[stack.backend.kind] = list(png.getdata())


def test_emulator_and_comfyui_agree() -> None:
    """Runs after both backends' tests (module order): what they answered is the same."""
    for name, by_kind in RESULTS.items():
        assert set(by_kind) == {"emulator", "real"}, f"{name}: {sorted(by_kind)}"
    # ComfyUI inverts in float32 and truncates: 255 * (1 - 200/255) is saved as 54.
    assert RESULTS["invert_200"] == {"emulator": (54, 54, 54), "real": (54, 54, 54)}
    assert RESULTS["invert_gradient"]["emulator"] == RESULTS["invert_gradient"]["real"]
    assert RESULTS["ws_types"]["emulator"] == RESULTS["ws_types"]["real"]
    emulator, real = RESULTS["errors"]["emulator"], RESULTS["errors"]["real"]
    assert emulator == real
