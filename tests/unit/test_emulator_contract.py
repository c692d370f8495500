"""Contract tests: the ComfyUI emulator answers like the recorded ComfyUI 0.8.0.

Each test replays what was recorded in tests/fixtures/comfyui-0.8.0 and compares the emulator's
answer with the recording: status codes and bodies of POST /prompt errors, every WebSocket
message of a successful and of a failing prompt, history, jobs and queue shapes.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serverless_comfyui.emulator import EmulatorSettings
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator

FIXTURES = Path(__file__).parents[1] / "fixtures" / "comfyui-0.8.0"
VOLATILE = {"timestamp", "create_time", "traceback"}


def load(name: str) -> Any:
    return json.loads((FIXTURES / name).read_text())


def scrub(value: Any) -> Any:
    """Drop what differs between runs: timestamps, creation times, tracebacks."""
    if isinstance(value, dict):
        return {k: scrub(v) for k, v in value.items() if k not in VOLATILE}
    if isinstance(value, list):
        return [scrub(v) for v in value]
    return value


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    settings = EmulatorSettings(data_dir=tmp_path, step_seconds=0.01)
    async with serve_emulator(settings) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def empty_image_prompt(prefix: str = "ComfyUI", color: int = 255) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": prefix}},
    }


def flux_prompt(steps: int = 4, prefix: str = "flux") -> dict[str, Any]:
    """The Flux.1-dev workflow recorded in history_execution_error.json."""
    entry = next(iter(load("history_execution_error.json").values()))
    prompt: dict[str, Any] = copy.deepcopy(entry["prompt"][2])
    prompt["17"]["inputs"]["steps"] = steps
    prompt["39"]["inputs"]["filename_prefix"] = prefix
    return prompt


async def wait_done(http: aiohttp.ClientSession, emu: RunningEmulator, prompt_id: str) -> Any:
    deadline = time.monotonic() + 60  # a bound for a broken emulator, not a speed check
    while time.monotonic() < deadline:
        async with http.get(f"{emu.url}/history/{prompt_id}") as response:
            body = await response.json()
        if body:
            await emu.state.hub.drain(2.0)
            return body[prompt_id]
        await asyncio.sleep(0.01)
    raise AssertionError(f"prompt {prompt_id} did not finish")


async def collect(ws: aiohttp.ClientWebSocketResponse, prompt_id: str) -> list[dict[str, Any]]:
    """Messages up to `executing` with node null for prompt_id, minus other prompts' messages."""
    messages = []
    while True:
        message = await ws.receive_json(timeout=5)
        data = message["data"]
        if isinstance(data, dict) and data.get("prompt_id", prompt_id) != prompt_id:
            continue
        messages.append(message)
        if message["type"] == "executing" and data["node"] is None:
            return messages


# -- POST /prompt errors -----------------------------------------------------------------------

ERROR_REQUESTS: dict[str, dict[str, Any]] = {
    "unknown_class": {"prompt": {"1": {"class_type": "Nope", "inputs": {}}}},
    "bad_int": {
        "prompt": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": "abc", "height": 64, "batch_size": 1, "color": 0},
            },
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "x"},
            },
        }
    },
    "no_outputs": {
        "prompt": {
            "1": {
                "class_type": "EmptyImage",
                "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0},
            }
        }
    },
    "no_prompt": {"client_id": "someone"},
    "missing_input": {
        "prompt": {
            "1": {"class_type": "EmptyImage", "inputs": {"width": 64}},
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "x"},
            },
        }
    },
    "bad_link": {
        "prompt": {
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["99", 0], "filename_prefix": "x"},
            }
        }
    },
    "value_not_in_list": {
        "prompt": {
            "1": {"class_type": "LoadImage", "inputs": {"image": "does-not-exist.png"}},
            "2": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 0], "filename_prefix": "x"},
            },
        }
    },
}


