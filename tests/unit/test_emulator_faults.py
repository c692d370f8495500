"""Fault injection, configuration and process behaviour of the ComfyUI emulator."""

from __future__ import annotations

import asyncio
import contextlib
import copy
import json
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serverless_comfyui.emulator import EmulatorSettings, run_emulator
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator

FIXTURES = Path(__file__).parents[1] / "fixtures" / "comfyui-0.8.0"
BARE_500 = "500 Internal Server Error\n\nServer got itself in trouble"


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    async with serve_emulator(EmulatorSettings(data_dir=tmp_path, step_seconds=0.01)) as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def flux_prompt(steps: int) -> dict[str, Any]:
    history = json.loads((FIXTURES / "history_execution_error.json").read_text())
    prompt: dict[str, Any] = copy.deepcopy(next(iter(history.values()))["prompt"][2])
    prompt["17"]["inputs"]["steps"] = steps
    return prompt


IMAGE_PROMPT = {
    "1": {
        "class_type": "EmptyImage",
        "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 0},
    },
    "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "f"}},
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def run_to_end(http: aiohttp.ClientSession, url: str, prompt: dict[str, Any]) -> Any:
    async with http.post(f"{url}/prompt", json={"prompt": prompt}) as response:
        prompt_id = (await response.json())["prompt_id"]
    for _ in range(1000):
        async with http.get(f"{url}/history/{prompt_id}") as response:
            body = await response.json()
        if body:
            return body[prompt_id]
        await asyncio.sleep(0.01)
    raise AssertionError("prompt did not finish")


async def test_http_500_paths_at_runtime(emu: RunningEmulator, http: aiohttp.ClientSession) -> None:
    faults = {"http_500_paths": ["/prompt", "/history*"]}
    async with http.post(f"{emu.url}/_emulator/faults", json=faults) as response:
        assert (await response.json())["controls"]["http_500_paths"] == faults["http_500_paths"]
    for method, path in (("POST", "/prompt"), ("GET", "/api/prompt"), ("GET", "/history/x")):
        async with http.request(method, emu.url + path, json={}) as response:
            assert response.status == 500
            assert await response.text() == BARE_500
    async with http.get(f"{emu.url}/queue") as response:
        assert response.status == 200
    async with http.get(f"{emu.url}/_emulator/state") as response:
        assert response.status == 200
    async with http.post(f"{emu.url}/_emulator/faults", json={"http_500_paths": []}) as response:
        assert response.status == 200
    async with http.get(f"{emu.url}/prompt") as response:
        assert response.status == 200
    for bad in ({"step_seconds": -1}, {"no_such_fault": 1}, [1]):
        async with http.post(f"{emu.url}/_emulator/faults", json=bad) as response:
            assert response.status == 400


async def test_fail_next_prompts_and_runtime_step_seconds(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    async with http.post(f"{emu.url}/_emulator/faults", json={"fail_next_prompts": 2}) as r:
        assert r.status == 200
    first = await run_to_end(http, emu.url, flux_prompt(steps=2))
    error = first["status"]["messages"][-1]
    assert error[0] == "execution_error"
    assert (error[1]["node_id"], error[1]["node_type"]) == ("10", "VAELoader")
    assert error[1]["exception_type"] == "safetensors._safetensors_rust.SafetensorError"
    second = await run_to_end(http, emu.url, IMAGE_PROMPT)
    assert second["status"]["messages"][-1][1]["node_type"] == "EmptyImage"
    assert second["status"]["status_str"] == "error"
    assert second["outputs"] == {}

    async with http.post(f"{emu.url}/_emulator/faults", json={"step_seconds": 0.1}) as r:
        assert (await r.json())["controls"]["fail_next_prompts"] == 0
    start = time.monotonic()
    third = await run_to_end(http, emu.url, flux_prompt(steps=3))
    assert time.monotonic() - start >= 0.3
    assert third["status"]["status_str"] == "success"
    prompt_id = third["prompt"][1]
    async with http.get(f"{emu.url}/api/jobs/{first['prompt'][1]}") as response:
        job = await response.json()
    assert job["status"] == "failed"
    assert job["execution_error"]["node_type"] == "VAELoader"
    async with http.get(f"{emu.url}/_emulator/state") as response:
        state = await response.json()
    assert state["prompts_executed"] == 3
    assert state["steps_executed"] == 3
    assert prompt_id in {i for i in emu.state.queue.history}


async def test_startup_delay_binds_the_port_late(tmp_path: Path) -> None:
    port = free_port()
    settings = EmulatorSettings(data_dir=tmp_path, port=port, startup_delay_seconds=0.6)
    task = asyncio.create_task(run_emulator(settings))
    started = time.monotonic()
    up_at = None
    try:
        async with aiohttp.ClientSession() as http:
            while time.monotonic() - started < 5:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/system_stats") as response:
                        if response.status == 200:
                            up_at = time.monotonic() - started
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    assert up_at is not None and up_at >= 0.6


async def start_process(
    tmp_path: Path, port: int, *args: str, env: dict[str, str] | None = None
) -> asyncio.subprocess.Process:
    environment = {k: v for k, v in os.environ.items() if not k.startswith("EMULATOR_")}
    command = [sys.executable, "-m", "serverless_comfyui.emulator", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--data-dir", str(tmp_path), *args]
    process = await asyncio.create_subprocess_exec(
        *command,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env={**environment, **(env or {})},
    )
    async with aiohttp.ClientSession() as http:
        for _ in range(300):
            with contextlib.suppress(aiohttp.ClientConnectionError):
                async with http.get(f"http://127.0.0.1:{port}/system_stats") as response:
                    if response.status == 200:
                        return process
            await asyncio.sleep(0.05)
    process.kill()
    await process.wait()
    raise AssertionError("emulator process did not start")


async def test_crash_after_steps_kills_the_process(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    process = await start_process(
        tmp_path, port, "--step-seconds", "0.01", "--crash-after-steps", "3"
    )
    try:
        url = f"http://127.0.0.1:{port}"
        async with http.ws_connect(f"ws://127.0.0.1:{port}/ws?clientId=c") as ws:
            await ws.receive_json(timeout=5)
            request = {"prompt": flux_prompt(steps=10), "client_id": "c"}
            async with http.post(f"{url}/prompt", json=request) as response:
                assert response.status == 200
            progress = []
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    break
                data = json.loads(message.data)
                if data["type"] == "progress":
                    progress.append(data["data"]["value"])
        assert await asyncio.wait_for(process.wait(), 10) == 1
        assert progress == [1, 2, 3]
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_env_config_structured_logs_and_clean_sigterm(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    env = {"EMULATOR_STEP_SECONDS": "0.123", "EMULATOR_HTTP_500_PATHS": "/queue,/free"}
    process = await start_process(tmp_path, port, env=env)
    try:
        async with http.get(f"http://127.0.0.1:{port}/_emulator/state") as response:
            state = await response.json()
        assert state["controls"]["step_seconds"] == 0.123
        assert state["data_dir"] == str(tmp_path)
        async with http.get(f"http://127.0.0.1:{port}/api/queue") as response:
            assert response.status == 500
        process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(process.wait(), 10) == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.stderr is not None
    lines = (await process.stderr.read()).decode().splitlines()
    events = [json.loads(line)["event"] for line in lines if line.startswith("{")]
    assert {"comfyui emulator listening", "comfyui emulator stopped"} <= set(events)
