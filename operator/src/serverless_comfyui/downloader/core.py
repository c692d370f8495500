"""Resumable, verified, atomic download of model files into a ComfyUI models folder.

Each file goes to ``<dest>/<dir>/<name>`` through ``<dest>/<dir>/<name>.part``:

* **resume**: an existing ``.part`` is continued with ``Range: bytes=<size>-`` (and ``If-Range``
  with the validator of the response that started it, so a file that changed upstream restarts
  instead of being spliced). A server that ignores the range (200) restarts the part from zero;
  416 means the part is already complete (size == total) or unusable (restart).
* **verification**: the SHA-256 is computed while streaming (the existing part is re-hashed when
  resuming). With an expected ``sha256`` a mismatch fails the file loudly and *deletes the part*
  (it is corrupt: resuming it again could never verify); a mismatch after a resumed download is
  first retried once from zero, since the part may predate an upstream change.
* **atomicity**: the part is fsynced and renamed over the final name, then the folder is
  fsynced, so the final name only ever holds complete content.
* **skip**: a present final file is kept when it matches ``sha256`` (the hash recorded in the
  summary file is trusted while the file's size and mtime are unchanged; ``rehash`` forces a
  re-read), or, without ``sha256``, when its size equals the server's ``Content-Length`` (HEAD).
* **retries** with exponential backoff for connection errors, 429 and 5xx (``Retry-After`` is
  honoured); a try that made progress resets the count. 401/403 and 404 fail at once.
* **token**: a Hugging Face token is sent as ``Authorization: Bearer`` only to Hugging Face hosts
  (``token_hosts``); httpx drops it on redirects to another host (the CDN).
* **locking**: an ``flock`` per target file (under ``<dest>/.serverless-comfyui/locks``) keeps two
  downloaders sharing a volume from writing the same part; the second waits, then skips.
* **reporting**: JSON events through ``emit`` (``start``, ``progress``, ``retry``, ``waiting``,
  ``done``, ``error``) and a summary per model in ``<dest>/.serverless-comfyui/<name>.json``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import random
import re
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO, Literal
from urllib.parse import urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError

from serverless_comfyui.crd.models import ModelFile, ModelStatus

STATE_DIR = ".serverless-comfyui"
PART_SUFFIX = ".part"
DEFAULT_TOKEN_HOSTS = ("huggingface.co", "hf.co")
AUTH_HINT = "missing or wrong Hugging Face token (the model may be gated: accept its licence)"
CHUNK_SIZE = 1 << 20
HASH_BLOCK = 8 << 20

Event = dict[str, Any]
Emit = Callable[[Event], None]


def print_event(event: Event) -> None:
    """Write one JSON line to stdout (the default ``emit``)."""
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


class DownloadError(Exception):
    """A file could not be downloaded; the message says why, for a human."""


class AuthError(DownloadError):
    """401/403: no token, a wrong one, or a gated model whose licence was not accepted."""


class NotFoundError(DownloadError):
    """404/410."""


class ChecksumError(DownloadError):
    """The content does not match the expected SHA-256."""


class ManifestError(ValueError):
    """The manifest is unreadable or invalid."""


class _Retry(Exception):
    """A transient failure: try again (after ``delay`` seconds when the server said so)."""

    def __init__(self, message: str, delay: float | None = None) -> None:
        super().__init__(message)
        self.delay = delay


@dataclass
class DownloadResult:
    """What happened to one model file."""

    model: ModelFile
    path: Path
    ok: bool
    bytes: int = 0
    total_bytes: int | None = None
    sha256: str | None = None
    verified: bool = False
    skipped: bool = False
    error: str | None = None
    permanent: bool = False
    """The failure will not go away by retrying (401/403, 404, checksum mismatch)."""

    @property
    def name(self) -> str:
        return self.model.name

    def to_status(self) -> ModelStatus:
        """This result as an entry of ``FluxWorkflowStatus.models``."""
        return ModelStatus(
            name=self.name,
            bytes=self.bytes,
            total_bytes=self.total_bytes,
            verified=self.verified,
            error=self.error,
        )


def load_manifest(source: str | Path) -> list[ModelFile]:
    """Read a manifest: a JSON list of ``{name, url, dir, sha256?}`` (or ``{"models": [...]}``).
    ``"-"`` reads stdin."""
    try:
        text = sys.stdin.read() if str(source) == "-" else Path(source).read_text("utf-8")
        data = json.loads(text)
    except (OSError, json.JSONDecodeError) as exc:
        raise ManifestError(f"cannot read manifest {source}: {exc}") from exc
    if isinstance(data, dict) and "models" in data:
        data = data["models"]
    try:
        models = TypeAdapter(list[ModelFile]).validate_python(data)
    except ValidationError as exc:
        raise ManifestError(f"invalid manifest {source}:\n{exc}") from exc
    names = [m.name for m in models]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ManifestError(f"invalid manifest {source}: duplicate names {', '.join(duplicates)}")
    return models


def read_token(token_file: str | Path | None = None) -> str | None:
    """The Hugging Face token: from ``token_file`` when given, else ``$HF_TOKEN`` (or
    ``$HUGGING_FACE_HUB_TOKEN``); ``None`` when there is none."""
    if token_file is not None:
        token = Path(token_file).read_text("utf-8").strip()
    else:
        token = (
            os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or ""
        ).strip()
    return token or None


def _host_matches(host: str, patterns: Iterable[str]) -> bool:
    host = host.lower().rstrip(".")
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern == "*" or host == pattern or host.endswith("." + pattern):
            return True
    return False


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000)."""
    found = re.fullmatch(r"\s*bytes\s+(?:(\d+)-\d+|\*)/(\d+|\*)\s*", value or "")
    if not found:
        return None, None
    start, total = found.groups()
    return (
        int(start) if start is not None else None,
        int(total) if total is not None and total != "*" else None,
    )