@pytest.mark.parametrize("case", sorted(ERROR_REQUESTS))
async def test_prompt_errors_match_recording(
    emu: RunningEmulator, http: aiohttp.ClientSession, case: str
) -> None:
    status, expected = load("prompt_errors.json")[case]
    async with http.post(f"{emu.url}/prompt", json=ERROR_REQUESTS[case]) as response:
        assert response.status == status
        body = await response.json()
    if case == "missing_input":
        # ComfyUI walks a Python set of input names, so its order varies from run to run.
        for nodes in (body["node_errors"], expected["node_errors"]):
            nodes["1"]["errors"].sort(key=lambda e: e["details"])
    assert scrub(body) == scrub(expected)
    if case == "bad_link":
        trace = body["node_errors"]["2"]["errors"][0]["extra_info"]["traceback"]
        assert len(trace) == 2
        assert all(line.startswith('  File "') for line in trace)


async def test_client_prompt_id_is_used_as_is(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, expected = load("prompt_errors.json")["bad_prompt_id"]
    request = {"prompt": empty_image_prompt(), "prompt_id": "not-a-uuid", "model": "flux-dev"}
    async with http.post(f"{emu.url}/prompt", json=request) as response:
        assert response.status == status
        body = await response.json()
    assert set(body) == set(expected)
    assert body["prompt_id"] == expected["prompt_id"]
    assert body["node_errors"] == {}
    assert isinstance(body["number"], int)


async def test_body_that_is_not_json_gets_the_bare_500(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, expected = load("prompt_errors.json")["invalid_json"]
    for path in ("/prompt", "/api/prompt"):
        async with http.post(emu.url + path, data=b"{not json") as response:
            assert response.status == status
            assert await response.text() == expected


async def test_mismatched_origin_is_refused(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, expected = load("prompt_errors.json")["origin_mismatch"]
    headers = {"Origin": "http://evil.example"}
    request = {"prompt": empty_image_prompt()}
    async with http.post(f"{emu.url}/prompt", json=request, headers=headers) as response:
        assert response.status == status
        assert await response.text() == expected
    # A matching Origin is fine, and so is one on another port when the Host has none.
    headers = {"Origin": emu.url}
    async with http.post(f"{emu.url}/prompt", json=request, headers=headers) as response:
        assert response.status == 200
    headers = {"Origin": "http://127.0.0.1:9999", "Host": "127.0.0.1"}
    async with http.get(f"{emu.url}/prompt", headers=headers) as response:
        assert response.status == 200


# -- WebSocket sequences ----------------------------------------------------------------------


async def test_ws_success_sequence_matches_recording(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    recorded = load("ws_success.json")
    history = load("history_success.json")
    prompt_id = recorded["prompt_ids"][0]
    number, _, prompt, extra, _ = history[prompt_id]["prompt"]
    # The recorded ComfyUI had run the same EmptyImage before (execution_cached: ["1"]).
    warm = {"prompt": empty_image_prompt("warm"), "client_id": "warm"}
    async with http.post(f"{emu.url}/prompt", json=warm) as response:
        await wait_done(http, emu, (await response.json())["prompt_id"])

    async with http.ws_connect(f"{emu.ws_url}/ws?clientId={extra['client_id']}") as ws:
        request = {"prompt": prompt, "client_id": extra["client_id"], "prompt_id": prompt_id}
        async with http.post(f"{emu.url}/prompt", json=request) as response:
            assert response.status == 200
        messages = await collect(ws, prompt_id)
    assert [m["type"] for m in messages] == [m["type"] for m in recorded["messages"]]
    assert scrub(messages) == scrub(recorded["messages"])

    entry = await wait_done(http, emu, prompt_id)
    expected = copy.deepcopy(history[prompt_id])
    expected["prompt"][0] = entry["prompt"][0]  # the queue number depends on earlier prompts
    assert scrub(entry) == scrub(expected)
    assert entry["prompt"][3]["create_time"] > 0
    assert number > 0


async def test_ws_execution_error_sequence_matches_recording(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    recorded = load("ws_execution_error.json")
    history = load("history_execution_error.json")
    prompt_id = recorded["prompt_ids"][0]
    _, _, prompt, extra, _ = history[prompt_id]["prompt"]
    settings = EmulatorSettings(data_dir=tmp_path, step_seconds=0.4)
    async with serve_emulator(settings) as emu:
        # As when recorded, another client's prompt is running when this client connects.
        blocker = {"prompt": empty_image_prompt("slow"), "client_id": "q"}
        async with http.post(f"{emu.url}/prompt", json=blocker) as response:
            assert response.status == 200
        for _ in range(1000):
            if emu.state.queue.running:
                break
            await asyncio.sleep(0.005)
        await emu.state.hub.drain(2.0)
        async with http.post(f"{emu.url}/_emulator/faults", json={"fail_next_prompts": 1}) as r:
            assert (await r.json())["controls"]["fail_next_prompts"] == 1

        async with http.ws_connect(f"{emu.ws_url}/ws?clientId={extra['client_id']}") as ws:
            request = {"prompt": prompt, "client_id": extra["client_id"], "prompt_id": prompt_id}
            async with http.post(f"{emu.url}/prompt", json=request) as response:
                assert response.status == 200
            messages = await collect(ws, prompt_id)
        entry = await wait_done(http, emu, prompt_id)

    assert [m["type"] for m in messages] == [m["type"] for m in recorded["messages"]]
    for got, want in ((messages[-3]["data"], recorded["messages"][-3]["data"]),):
        got["current_outputs"].sort()
        want["current_outputs"].sort()
        assert len(got["traceback"]) > 0
    assert scrub(messages) == scrub(recorded["messages"])

    expected = copy.deepcopy(history[prompt_id])
    expected["prompt"][0] = entry["prompt"][0]
    for item in (entry, expected):
        item["status"]["messages"][-1][1]["current_outputs"].sort()
    assert scrub(entry) == scrub(expected)


# -- history, jobs, queue ---------------------------------------------------------------------


async def test_history_is_empty_while_queued_and_jobs_says_pending(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    settings = EmulatorSettings(data_dir=tmp_path, step_seconds=0.05)
    async with serve_emulator(settings) as emu:
        ids = []
        for prompt in (flux_prompt(steps=100), empty_image_prompt("quick")):
            request = {"prompt": prompt, "client_id": "q"}
            async with http.post(f"{emu.url}/prompt", json=request) as response:
                ids.append((await response.json())["prompt_id"])
        running_id, pending_id = ids
        for prompt_id in ids:
            async with http.get(f"{emu.url}/history/{prompt_id}") as response:
                assert await response.json() == load("history_while_queued.json")

        async with http.get(f"{emu.url}/api/jobs/{pending_id}") as response:
            status, expected = load("jobs_while_queued.json")
            assert response.status == status
            job = await response.json()
        assert list(job) == list(expected)
        assert job["status"] == "pending"
        assert job["id"] == pending_id
        async with http.get(f"{emu.url}/api/jobs/{running_id}") as response:
            assert (await response.json())["status"] == "in_progress"

        async with http.get(f"{emu.url}/queue") as response:
            queue = await response.json()
        recorded = load("queue_busy.json")
        assert list(queue) == list(recorded)
        for key in recorded:
            assert len(queue[key]) == len(recorded[key]) == 1
            assert len(queue[key][0]) == len(recorded[key][0]) == 5
            assert list(queue[key][0][3]) == list(recorded[key][0][3])
        assert queue["queue_running"][0][1] == running_id
        assert queue["queue_pending"][0][1] == pending_id
        async with http.get(f"{emu.url}/api/prompt") as response:
            assert await response.json() == load("prompt_get_busy.json")

        async with http.post(f"{emu.url}/queue", json={"delete": [pending_id]}) as response:
            assert [response.status, await response.text()] == load("queue_delete.json")
        async with http.post(f"{emu.url}/interrupt", json={"prompt_id": running_id}) as r:
            assert [r.status, await r.text()] == load("interrupt.json")
        async with http.get(f"{emu.url}/queue") as response:
            assert (await response.json())["queue_pending"] == []
        entry = await wait_done(http, emu, running_id)
        assert entry["status"]["status_str"] == "error"
        assert [m[0] for m in entry["status"]["messages"]][-1] == "execution_interrupted"


async def test_history_list_and_jobs_shapes(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    ids: list[str] = []
    for prefix in ("a", "b"):
        request = {"prompt": empty_image_prompt(prefix, color=len(ids)), "client_id": "c"}
        async with http.post(f"{emu.url}/prompt", json=request) as response:
            ids.append((await response.json())["prompt_id"])
    for prompt_id in ids:
        await wait_done(http, emu, prompt_id)
    async with http.get(f"{emu.url}/history") as response:
        history = await response.json()
    expected_keys = next(iter(load("history_list_shape.json").values()))
    assert {k: sorted(v) for k, v in history.items()} == {i: expected_keys for i in ids}
    async with http.get(f"{emu.url}/history", params={"max_items": "1"}) as response:
        assert list(await response.json()) == ids[-1:]

    status, recorded_job = load("jobs_success.json")
    async with http.get(f"{emu.url}/api/jobs/{ids[0]}") as response:
        assert response.status == status
        job = await response.json()
    assert list(job) == list(recorded_job)
    assert list(job["workflow"]) == list(recorded_job["workflow"])
    assert list(job["preview_output"]) == list(recorded_job["preview_output"])
    assert job["status"] == "completed"
    assert job["outputs_count"] == 1
    async with http.get(f"{emu.url}/api/jobs/nope") as response:
        assert response.status == 404
        assert await response.json() == {"error": "Job not found"}
    async with http.get(f"{emu.url}/api/jobs", params={"status": "completed"}) as response:
        listing = await response.json()
    assert [j["id"] for j in listing["jobs"]] == list(reversed(ids))
    assert listing["pagination"]["total"] == 2


# -- other recorded endpoints -----------------------------------------------------------------


async def test_system_stats_features_and_view_missing(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    recorded = load("system_stats.json")
    for prefix in ("", "/api"):
        async with http.get(f"{emu.url}{prefix}/system_stats") as response:
            stats = await response.json()
        assert list(stats) == list(recorded)
        assert list(stats["system"]) == list(recorded["system"])
        assert list(stats["devices"][0]) == list(recorded["devices"][0])
        assert stats["system"]["comfyui_version"] == "0.8.0"
        assert "serverless_comfyui.emulator" in stats["system"]["argv"]
        async with http.get(f"{emu.url}{prefix}/features") as response:
            assert [response.status, await response.json()] == load("features.json")
        params = {"filename": "missing.png", "type": "output"}
        async with http.get(f"{emu.url}{prefix}/view", params=params) as response:
            missing = load("view_missing.json")
            assert response.status == missing["status"]
            assert await response.text() == missing["body"]


async def test_object_info_matches_recording_with_live_model_lists(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    recorded = load("object_info.flux-classes.json")
    async with http.get(f"{emu.url}/object_info") as response:
        info = await response.json()
    assert list(info) == list(recorded)
    unet = info["UNETLoader"]["input"]["required"]["unet_name"][0]
    assert unet == ["flux1-dev.safetensors", "flux1-schnell.safetensors"]
    clips = info["DualCLIPLoader"]["input"]["required"]["clip_name1"][0]
    assert clips == ["clip_l.safetensors", "t5xxl_fp16.safetensors", "t5xxl_fp8_e4m3fn.safetensors"]
    assert info["VAELoader"]["input"]["required"]["vae_name"][0] == [
        "ae.safetensors",
        "pixel_space",
    ]
    assert info["LoadImage"]["input"]["required"]["image"] == [[], {"image_upload": True}]
    for name, entry in info.items():
        for section in ("required", "optional"):
            for input_name, spec in entry["input"].get(section, {}).items():
                if not isinstance(spec[0], list):
                    assert spec == recorded[name]["input"][section][input_name]
        assert {k: v for k, v in entry.items() if k != "input"} == {
            k: v for k, v in recorded[name].items() if k != "input"
        }
    async with http.get(f"{emu.url}/api/object_info/KSampler") as response:
        assert await response.json() == {"KSampler": info["KSampler"]}
    async with http.get(f"{emu.url}/object_info/Nope") as response:
        assert await response.json() == {}


async def test_upload_image_response_shape(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    status, expected = load("upload_image.json")
    form = aiohttp.FormData()
    form.add_field("image", b"\x89PNG fake", filename=expected["name"], content_type="image/png")
    async with http.post(f"{emu.url}/upload/image", data=form) as response:
        assert response.status == status
        assert await response.json() == expected
