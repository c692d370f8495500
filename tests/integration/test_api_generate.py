"""The generation API against ComfyUI emulators: sync and async generation, results, SSE,
cancellation, idempotency, batches, validation, docs. The API is mounted on a bare aiohttp
application exactly as the proxy mounts it, with a registry of emulator pods."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from PIL import Image

from api_harness import (
    MODEL,
    RunningApi,
    add_pod,
    emulator,
    emulator_state,
    fast_settings,
    file_store_url,
    final,
    flux_body,
    serve_api,
    wait_task,
)
from serverless_comfyui.emulator.testing import RunningEmulator
from serverless_comfyui.proxy.registry import App, Registry


class World:
    def __init__(self, api: RunningApi, emu: RunningEmulator, session: aiohttp.ClientSession):
        self.api, self.emu, self.session = api, emu, session
        self.wakes: list[str] = []

    async def post(self, path: str, body: Any, **kwargs: Any) -> tuple[int, Any, Any]:
        async with self.session.post(f"{self.api.url}{path}", json=body, **kwargs) as answer:
            return answer.status, await answer.json(), answer.headers


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    registry = Registry()
    wakes: list[str] = []

    async def wake(app: App) -> None:
        wakes.append(app.name)

    async with (
        emulator(tmp_path, "a") as emu,
        aiohttp.ClientSession() as session,
    ):
        add_pod(registry, "pod-a", emu.url)
        registry.ensure("other")  # a second application, scaled to zero
        settings = fast_settings(tmp_path, file_store_url(tmp_path))
        async with serve_api(settings, registry, wake) as api:
            w = World(api, emu, session)
            w.wakes = wakes
            yield w


def png(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


async def test_sync_generate_returns_images_seed_warnings_and_timings(world: World) -> None:
    status, task, headers = await world.post(
        "/v1/generate", flux_body(negative_prompt="blurry", cfg_scale=3.0, seed=None)
    )
    assert status == 200, task
    assert task["status"] == "completed" and task["phase"] == "done"
    assert headers["Location"] == f"{world.api.v1}/tasks/{task['id']}"
    [result] = task["results"]
    image = png(result["base64"])
    assert image.format == "PNG" and result["content_type"] == "image/png"
    assert isinstance(task["seed"], int) and task["params"]["seed"] == task["seed"]
    assert any("negative_prompt" in w and "ignored" in w for w in task["warnings"])
    assert task["ignored"] == ["negative_prompt"]
    assert task["params"]["guidance"] == 3.0
    timings = task["timings"]
    assert timings["finished_at"] and timings["started_at"] and timings["cold_start"] is False
    assert timings["run_seconds"] is not None and timings["total_seconds"] >= timings["run_seconds"]
    assert task["progress"] == {"value": 4, "max": 4, "percent": 100.0, "node": "40"}
    assert task["attempts"][0]["outcome"] == "completed"
    # The image stays at its URL, served by the API itself.
    async with world.session.get(result["url"]) as answer:
        assert answer.status == 200 and answer.content_type == "image/png"
        assert await answer.read() == base64.b64decode(result["base64"])
    # The pod rendered the minted prompt id with the per-prompt filename prefix.
    async with world.session.get(f"{world.emu.url}/history/{task['prompt_id']}") as answer:
        history = await answer.json()
    graph = history[task["prompt_id"]]["prompt"][2]
    assert graph["39"]["inputs"]["filename_prefix"] == f"api/{task['prompt_id']}"
    assert graph["45"]["inputs"]["noise_seed"] == task["seed"]
    assert world.wakes == []


async def test_async_generate_answers_at_once_and_converts_to_jpeg(world: World) -> None:
    body = flux_body(mode="async", output={"format": "jpeg", "quality": 80})
    started = time.monotonic()
    status, task, headers = await world.post("/v1/generate", body)
    assert status == 202, task
    assert time.monotonic() - started < 1.0
    assert task["status"] == "queued" and task["results"] == []
    assert headers["Location"].endswith(f"/v1/tasks/{task['id']}")
    done = await wait_task(world.session, world.api.v1, task["id"], final)
    assert done["status"] == "completed", done
    [result] = done["results"]
    assert result["filename"].endswith(".jpg") and result["content_type"] == "image/jpeg"
    assert "base64" not in result  # async default delivery: url
    async with world.session.get(result["url"]) as answer:
        data = await answer.read()
    assert Image.open(io.BytesIO(data)).format == "JPEG"
    async with world.session.get(f"{world.api.v1}/tasks/{task['id']}?include=base64") as answer:
        with_images = await answer.json()
    assert base64.b64decode(with_images["results"][0]["base64"]) == data


@pytest.mark.parametrize(
    ("body", "field", "rule"),
    [
        (flux_body(promt="typo"), "promt", "unknown"),
        (flux_body(width=4096), "width", "max"),
        (flux_body(width=250), "width", "multiple_of"),
        (flux_body(steps="many"), "steps", "type"),
        (flux_body(prompt=None), "prompt", "required"),
        (flux_body(workflow="nope"), "workflow", "unknown"),
        (flux_body(model="nope"), "model", "unknown"),
        (flux_body(model=None), "model", "required"),
        (flux_body(output={"format": "gif"}), "output.format", "enum"),
        (flux_body(output={"quality": 101}), "output.quality", "max"),
        (flux_body(mode="later"), "mode", "enum"),
        (flux_body(webhook={"url": "ftp://x"}), "webhook.url", "format"),
        (flux_body(loras=[{"name": "a.safetensors", "strength": 99}]), "loras[0].strength", "max"),
        (flux_body(filename_prefix="x"), "filename_prefix", "reserved"),
    ],
)
async def test_bad_input_is_422_naming_field_and_rule_and_reaches_no_gpu(
    world: World, body: dict[str, Any], field: str, rule: str
) -> None:
    status, answer, _ = await world.post("/v1/generate", body)
    assert status == 422, answer
    assert answer["error"]["type"] == "invalid_request"
    assert {"field": field, "rule": rule} in [
        {"field": e["field"], "rule": e["rule"]} for e in answer["error"]["errors"]
    ]
    state = await emulator_state(world.session, world.emu.url)
    assert state["prompts_executed"] == 0 and state["queue_pending"] == []
    assert world.wakes == []
    assert await world.api.service.store.queue_length() == 0


async def test_bad_json_and_oversized_batch_are_422(world: World) -> None:
    async with world.session.post(
        f"{world.api.v1}/generate", data=b"{not json", headers={"Content-Type": "application/json"}
    ) as answer:
        assert answer.status == 422
        assert (await answer.json())["error"]["errors"][0]["rule"] == "json"
    too_many = {"requests": [flux_body() for _ in range(17)]}
    status, answer, _ = await world.post("/v1/batch", too_many)
    assert status == 422 and answer["error"]["errors"][0] == {
        "field": "requests",
        "rule": "max_items",
        "message": "at most 16 requests per batch",
    }
    bad_item = {"requests": [flux_body(), flux_body(height=1)]}
    status, answer, _ = await world.post("/v1/batch", bad_item)
    assert status == 422
    assert answer["error"]["errors"][0]["field"] == "requests[1].height"
    assert await world.api.service.store.queue_length() == 0
    state = await emulator_state(world.session, world.emu.url)
    assert state["prompts_executed"] == 0


async def test_idempotency_key_returns_the_same_task_and_renders_once(world: World) -> None:
    headers = {"Idempotency-Key": "order-42"}
    first = await world.post("/v1/generate", flux_body(mode="async"), headers=headers)
    second = await world.post("/v1/generate", flux_body(mode="async"), headers=headers)
    assert first[0] == second[0] == 202
    assert first[1]["id"] == second[1]["id"]
    assert second[2].get("Idempotent-Replayed") == "true"
    done = await wait_task(world.session, world.api.v1, first[1]["id"], final)
    # A sync retry with the same key answers the finished task.
    third = await world.post("/v1/generate", flux_body(mode="async"), headers=headers)
    assert third[1]["id"] == done["id"] and third[1]["status"] == "completed"
    # The same key from another API key is another task.
    other = await world.post(
        "/v1/generate", flux_body(mode="async"), headers={**headers, "X-API-Key": "k2"}
    )
    assert other[1]["id"] != done["id"]
    await wait_task(world.session, world.api.v1, other[1]["id"], final)
    # The same key with another request is a conflict.
    conflict = await world.post("/v1/generate", flux_body(mode="async", steps=5), headers=headers)
    assert conflict[0] == 409 and conflict[1]["error"]["type"] == "idempotency_conflict"
    state = await emulator_state(world.session, world.emu.url)
    assert state["prompts_executed"] == 2


async def test_batch_queues_one_task_per_request(world: World) -> None:
    body = {"requests": [flux_body(seed=i) for i in range(3)]}
    status, answer, _ = await world.post("/v1/batch", body, headers={"Idempotency-Key": "b1"})
    assert status == 202 and answer["count"] == 3
    ids = [t["id"] for t in answer["tasks"]]
    assert len(set(ids)) == 3
    done = [await wait_task(world.session, world.api.v1, i, final) for i in ids]
    assert [t["status"] for t in done] == ["completed"] * 3
    assert [t["seed"] for t in done] == [0, 1, 2]
    again = await world.post("/v1/batch", body, headers={"Idempotency-Key": "b1"})
    assert [t["id"] for t in again[1]["tasks"]] == ids


async def read_sse(response: aiohttp.ClientResponse) -> list[tuple[str, str, dict[str, Any]]]:
    events: list[tuple[str, str, dict[str, Any]]] = []
    event_id, kind, data = "", "", ""
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and kind:
            events.append((event_id, kind, json.loads(data)))
            event_id, kind, data = "", "", ""
    return events


async def test_sse_events_arrive_in_order_until_completed(world: World) -> None:
    world.emu.state.controls.step_seconds = 0.05
    status, task, _ = await world.post("/v1/generate", flux_body(mode="async", steps=8))
    assert status == 202
    async with world.session.get(f"{world.api.v1}/tasks/{task['id']}/events") as answer:
        assert answer.status == 200 and answer.content_type == "text/event-stream"
        events = await read_sse(answer)
    kinds = [k for _, k, _ in events]
    assert kinds[0] == "status" and events[0][2]["status"] == "queued"
    assert kinds[-1] == "completed" and events[-1][2]["results"]
    phases = [d["phase"] for _, k, d in events if k == "status"]
    assert phases == ["queued", "waiting_for_pod", "submitted", "running"]
    progress = [d["value"] for _, k, d in events if k == "progress"]
    # Every step, in order (the last may be overtaken by the end: /history is the authority).
    assert progress == list(range(1, len(progress) + 1)) and len(progress) >= 6
    assert events[-1][2]["progress"]["percent"] == 100.0
    assert kinds.index("progress") > kinds.index("status", 3)  # after running
    ids = [int(i) for i, _, _ in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    # Replaying from an event id gives the rest, ending with the same final event.
    async with world.session.get(
        f"{world.api.v1}/tasks/{task['id']}/events", headers={"Last-Event-ID": events[-3][0]}
    ) as answer:
        rest = await read_sse(answer)
    assert [e[0] for e in rest] == [e[0] for e in events[-2:]]


async def test_cancel_running_and_queued_tasks(world: World) -> None:
    world.emu.state.controls.step_seconds = 0.05
    world.api.service.settings.max_prompts_per_pod = 1
    _, running, _ = await world.post("/v1/generate", flux_body(mode="async", steps=100))
    _, waiting, _ = await world.post("/v1/generate", flux_body(mode="async", steps=100))
    await wait_task(world.session, world.api.v1, running["id"], lambda t: t["status"] == "running")
    second = await wait_task(
        world.session, world.api.v1, waiting["id"], lambda t: t["phase"] == "waiting_for_pod"
    )
    assert second["prompt_id"] is None
    async with world.session.delete(f"{world.api.v1}/tasks/{waiting['id']}") as answer:
        assert answer.status == 200
        assert (await answer.json())["status"] == "cancelled"
    async with world.session.delete(f"{world.api.v1}/tasks/{running['id']}") as answer:
        assert answer.status == 200
    # The pod stops rendering (interrupted) and never sees the second prompt.
    for _ in range(100):
        state = await emulator_state(world.session, world.emu.url)
        if not state["queue_running"]:
            break
        await asyncio.sleep(0.05)
    assert state["queue_running"] == [] and state["queue_pending"] == []
    assert state["steps_executed"] < 100
    assert state["prompts_executed"] == 1
    async with world.session.delete(f"{world.api.v1}/tasks/{running['id']}") as answer:
        assert answer.status == 409
    done = await wait_task(world.session, world.api.v1, running["id"], final)
    assert done["status"] == "cancelled"
    async with world.session.get(f"{world.api.v1}/tasks/{running['id']}/events") as answer:
        events = await read_sse(answer)
    assert events[-1][1] == "cancelled"


async def test_unknown_task_and_result_are_404(world: World) -> None:
    async with world.session.get(f"{world.api.v1}/tasks/00000000-0000-4000-8000-000000000000") as r:
        assert r.status == 404 and (await r.json())["error"]["type"] == "unknown_task"
    async with world.session.get(f"{world.api.v1}/results/x/..%2Fetc%2Fpasswd") as r:
        assert r.status == 404
    async with world.session.get(f"{world.api.v1}/nothing-here") as r:
        assert r.status == 404 and (await r.json())["error"]["type"] == "not_found"


async def test_openapi_and_docs(world: World) -> None:
    async with world.session.get(f"{world.api.v1}/openapi.json") as answer:
        spec = await answer.json()
    assert spec["openapi"] == "3.1.0"
    for path in ("/generate", "/batch", "/tasks/{task_id}", "/tasks/{task_id}/events"):
        assert path in spec["paths"]
    props = spec["components"]["schemas"]["GenerateRequest"]["properties"]
    assert {"model", "prompt", "width", "cfg_scale", "loras", "mode", "output"} <= set(props)
    assert "Params_flux_schnell" in spec["components"]["schemas"]
    async with world.session.get(f"{world.api.v1}/docs") as answer:
        page = await answer.text()
    assert (
        answer.content_type == "text/html" and "/v1/generate" in page and "flux_dev_t5fp8" in page
    )
    async with world.session.get(f"{world.api.v1}/workflows") as answer:
        listed = await answer.json()
    assert "flux_dev_t5fp8" in [w["name"] for w in listed["workflows"]]


async def test_failed_render_is_reported_with_the_nodes_error(world: World) -> None:
    world.emu.state.controls.fail_next_prompts = 1
    status, task, _ = await world.post("/v1/generate", flux_body())
    assert status == 502, task
    assert task["status"] == "failed" and task["error"]["type"] == "execution_error"
    assert "failed" in task["error"]["message"]
    # A LoRA the pod does not have: ComfyUI refuses the prompt (422, its node_errors kept).
    status, task, _ = await world.post(
        "/v1/generate", flux_body(loras=[{"name": "missing.safetensors", "strength": 0.5}])
    )
    assert status == 422, task
    assert task["error"]["type"] == "comfyui_rejected"
    assert task["error"]["details"]["node_errors"]


async def test_other_model_is_held_and_woken(world: World) -> None:
    """A model with no pod: the task waits (held), the application is woken."""
    status, task, _ = await world.post("/v1/generate", flux_body(model="other", mode="async"))
    assert status == 202
    held = await wait_task(
        world.session, world.api.v1, task["id"], lambda t: t["phase"] == "waiting_for_pod"
    )
    assert held["status"] == "queued"
    for _ in range(50):
        if "other" in world.wakes:
            break
        await asyncio.sleep(0.02)
    assert "other" in world.wakes
    app = world.api.service.registry.get("other")
    assert app is not None and app.held == 1
    add_pod(world.api.service.registry, "other-0", world.emu.url, model="other")
    done = await wait_task(world.session, world.api.v1, task["id"], final)
    assert done["status"] == "completed" and done["timings"]["cold_start"] is True
    assert app.held == 0
    assert MODEL != "other"


async def test_results_expire_after_the_retention(world: World) -> None:
    status, task, _ = await world.post("/v1/generate", flux_body())
    assert status == 200
    url = task["results"][0]["url"]
    service = world.api.service
    assert await service.sweep() == 0  # young: kept
    service.settings.retention_seconds = 0.2
    await asyncio.sleep(0.3)
    assert await service.sweep() == 1
    async with world.session.get(url) as answer:
        assert answer.status == 404
    async with world.session.get(f"{world.api.v1}/tasks/{task['id']}") as answer:
        assert answer.status == 404  # the file store forgets the task too


async def test_oversized_body_is_413(world: World) -> None:
    world.api.service.settings.max_body_bytes = 2048
    status, answer, _ = await world.post("/v1/generate", flux_body(prompt="x" * 4000))
    assert status == 413 and answer["error"]["type"] == "body_too_large"
