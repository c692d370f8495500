"""The model downloader against a real HTTP server on 127.0.0.1 (aiohttp): resume, Range quirks,
verification, atomicity, skipping, tokens, errors, retries, locking and the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from serverless_comfyui.crd.models import ModelFile
from serverless_comfyui.downloader import (
    DEFAULT_TOKEN_HOSTS,
    Downloader,
    DownloadResult,
    ManifestError,
    download_models,
    load_manifest,
    read_token,
)
from serverless_comfyui.downloader.core import AUTH_HINT, _content_range

TOKEN = "hf_test_token"


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, non-repeating-looking content."""
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:size])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass
class Served:
    """A file the test server serves, and how it misbehaves."""

    content: bytes
    etag: str | None = '"v1"'
    token: str | None = None  # required Bearer token
    ignore_range: bool = False  # answer 200 with the whole body to Range requests
    drop_after: int | None = None  # close the connection after this many body bytes, once
    fail_first: int = 0  # answer 503 to this many GETs first
    status: int | None = None  # always answer this status


@dataclass
class Hit:
    method: str
    name: str
    status: int
    range: str | None
    if_range: str | None
    authorization: str | None
    body_bytes: int = 0


@dataclass
class FileServer:
    files: dict[str, Served] = field(default_factory=dict)
    hits: list[Hit] = field(default_factory=list)
    base: str = ""

    def url(self, name: str) -> str:
        return f"{self.base}/files/{name}"

    def gets(self, name: str | None = None) -> list[Hit]:
        return [h for h in self.hits if h.method == "GET" and name in (None, h.name)]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        hit = Hit(
            request.method,
            name,
            200,
            request.headers.get("Range"),
            request.headers.get("If-Range"),
            request.headers.get("Authorization"),
        )
        self.hits.append(hit)
        served = self.files.get(name)
        if served is None:
            hit.status = 404
            return web.Response(status=404, text="Entry not found")
        if served.token is not None and hit.authorization != f"Bearer {served.token}":
            hit.status = 401
            return web.Response(status=401, text="Access to model is restricted")
        if served.status is not None:
            hit.status = served.status
            return web.Response(status=served.status, headers={"Retry-After": "0"})
        if request.method == "GET" and served.fail_first > 0:
            served.fail_first -= 1
            hit.status = 503
            return web.Response(status=503, headers={"Retry-After": "0"})
        content = served.content
        size = len(content)
        headers = {"Accept-Ranges": "bytes"}
        if served.etag:
            headers["ETag"] = served.etag
        if request.method == "HEAD":
            return web.Response(headers={**headers, "Content-Length": str(size)})

        start, status = 0, 200
        wanted = hit.range
        if wanted and not served.ignore_range and hit.if_range in (None, served.etag):
            start = int(wanted.removeprefix("bytes=").split("-")[0])
            if start >= size:
                hit.status = 416
                return web.Response(status=416, headers={"Content-Range": f"bytes */{size}"})
            status = 206
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
        body = content[start:]
        hit.status = status
        response = web.StreamResponse(
            status=status, headers={**headers, "Content-Length": str(len(body))}
        )
        await response.prepare(request)
        if served.drop_after is not None and served.drop_after < len(body):
            cut, served.drop_after = served.drop_after, None
            await response.write(body[:cut])
            hit.body_bytes = cut
            assert request.transport is not None
            request.transport.close()
            return response
        await response.write(body)
        hit.body_bytes = len(body)
        await response.write_eof()
        return response


@pytest.fixture
async def server() -> AsyncIterator[FileServer]:
    files = FileServer()
    app = web.Application()
    app.router.add_route("*", "/files/{name}", files.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    site = web.SockSite(runner, sock)
    await site.start()
    files.base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield files
    finally:
        await runner.cleanup()


class Events(list[dict[str, Any]]):
    def __call__(self, event: dict[str, Any]) -> None:
        self.append(event)

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self if e["event"] == kind]


