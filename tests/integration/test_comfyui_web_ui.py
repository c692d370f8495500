"""ComfyUI 0.8.0's real web UI through the proxy at `/ui/<model>/`, in headless Chromium: the page
must render the graph editor (the LiteGraph canvas, the default graph's nodes), load every asset
and its WebSocket through the `/ui/<model>/` prefix (from the proxy's root only the favicons
that the browser and the frontend ask for there), and a screenshot of it is kept as an artefact:
`${SERVERLESS_COMFYUI_ARTIFACTS:-<repo>/.artifacts}/webui-<model>.png`.

Chromium is driven over the DevTools protocol (a small client over aiohttp's WebSocket): the test
waits on the page's own state, not for a fixed time. Every host name resolves to nothing, so all
traffic stays on 127.0.0.1. `make chromium` installs it; a missing chromium fails the test."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest
from PIL import Image

from comfyui_backends import REAL_START_SECONDS, Stack, proxy_in_front, start_backend
from serverless_comfyui.testworld.processes import ManagedProcess, group_members, wait_until

pytestmark = pytest.mark.comfyui

REPO = Path(__file__).resolve().parents[2]
MODEL = "comfy"
# The editor renders in ~5-15 s on an idle 2-core machine (Chromium's start + ~10 MB of
# scripts on a software renderer); the limits are for a loaded CI machine.
BROWSER_START_SECONDS = 60.0
EDITOR_SECONDS = 180.0
# Root paths asked for regardless of the page's path: the browser's default favicon and the
# frontend's own favicons, hard-coded from the root in ComfyUI frontend 1.35.9 (`/assets/
# favicon.ico`, `/assets/images/favicon_progress_16x16/frame_N.png`). Cosmetic only (the tab's
# icon); everything else must use the prefix.
KNOWN_ROOT_PATHS = (
    "/favicon.ico", "/assets/favicon.ico", "/assets/images/favicon_progress_16x16/",
)  # fmt: skip
ERROR_TEXTS = (
    "Starting comfy",
    "Traceback",
    "Internal Server Error",
    "Bad Gateway",
    "Service Unavailable",
)

# Resolves when the editor is up: the LiteGraph canvas laid out with a size, ComfyUI's app
# object holding a graph with nodes (the default workflow), and two frames drawn after that.
# Checked on every DOM change and every 100 ms; the page's own deadline ends the wait.
WAIT_FOR_EDITOR = """
new Promise((resolve) => {
  const deadline = performance.now() + %(ms)d;
  const state = () => {
    const canvas = document.querySelector('#graph-canvas');
    const graph = window.app && window.app.graph;
    const nodes = graph ? (graph.nodes || graph._nodes || []).length : 0;
    return {
      canvas: !!canvas && canvas.tagName === 'CANVAS',
      width: canvas ? canvas.clientWidth : 0,
      height: canvas ? canvas.clientHeight : 0,
      nodes,
      title: document.title,
      text: document.body ? document.body.innerText.slice(0, 2000) : '',
    };
  };
  let done = false;
  const check = () => {
    if (done) return;
    const s = state();
    const ready = s.canvas && s.width > 0 && s.height > 0 && s.nodes > 0;
    if (ready || performance.now() > deadline) {
      done = true;
      observer.disconnect();
      clearInterval(timer);
      s.ready = ready;
      requestAnimationFrame(() => requestAnimationFrame(() => resolve(s)));
    }
  };
  const observer = new MutationObserver(check);
  observer.observe(document, {childList: true, subtree: true, attributes: true});
  const timer = setInterval(check, 100);
  check();
})
"""


def chromium_binary() -> str:
    name = os.environ.get("CHROMIUM", "chromium")
    found = shutil.which(name) or shutil.which("chromium-browser")
    if found is None:
        pytest.fail(
            f"{name} not found: the web UI test needs a headless Chromium; run `make chromium` "
            "(Debian: apt-get install chromium) or set CHROMIUM=/path/to/chromium",
            pytrace=False,
        )
    return found


def artifacts_dir() -> Path:
    folder = Path(os.environ.get("SERVERLESS_COMFYUI_ARTIFACTS") or REPO / ".artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass
class Browser:
    process: ManagedProcess
    devtools: str  # http://127.0.0.1:<port>


@contextlib.contextmanager
def start_chromium(log_dir: Path, host: str = "127.0.0.1") -> Iterator[Browser]:
    """Headless Chromium with a fresh profile, DevTools on a kernel-chosen loopback port; host
    (the proxy's address) is the one name it resolves."""
    binary = chromium_binary()
    profile = Path(tempfile.mkdtemp(prefix="chromium-", dir=log_dir))
    args = [
        binary, "--headless=new", "--remote-debugging-address=127.0.0.1",
        "--remote-debugging-port=0", f"--user-data-dir={profile}", "--no-first-run",
        "--no-default-browser-check", "--disable-background-networking", "--disable-sync",
        "--disable-component-update", "--disable-default-apps", "--disable-extensions",
        "--disable-dev-shm-usage", "--no-proxy-server", "--window-size=1440,900",
        # No name resolves: nothing can leave the machine; the page only has the proxy's host.
        f"--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE {host}",
        "about:blank",
    ]  # fmt: skip
    if os.geteuid() == 0:
        args.insert(2, "--no-sandbox")  # Chromium refuses its sandbox as root
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    process = ManagedProcess("chromium", args, log_dir / "chromium.log", env)
    process.start()
    try:
        port_file = profile / "DevToolsActivePort"

        def listening() -> bool:
            process.ensure_alive()
            return port_file.is_file() and bool(port_file.read_text().split())

        wait_until(listening, BROWSER_START_SECONDS, "Chromium's DevTools port")
        port = int(port_file.read_text().split()[0])
        yield Browser(process, f"http://127.0.0.1:{port}")
    finally:
        process.stop(grace=10)  # the whole process group: zygote, GPU and renderer processes
        shutil.rmtree(profile, ignore_errors=True)


@dataclass
class DevTools:
    """A minimal Chrome DevTools Protocol client for one page target."""

    ws: aiohttp.ClientWebSocketResponse
    events: list[dict[str, Any]] = field(default_factory=list)
    pending: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    ids: Iterator[int] = field(default_factory=itertools.count)
    waiters: list[tuple[str, asyncio.Future[dict[str, Any]]]] = field(default_factory=list)

    async def read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self.pending.pop(data["id"], None)
                if future is not None and not future.done():
                    future.set_result(data)
                continue
            self.events.append(data)
            for method, waiter in self.waiters:
                if method == data.get("method") and not waiter.done():
                    waiter.set_result(data)
        for future in self.pending.values():
            if not future.done():
                future.set_exception(ConnectionError("the DevTools socket closed"))

    async def call(self, method: str, limit: float = 60, **params: Any) -> dict[str, Any]:
        call_id = next(self.ids)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[call_id] = future
        await self.ws.send_json({"id": call_id, "method": method, "params": params})
        answer = await asyncio.wait_for(future, limit)
        if "error" in answer:
            raise RuntimeError(f"{method}: {answer['error']}")
        return dict(answer.get("result", {}))

    def expect(self, method: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.waiters.append((method, future))
        return future


@contextlib.asynccontextmanager
async def devtools(browser: Browser) -> AsyncIterator[DevTools]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        async with http.get(f"{browser.devtools}/json/list") as answer:
            targets = await answer.json()
        page = next(t for t in targets if t.get("type") == "page")
        async with http.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            client = DevTools(ws)
            reader = asyncio.create_task(client.read())
            try:
                yield client
            finally:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    chromium_binary()  # fail before the minutes of ComfyUI's start
    folder = tmp_path_factory.mktemp("webui")
    with (
        start_backend("real", folder / "comfyui") as backend,
        proxy_in_front(backend, folder, MODEL) as s,
    ):
        yield s


def distinct_colours(png: Path) -> int:
    with Image.open(png) as image:
        colours = image.convert("RGB").getcolors(maxcolors=1 << 24)
    return len(colours or [])


@pytest.mark.timeout(REAL_START_SECONDS + BROWSER_START_SECONDS + EDITOR_SECONDS + 120)
async def test_graph_editor_renders_through_the_proxy(stack: Stack, tmp_path: Path) -> None:
    await check_graph_editor(stack.proxy_url, stack.model, tmp_path)


async def check_graph_editor(proxy_url: str, model: str, tmp_path: Path) -> None:
    """ComfyUI's graph editor renders in Chromium through the proxy's `/ui/<model>/`, with
    every request through that prefix; the screenshot goes to `.artifacts/webui-<model>.png`."""
    url = f"{proxy_url}/ui/{model}/"
    origin = urlsplit(proxy_url).netloc
    prefix = f"/ui/{model}/"
    # A first visit opens the templates browser over an empty graph; a returning user (the
    # setting stored on the pod, set here through the proxy's prefix) gets the default graph.
    async with (
        aiohttp.ClientSession() as http,
        http.post(f"{url}api/settings/Comfy.TutorialCompleted", json=True) as answer,
    ):
        assert answer.status == 200, await answer.text()
    started = time.monotonic()
    with start_chromium(tmp_path, urlsplit(proxy_url).hostname or "127.0.0.1") as browser:
        async with devtools(browser) as page:
            for domain in ("Page", "Runtime", "Network"):
                await page.call(f"{domain}.enable")
            await page.call(
                "Emulation.setDeviceMetricsOverride", width=1440, height=900,
                deviceScaleFactor=1, mobile=False,
            )  # fmt: skip
            loaded = page.expect("Page.loadEventFired")
            navigation = await page.call("Page.navigate", url=url)
            assert "errorText" not in navigation, navigation
            await asyncio.wait_for(loaded, EDITOR_SECONDS)
            result = await page.call(
                "Runtime.evaluate",
                limit=EDITOR_SECONDS + 30,
                expression=WAIT_FOR_EDITOR % {"ms": EDITOR_SECONDS * 1000},
                awaitPromise=True,
                returnByValue=True,
            )
            state = result["result"]["value"]
            shot = await page.call("Page.captureScreenshot", format="png")
            png = artifacts_dir() / f"webui-{model}.png"
            png.write_bytes(base64.b64decode(shot["data"]))
            events = list(page.events)
    rendered = time.monotonic() - started

    assert state["ready"], f"the graph editor did not render in {EDITOR_SECONDS:.0f} s: {state}"
    assert state["title"].endswith("ComfyUI"), state  # "Unsaved Workflow - ComfyUI"
    for text in ERROR_TEXTS:
        assert text not in state["text"], f"{text!r} on the page: {state['text']!r}"
    assert state["nodes"] >= 3, f"the default graph is missing: {state}"

    requests = [e["params"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    responses = {
        e["params"]["requestId"]: e["params"]["response"]
        for e in events
        if e.get("method") == "Network.responseReceived"
    }
    sockets = [e["params"]["url"] for e in events if e.get("method") == "Network.webSocketCreated"]
    urls = [r["request"]["url"] for r in requests]
    web = [urlsplit(u) for u in urls + sockets if urlsplit(u).scheme in ("http", "https", "ws")]
    # The frontend itself asks api.comfy.org for release notes: name resolution is off, so the
    # request fails in the browser. Nothing else may leave the proxy's origin.
    blocked = {
        e["params"]["requestId"] for e in events if e.get("method") == "Network.loadingFailed"
    }
    elsewhere = [
        r["request"]["url"]
        for r in requests
        if urlsplit(r["request"]["url"]).netloc != origin
        and urlsplit(r["request"]["url"]).scheme in ("http", "https", "ws")
    ]
    assert all(urlsplit(u).hostname != "127.0.0.1" for u in elsewhere), elsewhere
    reached = [
        r["request"]["url"]
        for r in requests
        if r["request"]["url"] in elsewhere
        and (r["requestId"] in responses or r["requestId"] not in blocked)
    ]
    assert not reached, f"the page reached past the proxy: {reached}"
    web = [u for u in web if u.netloc == origin]
    outside = [
        u.geturl()
        for u in web
        if not u.path.startswith(prefix) and not u.path.startswith(KNOWN_ROOT_PATHS)
    ]
    assert not outside, f"requests outside {prefix} (from the proxy's root): {outside}"
    scripts = [
        (r["request"]["url"], responses.get(r["requestId"], {}).get("status"))
        for r in requests
        if r.get("type") == "Script"
    ]
    assert any(
        urlsplit(u).path.startswith(f"{prefix}assets/index-") and status == 200
        for u, status in scripts
    ), f"the frontend's entry script did not load through {prefix}: {scripts}"
    failed = [
        (r["request"]["url"], responses[r["requestId"]]["status"])
        for r in requests
        if r["requestId"] in responses and responses[r["requestId"]]["status"] >= 500
    ]
    assert not failed, f"server errors: {failed}"
    assert any(urlsplit(s).path == f"{prefix}ws" for s in sockets), (
        f"the page's WebSocket did not open through {prefix}ws: {sockets}"
    )

    size = png.stat().st_size
    colours = distinct_colours(png)
    with Image.open(png) as image:
        assert image.size == (1440, 900), image.size
    assert size > 20_000 and colours >= 16, (
        f"{png}: {size} bytes, {colours} colours: looks blank, not the editor"
    )
    print(
        f"editor rendered in {rendered:.1f} s ({state['nodes']} nodes, {len(web)} requests via "
        f"{prefix}, blocked off-machine: {elsewhere}); screenshot {png}"
    )


def test_chromium_is_gone_after_the_test(tmp_path: Path) -> None:
    """The browser's whole process group is stopped when start_chromium's block ends."""
    with start_chromium(tmp_path) as browser:
        pgid = browser.process.pid
        assert pgid is not None
    assert not group_members(pgid), f"chromium's processes outlived it: {group_members(pgid)}"