def _int_header(response: httpx.Response, name: str) -> int | None:
    try:
        return int(response.headers[name])
    except (KeyError, ValueError):
        return None


def _retry_after(response: httpx.Response) -> float | None:
    value = _int_header(response, "retry-after")
    return float(value) if value is not None and value >= 0 else None


def _validator(response: httpx.Response) -> str | None:
    """A strong validator usable in ``If-Range`` (strong ETag, else Last-Modified)."""
    etag: str | None = response.headers.get("etag")
    if etag and not etag.startswith("W/"):
        return etag
    last_modified: str | None = response.headers.get("last-modified")
    return last_modified


def _stat(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _hash_file(path: Path) -> tuple[Any, int]:
    """(sha256 object, size) of a whole file."""
    hasher = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while block := f.read(HASH_BLOCK):
            hasher.update(block)
            size += len(block)
    return hasher, size


class _Part:
    """The ``.part`` file and the running hash of what it holds."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.resumed = False
        self.validator: str | None = None

    def size(self) -> int:
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def reset(self) -> None:
        self.path.unlink(missing_ok=True)
        self.hasher = hashlib.sha256()
        self.hashed = 0
        self.resumed = False
        self.validator = None

    def catch_up(self) -> int:
        """Make the hash cover the part as it is on disk (re-hash after a restart or an
        earlier run). Returns the part's size."""
        size = self.size()
        if size != self.hashed:
            if size == 0:
                self.hasher, self.hashed = hashlib.sha256(), 0
            else:
                self.hasher, self.hashed = _hash_file(self.path)
        return self.hashed

    def append(self, f: BinaryIO, chunk: bytes) -> None:
        f.write(chunk)
        self.hasher.update(chunk)
        self.hashed += len(chunk)


@dataclass
class Downloader:
    """Downloads model files under ``dest``. Use as an async context manager (it owns an
    ``httpx.AsyncClient`` unless one is given)."""

    dest: Path
    token: str | None = None
    token_hosts: Sequence[str] = DEFAULT_TOKEN_HOSTS
    max_attempts: int = 5
    backoff_seconds: float = 1.0
    max_backoff_seconds: float = 60.0
    progress_interval: float = 2.0
    chunk_size: int = CHUNK_SIZE
    rehash: bool = False
    lock_poll_seconds: float = 1.0
    emit: Emit = print_event
    client: httpx.AsyncClient | None = None
    timeout: httpx.Timeout = field(
        default_factory=lambda: httpx.Timeout(connect=30.0, read=120.0, write=60.0, pool=60.0)
    )
    _own_client: bool = field(default=False, init=False, repr=False)

    def __post_init__(self) -> None:
        self.dest = Path(self.dest)

    async def __aenter__(self) -> Downloader:
        if self.client is None:
            self.client = httpx.AsyncClient(
                follow_redirects=True,
                timeout=self.timeout,
                headers={"User-Agent": "serverless-comfyui-downloader/0.1"},
            )
            self._own_client = True
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_client and self.client is not None:
            await self.client.aclose()
            self.client = None
            self._own_client = False

    # -- paths ----------------------------------------------------------------------------------

    def target(self, model: ModelFile) -> Path:
        return self.dest / model.dir.value / model.name

    def summary_path(self, model: ModelFile) -> Path:
        return self.dest / STATE_DIR / f"{model.name}.json"

    def _lock_path(self, model: ModelFile) -> Path:
        return self.dest / STATE_DIR / "locks" / model.dir.value / f"{model.name}.lock"

    # -- public ---------------------------------------------------------------------------------

    async def download_all(
        self, models: Sequence[ModelFile], concurrency: int = 1
    ) -> list[DownloadResult]:
        """Download every model (``concurrency`` at a time); never raises for one file's
        failure: look at ``ok`` of each result."""
        gate = asyncio.Semaphore(max(1, concurrency))

        async def one(model: ModelFile) -> DownloadResult:
            async with gate:
                return await self.download(model)

        return list(await asyncio.gather(*(one(m) for m in models)))

    async def download(self, model: ModelFile) -> DownloadResult:
        """Download (or skip) one model file; failures come back as ``ok=False``."""
        target = self.target(model)
        part = _Part(target.with_name(target.name + PART_SUFFIX))
        try:
            async with self._lock(model):
                target.parent.mkdir(parents=True, exist_ok=True)
                result = await self._skip(model, target)
                if result is None:
                    self.emit(
                        {
                            "event": "start",
                            "name": model.name,
                            "dir": model.dir.value,
                            "url": model.url,
                        }
                    )
                    result = await self._fetch(model, target, part)
                self._write_summary(model, result)
        except Exception as exc:  # one file's failure must not stop the others
            if isinstance(exc, DownloadError):
                message = str(exc)
            else:
                message = f"{model.name}: {type(exc).__name__}: {exc}"
            permanent = isinstance(exc, AuthError | NotFoundError | ChecksumError)
            result = DownloadResult(
                model, target, ok=False, bytes=part.size(), error=message, permanent=permanent
            )
            self.emit({"event": "error", "name": model.name, "message": message})
            with contextlib.suppress(OSError):
                self._write_summary(model, result, part.validator)
            return result
        self.emit(
            {
                "event": "done",
                "name": model.name,
                "bytes": result.bytes,
                "totalBytes": result.total_bytes,
                "sha256": result.sha256,
                "verified": result.verified,
                "skipped": result.skipped,
            }
        )
        return result

    # -- internals ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _lock(self, model: ModelFile) -> AsyncIterator[None]:
        path = self._lock_path(model)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            waiting = False
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not waiting:
                        waiting = True
                        self.emit(
                            {
                                "event": "waiting",
                                "name": model.name,
                                "message": "another download of this file is running",
                            }
                        )
                    await asyncio.sleep(self.lock_poll_seconds)
            yield
        finally:
            os.close(fd)  # releases the lock

    def _read_summary(self, model: ModelFile) -> dict[str, Any]:
        try:
            data = json.loads(self.summary_path(model).read_text("utf-8"))
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) and data.get("dir") == model.dir.value else {}

    def _write_summary(
        self, model: ModelFile, result: DownloadResult, part_validator: str | None = None
    ) -> None:
        """Record the outcome; a failed or running download keeps the validator of its part
        (for `If-Range` when a later run resumes it)."""
        try:
            mtime_ns: int | None = result.path.stat().st_mtime_ns if result.ok else None
        except FileNotFoundError:
            mtime_ns = None
        state = "done" if result.ok else ("error" if result.error else "downloading")
        _write_json_atomic(
            self.summary_path(model),
            {
                "name": model.name,
                "dir": model.dir.value,
                "url": model.url,
                "path": f"{model.dir.value}/{model.name}",
                "state": state,
                "bytes": result.bytes,
                "totalBytes": result.total_bytes,
                "sha256": result.sha256,
                "expectedSha256": model.sha256.lower() if model.sha256 else None,
                "verified": result.verified,
                "skipped": result.skipped,
                "error": result.error,
                "mtimeNs": mtime_ns,
                "partValidator": None if result.ok else part_validator,
                "updatedAt": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            },
        )

    async def _skip(self, model: ModelFile, target: Path) -> DownloadResult | None:
        """A result when the final file is already there and good, else None."""
        stat = _stat(target)
        if stat is None:
            return None
        size = stat.st_size
        cached = self._read_summary(model)
        cache_fresh = (
            cached.get("state") == "done"
            and cached.get("bytes") == size
            and cached.get("mtimeNs") == stat.st_mtime_ns
        )
        if model.sha256:
            expected = model.sha256.lower()
            if not self.rehash and cache_fresh and cached.get("sha256") == expected:
                actual = expected
            else:
                hasher, _ = await asyncio.to_thread(_hash_file, target)
                actual = hasher.hexdigest()
            if actual != expected:
                return None  # stale or corrupt: download again; the rename replaces it
            return DownloadResult(
                model, target, ok=True, bytes=size, total_bytes=size, sha256=actual,
                verified=True, skipped=True,
            )  # fmt: skip
        total = await self._head_length(model)
        same = (
            total == size if total is not None else cache_fresh and cached.get("url") == model.url
        )
        if not same:
            return None
        sha = cached.get("sha256") if cache_fresh else None
        return DownloadResult(
            model, target, ok=True, bytes=size, total_bytes=size, sha256=sha, skipped=True
        )

    def _auth_headers(self, url: str) -> dict[str, str]:
        host = urlsplit(url).hostname or ""
        if self.token and _host_matches(host, self.token_hosts):
            return {"Authorization": f"Bearer {self.token}"}
        return {}

    def _auth_error(self, url: str, status: int) -> AuthError:
        message = f"authentication failed for {url}: {AUTH_HINT}"
        host = urlsplit(url).hostname or ""
        if self.token is None:
            message += f" [HTTP {status}; no token given: set HF_TOKEN or --token-file]"
        elif not _host_matches(host, self.token_hosts):
            message += f" [HTTP {status}; the token was not sent: {host} is not a token host]"
        else:
            message += f" [HTTP {status}]"
        return AuthError(message)

    async def _head_length(self, model: ModelFile) -> int | None:
        """Content-Length of the file per a HEAD request; None when unknown or failing."""
        assert self.client is not None, "use Downloader as an async context manager"
        headers = {"Accept-Encoding": "identity", **self._auth_headers(model.url)}
        try:
            response = await self.client.head(model.url, headers=headers, follow_redirects=False)
            # Hugging Face answers a redirect to its CDN carrying the file's size
            linked = _int_header(response, "x-linked-size")
            if linked is not None:
                return linked
            if response.is_redirect:
                response = await self.client.head(model.url, headers=headers, follow_redirects=True)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return _int_header(response, "content-length")

    def _delay(self, attempt: int, server_delay: float | None) -> float:
        delay = min(self.max_backoff_seconds, self.backoff_seconds * 2.0 ** (attempt - 1))
        delay *= 0.5 + random.random() / 2
        if server_delay is not None:
            delay = max(delay, min(server_delay, self.max_backoff_seconds))
        return delay

    async def _fetch(self, model: ModelFile, target: Path, part: _Part) -> DownloadResult:
        expected = model.sha256.lower() if model.sha256 else None
        part.validator = self._read_summary(model).get("partValidator") if part.size() else None
        failures = 0
        restarted_after_mismatch = False
        while True:
            before = part.size()
            try:
                total = await self._attempt(model, part)
            except _Retry as exc:
                failures = 1 if part.size() > before else failures + 1
                if failures >= self.max_attempts:
                    raise DownloadError(
                        f"giving up on {model.url} after {failures} failed attempts: {exc}"
                    ) from None
                delay = self._delay(failures, exc.delay)
                self.emit(
                    {
                        "event": "retry",
                        "name": model.name,
                        "attempt": failures,
                        "delaySeconds": round(delay, 3),
                        "message": str(exc),
                    }
                )
                await asyncio.sleep(delay)
                continue
            actual = part.hasher.hexdigest()
            if expected is not None and actual != expected:
                resumed = part.resumed
                part.reset()  # corrupt: never resume it
                if resumed and not restarted_after_mismatch:
                    restarted_after_mismatch = True
                    self.emit(
                        {
                            "event": "retry",
                            "name": model.name,
                            "attempt": 0,
                            "delaySeconds": 0,
                            "message": "sha256 mismatch after a resumed download; "
                            "downloading again from the start",
                        }
                    )
                    continue
                raise ChecksumError(
                    f"sha256 mismatch for {model.name} from {model.url}: expected {expected}, "
                    f"got {actual}; the corrupt download was deleted"
                )
            os.replace(part.path, target)
            await asyncio.to_thread(_fsync_dir, target.parent)
            return DownloadResult(
                model, target, ok=True, bytes=total, total_bytes=total, sha256=actual,
                verified=expected is not None,
            )  # fmt: skip

    async def _attempt(self, model: ModelFile, part: _Part) -> int:
        """One GET. Returns the total size once the part holds the whole file."""
        assert self.client is not None, "use Downloader as an async context manager"
        offset = await asyncio.to_thread(part.catch_up)
        headers = {"Accept-Encoding": "identity", **self._auth_headers(model.url)}
        if offset:
            headers["Range"] = f"bytes={offset}-"
            if part.validator:
                headers["If-Range"] = part.validator
        try:
            async with self.client.stream(
                "GET", model.url, headers=headers, follow_redirects=True
            ) as response:
                return await self._receive(model, part, offset, response)
        except httpx.TransportError as exc:
            raise _Retry(f"{type(exc).__name__}: {exc or 'connection failed'}") from exc

    async def _receive(
        self, model: ModelFile, part: _Part, offset: int, response: httpx.Response
    ) -> int:
        status = response.status_code
        if status in (401, 403):
            raise self._auth_error(model.url, status)
        if status in (404, 410):
            raise NotFoundError(f"not found: {model.url} [HTTP {status}]")
        if status == 429 or status >= 500:
            raise _Retry(f"HTTP {status} from {model.url}", _retry_after(response))
        if status == 416:
            _, total = _content_range(response.headers.get("content-range"))
            if offset and total == offset:
                return total  # the part is already complete
            part.reset()
            raise _Retry(f"HTTP 416 for a part of {offset} bytes; restarting from zero", 0)
        if status not in (200, 206):
            raise DownloadError(f"unexpected HTTP {status} for {model.url}")
        encoding = response.headers.get("content-encoding", "identity").lower()
        if encoding not in ("", "identity"):
            raise DownloadError(f"{model.url} came {encoding}-encoded; cannot store it verbatim")

        mode: Literal["ab", "wb"] = "ab"
        if status == 206:
            start, total = _content_range(response.headers.get("content-range"))
            if start != offset:
                part.reset()
                raise _Retry(f"server sent a range from {start}, not {offset}; restarting", 0)
            part.resumed = part.resumed or offset > 0
        else:
            total = _int_header(response, "content-length")
            if offset:  # the server ignored Range (or the file changed: If-Range): start over
                part.reset()
                offset = 0
            mode = "wb"
            part.validator = _validator(response)
            self._write_summary(
                model,
                DownloadResult(model, part.path, ok=False, bytes=0, total_bytes=total),
                part.validator,
            )
        if total is not None:
            self._check_space(part.path.parent, total - offset)

        received = offset
        last_report = time.monotonic()
        self.emit({"event": "progress", "name": model.name, "bytes": received, "totalBytes": total})
        with part.path.open(mode) as f:
            async for chunk in response.aiter_raw(self.chunk_size):
                await asyncio.to_thread(part.append, f, chunk)
                received += len(chunk)
                now = time.monotonic()
                if now - last_report >= self.progress_interval:
                    last_report = now
                    self.emit(
                        {
                            "event": "progress",
                            "name": model.name,
                            "bytes": received,
                            "totalBytes": total,
                        }
                    )
            f.flush()
            await asyncio.to_thread(os.fsync, f.fileno())
        if total is not None and received != total:
            raise _Retry(f"connection closed at {received} of {total} bytes")
        self.emit({"event": "progress", "name": model.name, "bytes": received, "totalBytes": total})
        return received

    @staticmethod
    def _check_space(folder: Path, needed: int) -> None:
        free = shutil.disk_usage(folder).free
        if needed > free:
            raise DownloadError(
                f"not enough space in {folder}: {needed} bytes needed, {free} bytes free"
            )


async def download_models(
    dest: str | Path,
    models: Sequence[ModelFile],
    *,
    concurrency: int = 1,
    **options: Any,
) -> list[DownloadResult]:
    """Download ``models`` under ``dest`` with a fresh :class:`Downloader` (``options`` are its
    fields: ``token``, ``token_hosts``, ``max_attempts``, ``emit``, ...)."""
    async with Downloader(Path(dest), **options) as downloader:
        return await downloader.download_all(models, concurrency=concurrency)