def downloader(dest: Path, events: Events, **options: Any) -> Downloader:
    defaults: dict[str, Any] = {
        "backoff_seconds": 0.01,
        "progress_interval": 0.0,
        "chunk_size": 4096,
        "lock_poll_seconds": 0.02,
        "emit": events,
    }
    return Downloader(dest, **{**defaults, **options})


def model(server: FileServer, name: str, content: bytes | None = None, **extra: Any) -> ModelFile:
    if content is not None:
        server.files[name] = Served(content)
    return ModelFile.model_validate({"name": name, "url": server.url(name), "dir": "vae", **extra})


def no_leftovers(dest: Path) -> None:
    assert not list(dest.rglob("*.part")), list(dest.rglob("*.part"))


# ---------------------------------------------------------------------------------------------


async def test_downloads_and_verifies(server: FileServer, tmp_path: Path) -> None:
    data = payload(50_000)
    m = model(server, "ae.safetensors", data, sha256=sha(data).upper())
    events = Events()
    async with downloader(tmp_path, events) as d:
        result = await d.download(m)
    assert result.ok and result.verified and not result.skipped
    assert result.sha256 == sha(data)
    assert (result.bytes, result.total_bytes) == (50_000, 50_000)
    target = tmp_path / "vae" / "ae.safetensors"
    assert result.path == target and target.read_bytes() == data
    no_leftovers(tmp_path)
    progress = events.of("progress")
    assert progress[0] == {
        "event": "progress",
        "name": "ae.safetensors",
        "bytes": 0,
        "totalBytes": 50_000,
    }
    assert progress[-1]["bytes"] == 50_000
    assert events.of("done") == [
        {
            "event": "done",
            "name": "ae.safetensors",
            "bytes": 50_000,
            "totalBytes": 50_000,
            "sha256": sha(data),
            "verified": True,
            "skipped": False,
        }
    ]
    summary = json.loads((tmp_path / ".serverless-comfyui" / "ae.safetensors.json").read_text())
    assert summary["state"] == "done"
    assert summary["verified"] is True
    assert summary["sha256"] == sha(data)
    assert summary["bytes"] == 50_000
    assert summary["path"] == "vae/ae.safetensors"
    assert result.to_status().model_dump(mode="json", exclude_none=True) == {
        "name": "ae.safetensors",
        "bytes": 50_000,
        "totalBytes": 50_000,
        "verified": True,
    }
    (get,) = server.gets()
    assert get.range is None and get.authorization is None


async def test_resumes_after_a_dropped_connection(server: FileServer, tmp_path: Path) -> None:
    data = payload(200_000)
    m = model(server, "clip_l.safetensors", data, sha256=sha(data))
    server.files[m.name].drop_after = 70_000
    events = Events()
    async with downloader(tmp_path, events) as d:
        result = await d.download(m)
    assert result.ok and result.verified
    assert (tmp_path / "vae" / m.name).read_bytes() == data
    first, second = server.gets()
    assert first.range is None and first.body_bytes == 70_000
    resumed_from = int(second.range.removeprefix("bytes=").rstrip("-"))  # type: ignore[union-attr]
    assert 0 < resumed_from <= 70_000  # what reached the disk before the drop
    assert second.status == 206 and second.if_range == '"v1"'
    assert second.body_bytes == len(data) - resumed_from
    (retry,) = events.of("retry")
    assert "RemoteProtocolError" in retry["message"]
    no_leftovers(tmp_path)


async def test_resumes_a_part_left_by_an_earlier_run(server: FileServer, tmp_path: Path) -> None:
    data = payload(120_000)
    m = model(server, "t5.safetensors", data, sha256=sha(data))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "t5.safetensors.part").write_bytes(data[:45_000])
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert result.ok and result.verified  # the existing part was re-hashed
    (get,) = server.gets()
    assert (get.range, get.status, get.body_bytes) == ("bytes=45000-", 206, 75_000)
    assert (tmp_path / "vae" / m.name).read_bytes() == data
    no_leftovers(tmp_path)


