"""The generation API is part of the proxy: mounted beside ComfyUI's passthrough, on the same
registry, holds and auth."""

from __future__ import annotations

import base64
from pathlib import Path

import aiohttp
import pytest

from serverless_comfyui.emulator.settings import EmulatorSettings
from serverless_comfyui.emulator.testing import serve_emulator
from serverless_comfyui.proxy.settings import ProxySettings
from serverless_comfyui.proxy.testing import serve_proxy


@pytest.fixture(autouse=True)
def api_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SERVERLESS_COMFYUI_API_STATE_DIR", str(tmp_path / "api"))


async def test_generate_through_the_proxy_returns_an_image(tmp_path: Path) -> None:
    emulator_settings = EmulatorSettings(data_dir=tmp_path / "emu", step_seconds=0.01)
    async with (
        serve_emulator(emulator_settings) as emu,
        serve_proxy(ProxySettings(static_backends={"flux": [emu.url]})) as proxy,
        aiohttp.ClientSession() as http,
    ):
        body = {"model": "flux", "prompt": "a lighthouse at dusk", "steps": 2, "seed": 0}
        async with http.post(f"{proxy.url}/v1/generate", json=body) as response:
            result = await response.json()
            assert response.status == 200, result
        assert result["status"] == "completed" and result["seed"] == 0
        (image,) = result["results"]
        assert base64.b64decode(image["base64"]).startswith(b"\x89PNG\r\n\x1a\n")
        # ... and stays retrievable at a stable URL, from the proxy's results store.
        async with http.get(
            f"{proxy.url}{image['url']}" if image["url"].startswith("/") else image["url"]
        ) as response:
            assert response.status == 200
            assert (await response.read()).startswith(b"\x89PNG")
        # The passthrough still works beside it, and the spec is served.
        async with http.get(f"{proxy.url}/api/system_stats?model=flux") as response:
            assert response.status == 200
        async with http.get(f"{proxy.url}/v1/openapi.json") as response:
            spec = await response.json()
            assert "/v1/generate" in spec["paths"] or "/generate" in spec["paths"]


async def test_generation_api_rejects_bad_input_with_422_before_any_gpu(tmp_path: Path) -> None:
    async with (
        serve_proxy(ProxySettings(static_backends={"flux": []}, hold_timeout_seconds=1)) as proxy,
        aiohttp.ClientSession() as http,
    ):
        body = {"model": "flux", "prompt": "x", "width": 100000, "colour": "red"}
        async with http.post(f"{proxy.url}/v1/generate", json=body) as response:
            error = await response.json()
            assert response.status == 422, error
        text = str(error)
        assert "width" in text and "colour" in text
        assert proxy.registry.apps["flux"].held == 0
