"""API keys (from a file that may change) and rate limits, end to end through the proxy."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from serverless_comfyui.emulator import EmulatorSettings
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator
from serverless_comfyui.proxy.settings import ProxySettings
from serverless_comfyui.proxy.testing import serve_proxy


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    async with serve_emulator(EmulatorSettings(data_dir=tmp_path / "pod", step_seconds=0.01)) as e:
        yield e


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def test_api_keys_are_required_where_configured(
    emu: RunningEmulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("first-key\n")
    settings = ProxySettings(static_backends={"flux": [emu.url]}, api_keys_file=keys)
    async with serve_proxy(settings) as proxy:
        stats = f"{proxy.url}/openai/api/system_stats?model=flux"
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
            async with http.get(stats, headers=headers) as r:
                assert r.status == 401 and "WWW-Authenticate" in r.headers
                assert (await r.json())["error"]["type"] == "unauthorized"
        for headers in ({"Authorization": "Bearer first-key"}, {"X-API-Key": "first-key"}):
            async with http.get(stats, headers=headers) as r:
                assert r.status == 200
        async with http.get(f"{stats}&token=first-key") as r:
            assert r.status == 200
        for path in ("/healthz", "/readyz", "/metrics"):  # never authenticated
            async with http.get(proxy.url + path) as r:
                assert r.status == 200

        with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
            await http.ws_connect(f"{proxy.ws_url}/ws?model=flux")
        assert raised.value.status == 401  # refused before upgrading
        async with http.ws_connect(f"{proxy.ws_url}/ws?model=flux&token=first-key") as ws:
            assert (await ws.receive_json(timeout=5))["type"] == "status"

        # The Secret is updated in place (a new file swapped in): the new key works at once.
        new = tmp_path / "api-keys.new"
        new.write_text("second-key\n")
        os.replace(new, keys)
        await asyncio.sleep(1.1)  # keys are re-checked at most once a second
        async with http.get(stats, headers={"X-API-Key": "first-key"}) as r:
            assert r.status == 401
        async with http.get(stats, headers={"X-API-Key": "second-key"}) as r:
            assert r.status == 200


async def test_ui_token_becomes_a_cookie(emu: RunningEmulator, tmp_path: Path) -> None:
    keys = tmp_path / "api-keys"
    keys.write_text("ui-key\n")
    settings = ProxySettings(static_backends={"flux": [emu.url]}, api_keys_file=keys)
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # IP hosts
    async with serve_proxy(settings) as proxy, browser:
        async with browser.get(f"{proxy.url}/ui/flux/") as r:
            assert r.status == 401
        async with browser.get(f"{proxy.url}/ui/flux/?token=ui-key", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/ui/flux/"  # key out of the URL
            cookie = r.cookies["scui_token"]
            assert cookie.value == "ui-key" and cookie["httponly"] and cookie["path"] == "/ui/"
        async with browser.get(f"{proxy.url}/ui/flux/") as r:
            assert r.status == 200
        async with browser.get(f"{proxy.url}/ui/flux/api/queue") as r:
            assert r.status == 200
        # The cookie is for the UI only: the API still wants a key.
        async with browser.get(f"{proxy.url}/api/system_stats?model=flux") as r:
            assert r.status == 401


async def test_rate_limit_answers_429_with_retry_after(
    emu: RunningEmulator, http: aiohttp.ClientSession
) -> None:
    settings = ProxySettings(static_backends={"flux": [emu.url]}, rate_limit_per_minute=3)
    async with serve_proxy(settings) as proxy:
        statuses = []
        for _ in range(4):
            async with http.get(f"{proxy.url}/queue?model=flux") as r:
                statuses.append(r.status)
                if r.status == 429:
                    retry_after = int(r.headers["Retry-After"])
                    error = (await r.json())["error"]
        assert statuses == [200, 200, 200, 429]
        assert 1 <= retry_after <= 20 and error["type"] == "rate_limited"
        assert "3 requests per minute" in error["message"]
        async with http.get(f"{proxy.url}/healthz") as r:
            assert r.status == 200  # never limited


async def test_unreadable_key_file_fails_closed(
    emu: RunningEmulator, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = ProxySettings(
        static_backends={"flux": [emu.url]}, api_keys_file=tmp_path / "missing"
    )
    async with serve_proxy(settings) as proxy:
        async with http.get(f"{proxy.url}/queue?model=flux", headers={"X-API-Key": "x"}) as r:
            assert r.status == 503 and (await r.json())["error"]["type"] == "auth_unavailable"
        async with http.get(f"{proxy.url}/healthz") as r:
            assert r.status == 200