async def test_server_ignoring_range_restarts_the_part(server: FileServer, tmp_path: Path) -> None:
    data = payload(80_000)
    m = model(server, "flux.safetensors", data)  # no sha256: only the bytes can tell
    server.files[m.name].ignore_range = True
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "flux.safetensors.part").write_bytes(data[:30_000])
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert result.ok and not result.verified
    (get,) = server.gets()
    assert get.range == "bytes=30000-" and get.status == 200
    assert (tmp_path / "vae" / m.name).read_bytes() == data  # not prefix + whole body
    assert result.sha256 == sha(data)


async def test_complete_part_gets_416_and_is_finished(server: FileServer, tmp_path: Path) -> None:
    data = payload(10_000)
    m = model(server, "done.safetensors", data, sha256=sha(data))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "done.safetensors.part").write_bytes(data)
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert result.ok and result.verified
    assert [h.status for h in server.gets()] == [416]
    assert (tmp_path / "vae" / m.name).read_bytes() == data
    no_leftovers(tmp_path)


async def test_oversized_part_gets_416_and_restarts(server: FileServer, tmp_path: Path) -> None:
    data = payload(10_000)
    m = model(server, "big.safetensors", data, sha256=sha(data))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "big.safetensors.part").write_bytes(payload(15_000, seed=9))
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert result.ok and result.verified
    assert [h.status for h in server.gets()] == [416, 200]
    assert (tmp_path / "vae" / m.name).read_bytes() == data


async def test_changed_upstream_restarts_instead_of_splicing(
    server: FileServer, tmp_path: Path
) -> None:
    old, new = payload(60_000, seed=1), payload(60_000, seed=2)
    m = model(server, "lora.safetensors", old)
    server.files[m.name].drop_after = 20_000
    async with downloader(tmp_path, Events(), max_attempts=1) as d:
        first = await d.download(m)
    assert not first.ok and "giving up" in (first.error or "")
    assert (tmp_path / "vae" / "lora.safetensors.part").stat().st_size > 0
    assert not (tmp_path / "vae" / "lora.safetensors").exists()

    server.files[m.name] = Served(new, etag='"v2"')  # a new revision upstream
    async with downloader(tmp_path, Events()) as d:
        second = await d.download(m)
    assert second.ok
    last = server.gets()[-1]
    assert last.if_range == '"v1"' and last.status == 200  # validator from the earlier run
    assert (tmp_path / "vae" / m.name).read_bytes() == new


async def test_sha_mismatch_fails_loudly_and_leaves_nothing(
    server: FileServer, tmp_path: Path
) -> None:
    good, wrong = payload(30_000, seed=1), payload(30_000, seed=2)
    m = model(server, "wrong.safetensors", wrong, sha256=sha(good))
    events = Events()
    async with downloader(tmp_path, events) as d:
        result = await d.download(m)
    assert not result.ok and not result.verified
    assert result.error is not None
    assert f"sha256 mismatch for wrong.safetensors from {m.url}: expected {sha(good)}" in (
        result.error
    )
    assert f"got {sha(wrong)}" in result.error
    assert not (tmp_path / "vae" / "wrong.safetensors").exists()  # nothing under the final name
    no_leftovers(tmp_path)  # the corrupt part is deleted
    assert events.of("error") == [
        {"event": "error", "name": "wrong.safetensors", "message": result.error}
    ]
    assert len(server.gets()) == 1  # a fresh (not resumed) download is not retried
    summary = json.loads((tmp_path / ".serverless-comfyui" / "wrong.safetensors.json").read_text())
    assert summary["state"] == "error" and summary["verified"] is False


async def test_sha_mismatch_after_resume_retries_once_from_zero(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(40_000)
    m = model(server, "spliced.safetensors", data, sha256=sha(data))
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "spliced.safetensors.part").write_bytes(payload(10_000, seed=5))
    events = Events()
    async with downloader(tmp_path, events) as d:
        result = await d.download(m)
    assert result.ok and result.verified
    assert [h.range for h in server.gets()] == ["bytes=10000-", None]
    assert "sha256 mismatch after a resumed download" in events.of("retry")[0]["message"]


