"""WebSockets, the web UI and the queue monitors, against emulated ComfyUI pods."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from serverless_comfyui.emulator import EmulatorSettings
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator
from serverless_comfyui.proxy import ids
from serverless_comfyui.proxy.monitor import PodMonitors
from serverless_comfyui.proxy.registry import PodState, Registry
from serverless_comfyui.proxy.settings import ProxySettings
from serverless_comfyui.proxy.testing import serve_proxy


def empty_image_prompt(color: int = 255) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": color},
        },
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "ws"}},
    }


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


async def until(check: Any, what: str, seconds: float = 3.0) -> None:
    for _ in range(int(seconds / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"timed out waiting for {what}")


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, Any]:
    while True:
        message = await asyncio.wait_for(ws.receive(), 5)
        if message.type == aiohttp.WSMsgType.TEXT:
            data: dict[str, Any] = json.loads(message.data)
            return data
        if message.type != aiohttp.WSMsgType.BINARY:
            raise AssertionError(f"socket ended: {message}")


async def test_ws_fans_in_events_of_prompts_on_every_pod(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    settings = ProxySettings(static_backends={"flux": [e.url for e in emus]})
    async with serve_proxy(settings) as proxy:
        app = proxy.registry.apps["flux"]
        async with http.ws_connect(f"{proxy.ws_url}/openai/api/ws?clientId=me&model=flux") as ws:
            first = await receive_json(ws)
            assert first["type"] == "status" and first["data"]["sid"] == "me"
            await until(lambda: all("me" in e.state.hub.sockets for e in emus), "both pods")
            assert app.open_sessions == 1  # an open socket keeps the app awake
            await ws.send_str(json.dumps({"type": "feature_flags", "data": {}}))
            prompt_ids = []
            for color in (10, 20):
                body = {"model": "flux", "client_id": "me", "prompt": empty_image_prompt(color)}
                async with http.post(f"{proxy.url}/prompt", json=body) as r:
                    prompt_ids.append((await r.json())["prompt_id"])
            routes = {ids.decode(p) for p in prompt_ids}
            assert len(routes) == 2  # one prompt on each pod
            done: set[str] = set()
            executed: set[str] = set()
            flags = 0
            while done != set(prompt_ids):
                message = await receive_json(ws)
                data = message.get("data", {})
                if message["type"] == "feature_flags":
                    flags += 1
                if message["type"] == "executed":
                    executed.add(data["prompt_id"])
                if message["type"] == "executing" and data.get("node") is None:
                    done.add(data["prompt_id"])
                if message["type"] == "status":
                    remaining = data["status"]["exec_info"]["queue_remaining"]
                    assert 0 <= remaining <= 2  # the sum over the pods
            assert executed == set(prompt_ids)
            assert flags == 1  # both pods answered; the client hears one ComfyUI
        await until(lambda: app.open_sessions == 0, "the session to end")


async def test_ws_joins_pods_that_become_ready_later(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    settings = ProxySettings(static_backends={"flux": [emus[0].url]})
    async with serve_proxy(settings) as proxy:
        app = proxy.registry.apps["flux"]
        async with http.ws_connect(
            f"{proxy.ws_url}/ws?clientId=late", headers={"X-Model": "flux"}
        ) as ws:
            await receive_json(ws)
            app.set_pod(PodState("flux-1", emus[1].url, ready=True))
            await until(lambda: "late" in emus[1].state.hub.sockets, "the new pod's socket")
            app.remove_pod("flux-0")
            await until(lambda: "late" not in emus[0].state.hub.sockets, "the old one to close")
            body = {"model": "flux", "client_id": "late", "prompt": empty_image_prompt()}
            async with http.post(f"{proxy.url}/prompt", json=body) as r:
                prompt_id = (await r.json())["prompt_id"]
            while True:
                message = await receive_json(ws)
                data = message.get("data", {})
                if message["type"] == "executing" and data.get("node") is None:
                    assert data["prompt_id"] == prompt_id
                    break


async def test_ws_refusals_happen_before_upgrading(
    emus: list[RunningEmulator], http: aiohttp.ClientSession
) -> None:
    settings = ProxySettings(
        static_backends={"flux": [emus[0].url], "empty": []}, hold_timeout_seconds=0.3
    )
    async with serve_proxy(settings) as proxy:
        for path, status, kind in (
            ("/ws?clientId=x", 400, "missing_model"),
            ("/ws?clientId=x&model=nope", 404, "unknown_model"),
            ("/api/ws?model=empty", 503, "hold_timeout"),
        ):
            async with http.get(
                proxy.url + path,
                headers={
                    "Upgrade": "websocket",
                    "Connection": "Upgrade",
                    "Sec-WebSocket-Version": "13",
                    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
                },
            ) as r:
                assert r.status == status
                assert (await r.json())["error"]["type"] == kind
        with pytest.raises(aiohttp.WSServerHandshakeError) as raised:
            await http.ws_connect(f"{proxy.ws_url}/ws")
        assert raised.value.status == 400
        async with http.get(f"{proxy.url}/healthz") as r:
            assert r.status == 200


async def test_ui_pins_a_pod_per_browser_and_keeps_the_app_awake(
    emus: list[RunningEmulator],
) -> None:
    settings = ProxySettings(static_backends={"flux": [e.url for e in emus]})
    browser = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))  # IP hosts
    async with serve_proxy(settings) as proxy, browser:
        app = proxy.registry.apps["flux"]
        async with browser.get(f"{proxy.url}/ui/flux", allow_redirects=False) as r:
            assert r.status == 302 and r.headers["Location"] == "/ui/flux/"
        async with browser.get(f"{proxy.url}/ui/flux/", headers={"Accept": "text/html"}) as r:
            assert r.status == 200 and "ComfyUI" in await r.text()
            pinned = r.cookies["scui_pod_flux"].value
            assert r.cookies["scui_pod_flux"]["path"] == "/ui/flux/"
        index = int(pinned.rsplit("-", 1)[1])
        port = str(emus[index].port)
        app.pods[pinned].queue_remaining = 10  # a new browser would get the other pod now
        async with aiohttp.ClientSession() as other, other.get(f"{proxy.url}/ui/flux/") as r:
            assert r.cookies["scui_pod_flux"].value != pinned
        for _ in range(3):  # this browser's page and API calls stay on its pod
            async with browser.get(f"{proxy.url}/ui/flux/api/system_stats") as r:
                argv = (await r.json())["system"]["argv"]
                assert argv[argv.index("--port") + 1] == port
        before = app.last_activity
        async with browser.ws_connect(f"{proxy.ws_url}/ui/flux/ws?clientId=page") as ws:
            message = await receive_json(ws)
            assert message["type"] == "status" and message["data"]["sid"] == "page"
            assert "page" in emus[index].state.hub.sockets
            assert "page" not in emus[1 - index].state.hub.sockets
            assert app.open_sessions == 1 and app.last_activity > before
            body = {"client_id": "page", "prompt": empty_image_prompt()}
            async with browser.post(f"{proxy.url}/ui/flux/api/prompt", json=body) as r:
                prompt_id = (await r.json())["prompt_id"]
            assert ids.decode(prompt_id) is None  # the UI talks to ComfyUI as its own frontend
            while True:
                message = await receive_json(ws)
                if message["type"] == "executing" and message["data"].get("node") is None:
                    break
        await until(lambda: app.open_sessions == 0, "the UI session to end")
        async with browser.get(f"{proxy.url}/ui/nope/") as r:
            assert r.status == 404


async def test_ui_of_a_sleeping_app_shows_a_starting_page(http: aiohttp.ClientSession) -> None:
    settings = ProxySettings(static_backends={"flux": []}, hold_timeout_seconds=0.3)
    async with (
        serve_proxy(settings) as proxy,
        http.get(f"{proxy.url}/ui/flux/", headers={"Accept": "text/html"}) as r,
    ):
        assert r.status == 503 and r.content_type == "text/html"
        assert "Starting flux" in await r.text()
        assert r.headers["Retry-After"] == "5"


async def test_monitors_follow_queues_and_pods(emus: list[RunningEmulator]) -> None:
    registry = Registry()
    app = registry.ensure("flux")
    app.set_pod(PodState("flux-0", emus[0].url, ready=True))
    app.set_pod(PodState("flux-1", emus[1].url, ready=False))
    emus[0].state.controls.step_seconds = 5.0
    async with aiohttp.ClientSession() as session:
        monitors = PodMonitors(registry, session, replica="r1")
        runner = asyncio.create_task(monitors.run(poll_seconds=0.05))
        try:
            await until(lambda: "scui-monitor-r1" in emus[0].state.hub.sockets, "the monitor")
            assert monitors.watched == {("flux", "flux-0", emus[0].url)}  # ready pods only
            app.pods["flux-0"].inflight = 2  # the proxy submitted two
            for _ in range(2):
                async with session.post(
                    f"{emus[0].url}/prompt", json={"prompt": empty_image_prompt()}
                ):
                    pass
            await until(lambda: app.pods["flux-0"].queue_remaining == 2, "the queue count")
            assert app.pods["flux-0"].inflight == 0  # the pod reports them itself now
            # Discovery replaces the pod's state object: what was learned is kept.
            app.set_pod(PodState("flux-0", emus[0].url, ready=True))
            assert app.pods["flux-0"].queue_remaining == 2
            app.set_pod(PodState("flux-1", emus[1].url, ready=True))
            await until(lambda: len(monitors.watched) == 2, "the second pod's monitor")
            app.remove_pod("flux-0")
            await until(lambda: len(monitors.watched) == 1, "the removed pod's monitor to stop")
            await until(
                lambda: "scui-monitor-r1" not in emus[0].state.hub.sockets, "its socket to close"
            )
        finally:
            runner.cancel()
            await monitors.close()


async def test_monitor_cross_checks_the_queue_without_a_socket() -> None:
    """A pod whose WebSocket fails still gets its count from GET /queue."""

    async def queue(request: web.Request) -> web.Response:
        return web.json_response(
            {"queue_running": [[0, "a"]], "queue_pending": [[1, "b"], [2, "c"]]}
        )

    server = web.Application()
    server.router.add_get("/queue", queue)
    runner = web.AppRunner(server, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    registry = Registry()
    app = registry.ensure("flux")
    app.set_pod(PodState("flux-0", url, ready=True, inflight=4))
    try:
        async with aiohttp.ClientSession() as session:
            monitors = PodMonitors(registry, session, cross_check_seconds=0.05)
            monitors.sync()
            await until(lambda: app.pods["flux-0"].queue_remaining == 3, "the cross-check")
            assert app.pods["flux-0"].inflight == 0
            await monitors.close()
            assert monitors.watched == set()
    finally:
        await runner.cleanup()
