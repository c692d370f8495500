"""The comfyui-api compatible endpoint, with the seed's request (a Flux.1-dev workflow in API
format posted as `{prompt: ...}`, as the FluxEz front end does): base64 images back, webhooks
signed per Standard Webhooks, ComfyUI's own validation errors relayed."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from api_harness import (
    FIXTURES,
    MODEL,
    RunningApi,
    add_pod,
    emulator,
    emulator_state,
    fast_settings,
    file_store_url,
    final,
    serve_api,
    wait_task,
    webhook_receiver,
)
from serverless_comfyui.emulator.testing import RunningEmulator
from serverless_comfyui.proxy.registry import Registry

SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()


def seed_request() -> dict[str, Any]:
    body: dict[str, Any] = json.loads(
        (FIXTURES / "api" / "seed000_comfyui_api_request.json").read_text()
    )
    body.pop("_source")
    return body


@pytest.fixture
async def setup(
    tmp_path: Path,
) -> AsyncIterator[tuple[RunningApi, RunningEmulator, aiohttp.ClientSession]]:
    registry = Registry()
    async with (
        emulator(tmp_path, "a", step_seconds=0.002) as emu,
        aiohttp.ClientSession() as session,
    ):
        add_pod(registry, "pod-a", emu.url)
        settings = fast_settings(tmp_path, file_store_url(tmp_path), webhook_secret=SECRET)
        async with serve_api(settings, registry) as api:
            yield api, emu, session


async def test_seed_request_gets_base64_images(
    setup: tuple[RunningApi, RunningEmulator, aiohttp.ClientSession],
) -> None:
    api, emu, session = setup
    body = seed_request()
    # FluxEz only changes its base URL: <base>/prompt with {prompt}.
    async with session.post(f"{api.url}/comfyui-api/{MODEL}/prompt", json=body) as answer:
        assert answer.status == 200, await answer.text()
        result = await answer.json()
    assert set(result) >= {"id", "prompt", "images", "filenames", "stats"}
    assert result["prompt"] == body["prompt"]
    [image] = result["images"]
    assert Image.open(io.BytesIO(base64.b64decode(image))).format == "PNG"
    assert result["filenames"][0].endswith(".png")
    # Sent to the pod with a per-prompt filename prefix, the client's workflow otherwise intact.
    task = await wait_task(session, api.v1, result["task_id"], final)
    async with session.get(f"{emu.url}/history/{task['prompt_id']}") as answer:
        sent = (await answer.json())[task["prompt_id"]]["prompt"][2]
    expected = copy.deepcopy(body["prompt"])
    expected["39"]["inputs"]["filename_prefix"] = f"api/{task['prompt_id']}"
    assert {k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in sent.items()} == {
        k: {kk: vv for kk, vv in v.items() if kk != "_meta"} for k, v in expected.items()
    }


async def test_model_from_field_header_or_single_app_and_jpeg(
    setup: tuple[RunningApi, RunningEmulator, aiohttp.ClientSession],
) -> None:
    api, _, session = setup
    body = {
        **seed_request(),
        "model": MODEL,
        "id": "req-1",
        "convert_output": {"format": "jpg", "options": {"quality": 70}},
    }
    async with session.post(f"{api.url}/comfyui-api/prompt", json=body) as answer:
        result = await answer.json()
        assert answer.status == 200, result
    assert result["id"] == "req-1"
    assert Image.open(io.BytesIO(base64.b64decode(result["images"][0]))).format == "JPEG"
    # `id` is also an idempotency key: the same request answers the same task.
    async with session.post(f"{api.url}/comfyui-api/prompt", json=body) as answer:
        again = await answer.json()
    assert again["task_id"] == result["task_id"]
    # Without any model: the only application.
    async with session.post(f"{api.url}/comfyui-api/prompt", json=seed_request()) as answer:
        assert answer.status == 200
    async with session.post(
        f"{api.url}/comfyui-api/prompt", json=seed_request(), headers={"X-Model": "nope"}
    ) as answer:
        error = await answer.json()
        assert answer.status == 422
    assert error["error"]["errors"][0]["field"] == "model"


async def test_webhook_v2_answers_202_and_delivers_signed_prompt_complete(
    setup: tuple[RunningApi, RunningEmulator, aiohttp.ClientSession],
) -> None:
    api, _, session = setup
    async with webhook_receiver() as receiver:
        body = {**seed_request(), "webhook_v2": receiver.url}
        async with session.post(f"{api.url}/comfyui-api/{MODEL}/prompt", json=body) as answer:
            accepted = await answer.json()
            assert answer.status == 202, accepted
        assert accepted["status"] == "ok" and accepted["webhook_v2"] == receiver.url
        task = await wait_task(
            session,
            api.v1,
            accepted["task_id"],
            lambda t: (t["webhook"] or {}).get("state") == "delivered",
        )
        [(_, headers, raw)] = receiver.requests
    # Verify independently of the API's code (Standard Webhooks).
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + raw
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    assert headers["webhook-signature"] == f"v1,{expected}"
    assert headers["webhook-id"] == f"msg_{task['id']}"
    payload = json.loads(raw)
    assert payload["type"] == "prompt.complete" and payload["id"] == accepted["id"]
    assert base64.b64decode(payload["images"][0])[:4] == b"\x89PNG"
    assert payload["filenames"] == [r["filename"] for r in task["results"]]


async def test_comfyui_validation_error_is_relayed_unchanged(
    setup: tuple[RunningApi, RunningEmulator, aiohttp.ClientSession],
) -> None:
    api, emu, session = setup
    body = seed_request()
    body["prompt"]["47"]["class_type"] = "NoSuchNode"
    async with session.post(f"{api.url}/comfyui-api/{MODEL}/prompt", json=body) as answer:
        error = await answer.json()
        assert answer.status == 400
    assert error["error"]["type"] == "invalid_prompt" and "node_errors" in error
    # A body that is not a workflow never reaches the pod.
    async with session.post(
        f"{api.url}/comfyui-api/{MODEL}/prompt", json={"prompt": {"1": {"inputs": {}}}}
    ) as answer:
        refused = await answer.json()
        assert answer.status == 422
    assert refused["error"]["errors"][0] == {
        "field": "prompt.1.class_type",
        "rule": "required",
        "message": "must be a string",
    }
    state = await emulator_state(session, emu.url)
    assert state["prompts_executed"] == 0