async def test_skips_a_present_verified_file_without_fetching(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(25_000)
    m = model(server, "ae.safetensors", data, sha256=sha(data))
    async with downloader(tmp_path, Events()) as d:
        assert (await d.download(m)).ok
    server.hits.clear()

    events = Events()
    async with downloader(tmp_path, events) as d:
        result = await d.download(m)
    assert result.ok and result.verified and result.skipped
    assert server.hits == []  # no GET body, not even a HEAD
    assert events.of("done")[0]["skipped"] is True
    assert events.of("progress") == []

    # the summary's hash is only trusted while the file is unchanged: rehash reads it again
    async with downloader(tmp_path, Events(), rehash=True) as d:
        assert (await d.download(m)).skipped
    assert server.hits == []

    # a file that does not verify any more is downloaded again and replaced atomically
    target = tmp_path / "vae" / "ae.safetensors"
    target.write_bytes(b"garbage")
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert result.ok and not result.skipped
    assert target.read_bytes() == data
    assert len(server.gets()) == 1


async def test_present_file_without_sha_is_checked_by_size(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(9_000)
    m = model(server, "clip.safetensors", data)
    (tmp_path / "vae").mkdir()
    (tmp_path / "vae" / "clip.safetensors").write_bytes(data)
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert result.ok and result.skipped and not result.verified
    assert [h.method for h in server.hits] == ["HEAD"]

    server.hits.clear()
    (tmp_path / "vae" / "clip.safetensors").write_bytes(data[:5_000])  # truncated
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert result.ok and not result.skipped
    assert [h.method for h in server.hits] == ["HEAD", "GET"]
    assert (tmp_path / "vae" / "clip.safetensors").read_bytes() == data


async def test_token_is_sent_as_bearer_to_token_hosts(server: FileServer, tmp_path: Path) -> None:
    data = payload(5_000)
    m = model(server, "flux1-dev.safetensors", data, sha256=sha(data))
    server.files[m.name].token = TOKEN
    async with downloader(tmp_path, Events(), token=TOKEN, token_hosts=["127.0.0.1"]) as d:
        result = await d.download(m)
    assert result.ok
    assert server.gets()[0].authorization == f"Bearer {TOKEN}"


@pytest.mark.parametrize(
    ("token", "hosts", "hint"),
    [
        (None, ["127.0.0.1"], "no token given"),
        ("hf_wrong", ["127.0.0.1"], "HTTP 401]"),
        (TOKEN, list(DEFAULT_TOKEN_HOSTS), "127.0.0.1 is not a token host"),
    ],
)
async def test_gated_model_without_the_right_token(
    server: FileServer, tmp_path: Path, token: str | None, hosts: list[str], hint: str
) -> None:
    data = payload(5_000)
    m = model(server, "flux1-dev.safetensors", data)
    server.files[m.name].token = TOKEN
    async with downloader(tmp_path, Events(), token=token, token_hosts=hosts) as d:
        result = await d.download(m)
    assert not result.ok
    assert result.error is not None
    assert result.error.startswith(f"authentication failed for {m.url}: {AUTH_HINT}")
    assert AUTH_HINT == (
        "missing or wrong Hugging Face token (the model may be gated: accept its licence)"
    )
    assert hint in result.error
    assert TOKEN not in result.error
    assert len(server.gets()) == 1  # not retried
    assert not (tmp_path / "vae" / m.name).exists()


async def test_not_found(server: FileServer, tmp_path: Path) -> None:
    m = model(server, "missing.safetensors")
    async with downloader(tmp_path, Events()) as d:
        result = await d.download(m)
    assert not result.ok
    assert result.error == f"not found: {m.url} [HTTP 404]"
    assert len(server.gets()) == 1


async def test_retries_server_errors(server: FileServer, tmp_path: Path) -> None:
    data = payload(5_000)
    m = model(server, "flaky.safetensors", data, sha256=sha(data))
    server.files[m.name].fail_first = 2
    events = Events()
    async with downloader(tmp_path, events) as d:
        result = await d.download(m)
    assert result.ok
    assert [h.status for h in server.gets()] == [503, 503, 200]
    assert [e["attempt"] for e in events.of("retry")] == [1, 2]


async def test_gives_up_after_max_attempts(server: FileServer, tmp_path: Path) -> None:
    m = model(server, "down.safetensors", payload(100))
    server.files[m.name].status = 502
    async with downloader(tmp_path, Events(), max_attempts=3) as d:
        result = await d.download(m)
    assert not result.ok
    assert result.error == f"giving up on {m.url} after 3 failed attempts: HTTP 502 from {m.url}"
    assert len(server.gets()) == 3


async def test_connection_refused_is_retried_then_reported(tmp_path: Path) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    m = ModelFile.model_validate(
        {"name": "x.safetensors", "url": f"http://127.0.0.1:{port}/x", "dir": "vae"}
    )
    events = Events()
    async with downloader(tmp_path, events, max_attempts=2) as d:
        result = await d.download(m)
    assert not result.ok and "ConnectError" in (result.error or "")
    assert len(events.of("retry")) == 1


async def test_all_files_are_tried_and_failures_reported(
    server: FileServer, tmp_path: Path
) -> None:
    good = payload(3_000)
    models = [
        model(server, "missing.safetensors"),
        model(server, "good.safetensors", good, sha256=sha(good)),
        model(server, "bad.safetensors", payload(3_000, 1), sha256=sha(good)),
    ]
    events = Events()
    results = await download_models(
        tmp_path, models, concurrency=2, emit=events, backoff_seconds=0.01
    )
    assert [r.ok for r in results] == [False, True, False]
    assert [r.name for r in results] == [m.name for m in models]
    assert {e["name"] for e in events.of("error")} == {"missing.safetensors", "bad.safetensors"}
    assert (tmp_path / "vae" / "good.safetensors").read_bytes() == good


async def test_concurrent_downloaders_share_one_download(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(300_000)
    m = model(server, "shared.safetensors", data, sha256=sha(data))
    first_events, second_events = Events(), Events()
    async with (
        downloader(tmp_path, first_events, chunk_size=1024) as first,
        downloader(tmp_path, second_events, chunk_size=1024) as second,
    ):
        results: tuple[DownloadResult, ...] = await asyncio.gather(
            first.download(m), second.download(m)
        )
    assert all(r.ok and r.verified for r in results)
    assert len(server.gets()) == 1
    assert sorted(r.skipped for r in results) == [False, True]
    waited = first_events.of("waiting") + second_events.of("waiting")
    assert len(waited) == 1
    assert (tmp_path / "vae" / m.name).read_bytes() == data


def test_content_range_parsing() -> None:
    assert _content_range("bytes 100-199/1000") == (100, 1000)
    assert _content_range("bytes */1000") == (None, 1000)
    assert _content_range("bytes 0-9/*") == (0, None)
    assert _content_range(None) == (None, None)
    assert _content_range("items 1-2/3") == (None, None)


def test_manifest(tmp_path: Path) -> None:
    entries = [
        {"name": "a.safetensors", "url": "https://huggingface.co/a", "dir": "vae"},
        {"name": "b.safetensors", "url": "https://hf.co/b", "dir": "loras", "sha256": "0" * 64},
    ]
    listed = tmp_path / "list.json"
    listed.write_text(json.dumps(entries))
    wrapped = tmp_path / "wrapped.json"
    wrapped.write_text(json.dumps({"models": entries}))
    assert load_manifest(listed) == load_manifest(wrapped)
    assert [m.name for m in load_manifest(listed)] == ["a.safetensors", "b.safetensors"]

    for bad, message in [
        ("not json", "cannot read"),
        (json.dumps([{**entries[0], "name": "../etc/passwd"}]), "invalid manifest"),
        (json.dumps([entries[0], entries[0]]), "duplicate names a.safetensors"),
        (json.dumps({"files": []}), "invalid manifest"),
    ]:
        broken = tmp_path / "broken.json"
        broken.write_text(bad)
        with pytest.raises(ManifestError, match=message):
            load_manifest(broken)
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "absent.json")


def test_read_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    assert read_token() is None
    monkeypatch.setenv("HUGGING_FACE_HUB_TOKEN", "hf_old")
    assert read_token() == "hf_old"
    monkeypatch.setenv("HF_TOKEN", " hf_env\n")
    assert read_token() == "hf_env"
    secret = tmp_path / "token"
    secret.write_text("hf_file\n")
    assert read_token(secret) == "hf_file"


# -- the command line --------------------------------------------------------------------------


async def run_cli(
    *args: str, env: dict[str, str] | None = None
) -> tuple[int, list[dict[str, Any]]]:
    """Run the CLI in a subprocess (the test server keeps serving from this event loop)."""
    environment = {
        k: v for k, v in os.environ.items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "serverless_comfyui.downloader",
        *args,
        "--progress-interval=0",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**environment, **(env or {})},
    )
    stdout, stderr = await process.communicate()
    assert process.returncode is not None
    print(stderr.decode(), file=sys.stderr)
    return process.returncode, [json.loads(line) for line in stdout.decode().splitlines()]


async def test_cli_downloads_a_manifest(server: FileServer, tmp_path: Path) -> None:
    data = payload(20_000)
    m = model(server, "flux1-dev.safetensors", data, sha256=sha(data))
    server.files[m.name].token = TOKEN
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([m.wire()]))
    dest = tmp_path / "models"
    code, events = await run_cli(
        "--dest",
        str(dest),
        "--manifest",
        str(manifest),
        "--token-host",
        "127.0.0.1",
        env={"HF_TOKEN": TOKEN},
    )
    assert code == 0
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and "progress" in kinds and kinds[-2:] == ["done", "summary"]
    assert events[-2]["verified"] is True
    assert events[-1] == {"event": "summary", "ok": 1, "failed": []}
    assert (dest / "vae" / "flux1-dev.safetensors").read_bytes() == data


