"""API keys and rate limits.

Keys come from `settings.api_keys_file`, one per line (blank lines and `#` comments ignored). The
file is re-read when it changes (Kubernetes updates a mounted Secret in place by swapping a
symlink), checked at most once a second. No file configured, or a file without keys: the proxy is
open (a warning is logged at start). A configured file that cannot be read: every request is
refused with 503 until it can (fail closed).

A client presents its key as `Authorization: Bearer <key>`, `X-API-Key: <key>` or `?token=<key>`
(for WebSockets and the browser UI). A UI page opened with `?token=` is redirected to the same
address without it and gets an HttpOnly cookie (`scui_token`, path `/ui/`), which is accepted on
`/ui/...` only (elsewhere a cookie would invite cross-site requests).

Rate limit: a token bucket of `rate_limit_per_minute` per key (per client address without keys),
refilled continuously; past it 429 + Retry-After. The UI's static files are not counted (a page
load fetches dozens); its API calls and WebSocket are. `/healthz`, `/readyz` and `/metrics`
are never authenticated nor limited.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from serverless_comfyui.proxy.errors import ProxyError
from serverless_comfyui.proxy.incoming import TOKEN_QUERY

log = structlog.get_logger("proxy.auth")

OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})
TOKEN_COOKIE = "scui_token"
UI_PREFIX = "/ui/"


class ApiKeys:
    """The accepted keys, re-read when the file changes."""

    def __init__(self, path: Path | None, check_interval: float = 1.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._keys: tuple[bytes, ...] = ()
        self._signature: tuple[int, int, int] | None = None
        self._checked = -math.inf
        self._error: str | None = None
        self._refresh(force=True)

    @property
    def enabled(self) -> bool:
        """Whether requests must present a key (or are refused, when the file is unreadable)."""
        self._refresh()
        return self._error is not None or bool(self._keys)

    @property
    def error(self) -> str | None:
        self._refresh()
        return self._error

    @property
    def count(self) -> int:
        self._refresh()
        return len(self._keys)

    def valid(self, key: str) -> bool:
        self._refresh()
        if self._error is not None:
            return False
        candidate = key.encode()
        found = False
        for known in self._keys:  # constant time per key, no early exit
            found |= hmac.compare_digest(candidate, known)
        return found

    def _refresh(self, force: bool = False) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if not force and now - self._checked < self.check_interval:
            return
        self._checked = now
        try:
            stat = os.stat(self.path)
            signature = (stat.st_mtime_ns, stat.st_ino, stat.st_size)
            if signature == self._signature and self._error is None:
                return
            text = self.path.read_text()
        except OSError as exc:
            if self._error is None:
                log.error("cannot read the API keys file", path=str(self.path), error=str(exc))
            self._error = f"API keys unavailable ({exc.strerror or exc})"
            return
        keys = tuple(
            line.strip().encode()
            for line in text.splitlines()
            if line.strip() and not line.strip().startswith("#")
        )
        changed = self._signature is not None
        self._signature, self._keys, self._error = signature, keys, None
        if changed:
            log.info("API keys reloaded", keys=len(keys))


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """Token buckets: `per_minute` requests a minute per identity, bursts up to `per_minute`."""

    def __init__(self, per_minute: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.per_minute = per_minute
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._pruned = clock()

    @property
    def enabled(self) -> bool:
        return self.per_minute > 0

    def take(self, identity: str) -> float | None:
        """None when allowed (a token is taken); else the seconds until one is available."""
        if not self.enabled:
            return None
        now = self.clock()
        self._prune(now)
        bucket = self._buckets.get(identity)
        if bucket is None:
            bucket = self._buckets[identity] = _Bucket(float(self.per_minute), now)
        refilled = bucket.tokens + (now - bucket.updated) * self.rate
        bucket.tokens = min(float(self.per_minute), refilled)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / self.rate

    def _prune(self, now: float) -> None:
        """Forget buckets that have refilled completely (bounded memory)."""
        if now - self._pruned < 60.0:
            return
        self._pruned = now
        full = 60.0
        for identity in [i for i, b in self._buckets.items() if now - b.updated > full]:
            del self._buckets[identity]


def presented_key(request: web.BaseRequest) -> tuple[str | None, str | None]:
    """(key, where it came from) of a request."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip(), "bearer"
    if request.headers.get("X-API-Key", "").strip():
        return request.headers["X-API-Key"].strip(), "header"
    if request.rel_url.query.get(TOKEN_QUERY):
        return request.rel_url.query[TOKEN_QUERY], "query"
    if request.path.startswith(UI_PREFIX) and request.cookies.get(TOKEN_COOKIE):
        return request.cookies[TOKEN_COOKIE], "cookie"
    return None, None


def _is_ui_static(request: web.BaseRequest) -> bool:
    """A UI request for a static file (not the UI's API or WebSocket)."""
    parts = request.path.split("/", 3)  # ["", "ui", model, rest]
    if len(parts) < 3 or parts[1] != "ui":
        return False
    rest = parts[3] if len(parts) > 3 else ""
    return not (rest == "ws" or rest.startswith("api/") or rest == "api")


def _identity(request: web.BaseRequest, key: str | None) -> str:
    if key is not None:
        return "key:" + hashlib.sha256(key.encode()).hexdigest()[:16]
    return "addr:" + (request.remote or "unknown")


def auth_middleware(keys: ApiKeys, limiter: RateLimiter) -> Middleware:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS:
            return await handler(request)
        key, source = presented_key(request)
        if keys.enabled:
            if keys.error is not None:
                raise ProxyError(503, "auth_unavailable", keys.error, retry_after=5)
            if key is None:
                raise ProxyError(
                    401,
                    "unauthorized",
                    "an API key is required: send 'Authorization: Bearer <key>', "
                    "'X-API-Key: <key>' or ?token=<key>",
                    headers={"WWW-Authenticate": 'Bearer realm="serverless-comfyui"'},
                )
            if not keys.valid(key):
                raise ProxyError(
                    401,
                    "unauthorized",
                    f"invalid API key (from the {source})",
                    headers={"WWW-Authenticate": 'Bearer realm="serverless-comfyui"'},
                )
        if not _is_ui_static(request):
            wait = limiter.take(_identity(request, key if keys.enabled else None))
            if wait is not None:
                raise ProxyError(
                    429,
                    "rate_limited",
                    f"rate limit of {limiter.per_minute} requests per minute exceeded",
                    retry_after=wait,
                )
        if (
            keys.enabled
            and key is not None
            and source == "query"
            and request.path.startswith(UI_PREFIX)
            and request.method == "GET"
            and request.headers.get("Upgrade", "").lower() != "websocket"
        ):
            # Keep the key out of the address bar and of later requests' URLs.
            clean = request.rel_url.without_query_params(TOKEN_QUERY)
            response = web.HTTPFound(location=str(clean))
            secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
            response.set_cookie(
                TOKEN_COOKIE, key, path=UI_PREFIX, httponly=True, samesite="Lax", secure=secure
            )
            raise response
        return await handler(request)

    return middleware
