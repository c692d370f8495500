"""The proxy as its own process (`python -m serverless_comfyui.proxy`) in static mode, in front of
two emulator processes: the seed's flow, balancing, and a graceful SIGTERM. No control plane."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import signal
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serverless_comfyui.proxy import ids
from serverless_comfyui.testworld.processes import ManagedProcess, free_port, wait_until

APP = "serverless-comfyui"


@dataclass
class Stack:
    proxy: ManagedProcess
    url: str
    emulators: list[str]


def healthy(url: str, proc: ManagedProcess) -> bool:
    proc.ensure_alive()
    with urllib.request.urlopen(url, timeout=1) as response:
        return bool(response.status == 200)


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    started: list[ManagedProcess] = []
    try:
        emulators = []
        for index in range(2):
            port = free_port()
            emu = ManagedProcess(
                f"emulator-{index}",
                [
                    sys.executable,
                    "-m",
                    "serverless_comfyui.emulator",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--data-dir",
                    str(tmp_path / f"pod{index}"),
                    "--step-seconds",
                    "0.3",
                ],
                tmp_path / f"emulator-{index}.log",
            )
            emu.start()
            started.append(emu)
            emulators.append(f"http://127.0.0.1:{port}")
        port = free_port()
        env = {
            **os.environ,
            "SERVERLESS_COMFYUI_PROXY_HOST": "127.0.0.1",
            "SERVERLESS_COMFYUI_PROXY_PORT": str(port),
            "SERVERLESS_COMFYUI_PROXY_STATIC_BACKENDS": json.dumps({APP: emulators, "asleep": []}),
            "SERVERLESS_COMFYUI_PROXY_HOLD_TIMEOUT_SECONDS": "30",
        }
        proxy = ManagedProcess(
            "proxy", [sys.executable, "-m", "serverless_comfyui.proxy"], tmp_path / "proxy.log", env
        )
        proxy.start()
        started.append(proxy)
        for url, proc in zip(emulators, started, strict=False):
            wait_until(functools.partial(healthy, f"{url}/system_stats", proc), 20, url)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: healthy(f"{url}/readyz", proxy), 20, "the proxy's readiness")
        yield Stack(proxy=proxy, url=url, emulators=emulators)
    finally:
        for proc in started:
            proc.stop(grace=5)


def prompt(color: int) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 32, "height": 32, "batch_size": 1, "color": color},
        },
        "2": {
            "class_type": "SaveImage",
            "inputs": {"images": ["1", 0], "filename_prefix": "ComfyUI"},
        },
    }


async def test_seed_flow_balancing_and_sigterm(stack: Stack) -> None:
    model = json.dumps({"model": APP})
    base = f"{stack.url}/openai/api"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/system_stats", data=model) as r:
            assert r.status == 200
        prompt_ids = []
        for color in (10, 20, 30, 40):
            body = {"model": APP, "client_id": "it", "prompt": prompt(color)}
            async with http.post(f"{base}/prompt", json=body) as r:
                assert r.status == 200
                prompt_ids.append((await r.json())["prompt_id"])
        pods = [ids.decode(p) for p in prompt_ids]
        assert len({p.pod_hash for p in pods if p is not None}) == 2  # both pods got work
        for prompt_id in prompt_ids:
            for _ in range(200):
                async with http.get(f"{base}/history/{prompt_id}", data=model) as r:
                    entry = (await r.json()).get(prompt_id)
                if entry:
                    break
                await asyncio.sleep(0.05)
            assert entry and entry["status"]["status_str"] == "success"
            image = entry["outputs"]["2"]["images"][0]
            params = {
                "filename": image["filename"],
                "subfolder": image["subfolder"],
                "type": "output",
            }
            async with http.get(f"{base}/view", params=params, data=model) as r:
                assert r.status == 200 and (await r.read()).startswith(b"\x89PNG")
        async with http.get(f"{stack.url}/metrics") as r:
            text = await r.text()
        assert f'scui_proxy_requests_total{{model="{APP}",route="prompt",status="200"}} 4.0' in text

        # SIGTERM while a request is held (an app that never wakes): the proxy stops accepting,
        # answers the held request 503 at once (retry elsewhere) and exits cleanly.
        held = asyncio.create_task(http.get(f"{stack.url}/system_stats?model=asleep"))
        await asyncio.sleep(0.3)
        assert stack.proxy.popen is not None
        os.kill(stack.proxy.popen.pid, signal.SIGTERM)
        await asyncio.sleep(0.3)
        with pytest.raises(aiohttp.ClientConnectionError):
            async with aiohttp.ClientSession() as fresh, fresh.get(f"{stack.url}/healthz"):
                pass
        async with await held as r:
            assert r.status == 503 and (await r.json())["error"]["type"] == "shutting_down"
            assert r.headers["Retry-After"] == "1"
    assert await asyncio.to_thread(stack.proxy.popen.wait, 10) == 0, stack.proxy.tail()