async def test_cli_exits_non_zero_after_trying_every_file(
    server: FileServer, tmp_path: Path
) -> None:
    data = payload(2_000)
    gated = model(server, "gated.safetensors", data)
    server.files[gated.name].token = TOKEN
    fine = model(server, "fine.safetensors", data)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([gated.wire(), fine.wire()]))
    token_file = tmp_path / "token"
    token_file.write_text("hf_wrong\n")
    code, events = await run_cli(
        "--dest",
        str(tmp_path / "models"),
        "--manifest",
        str(manifest),
        "--token-file",
        str(token_file),
        "--token-host",
        "127.0.0.1",
        "--termination-log",
        str(tmp_path / "termination-log"),
    )
    # Every failure is permanent (a wrong token): exit 3, so the Job fails without retrying.
    assert code == 3
    states = json.loads((tmp_path / "termination-log").read_text())
    assert [(s["name"], s["bytes"], "error" in s) for s in states] == [
        ("gated.safetensors", 0, True),
        ("fine.safetensors", 2_000, False),
    ]
    assert "authentication failed" in states[0]["error"]
    (error,) = [e for e in events if e["event"] == "error"]
    assert error["name"] == "gated.safetensors"
    assert "authentication failed" in error["message"]
    assert events[-1] == {"event": "summary", "ok": 1, "failed": ["gated.safetensors"]}
    assert (tmp_path / "models" / "vae" / "fine.safetensors").exists()


async def test_cli_rejects_a_bad_manifest(tmp_path: Path) -> None:
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps([{"name": "x", "url": "ftp://x/y", "dir": "vae"}]))
    code, events = await run_cli("--dest", str(tmp_path), "--manifest", str(manifest))
    assert code == 2 and events == []
