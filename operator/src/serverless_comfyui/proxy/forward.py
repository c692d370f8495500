"""Talking to ComfyUI pods: header hygiene, buffered calls and streamed relays.

Requests to a pod drop hop-by-hop headers, the client's `Host`, `Origin` and `Referer` (ComfyUI
answers 403 when `Origin` does not match its own host; `Referer` may carry `?token=`), the
proxy's credentials and model header, and the proxy's own cookies; they gain
`X-Forwarded-For/Proto/Host`. Answers drop hop-by-hop headers too.

Failures become JSON: a pod that cannot be reached is 502 (`pod_unreachable`), a pod that does
not answer within `upstream_timeout_seconds` is 504.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from serverless_comfyui.proxy.errors import ProxyError
from serverless_comfyui.proxy.registry import PodState

log = structlog.get_logger("proxy")

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
REQUEST_DROP = HOP_BY_HOP | {
    "host",
    "content-length",
    "content-type",
    "expect",
    "origin",
    "referer",
    "authorization",
    "x-api-key",
    "x-model",
    "cookie",
    # WebSocket handshake headers: aiohttp's client writes its own.
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-extensions",
    "sec-websocket-accept",
}
RESPONSE_DROP = HOP_BY_HOP | {"content-length"}
PROXY_COOKIE_PREFIX = "scui_"


class UpstreamError(ProxyError):
    """A pod could not be reached (or did not answer in time)."""

    def __init__(self, pod: PodState, status: int, kind: str, message: str) -> None:
        super().__init__(status, kind, message)
        self.pod = pod


def _connection_tokens(headers: Mapping[str, str]) -> set[str]:
    value = headers.get("Connection", "")
    return {token.strip().lower() for token in value.split(",") if token.strip()}


def _client_cookies(header: str) -> str:
    """The Cookie header without the proxy's own cookies (API token, pod pinning)."""
    kept = [
        part.strip()
        for part in header.split(";")
        if part.strip() and not part.strip().startswith(PROXY_COOKIE_PREFIX)
    ]
    return "; ".join(kept)


def upstream_headers(request: web.BaseRequest, content_type: str | None = None) -> CIMultiDict[str]:
    """Headers to send to a pod for `request`."""
    drop = REQUEST_DROP | _connection_tokens(request.headers)
    out: CIMultiDict[str] = CIMultiDict(
        (key, value) for key, value in request.headers.items() if key.lower() not in drop
    )
    cookies = _client_cookies(request.headers.get("Cookie", ""))
    if cookies:
        out["Cookie"] = cookies
    if content_type:
        out["Content-Type"] = content_type
    peer = request.remote or ""
    previous = request.headers.get("X-Forwarded-For")
    out["X-Forwarded-For"] = f"{previous}, {peer}" if previous and peer else previous or peer
    out["X-Forwarded-Proto"] = request.headers.get("X-Forwarded-Proto", request.scheme)
    out["X-Forwarded-Host"] = request.headers.get("X-Forwarded-Host", request.host)
    return out


def response_headers(headers: Mapping[str, str], *, decoded: bool) -> CIMultiDict[str]:
    drop = RESPONSE_DROP | _connection_tokens(headers)
    if decoded:
        drop = drop | {"content-encoding"}
    return CIMultiDict((k, v) for k, v in headers.items() if k.lower() not in drop)


def _failure(pod: PodState, exc: BaseException) -> UpstreamError:
    if isinstance(exc, TimeoutError):
        return UpstreamError(
            pod, 504, "upstream_timeout", f"ComfyUI pod {pod.name} did not answer in time"
        )
    return UpstreamError(
        pod, 502, "pod_unreachable", f"ComfyUI pod {pod.name} is unreachable: {exc or type(exc)}"
    )


UPSTREAM_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


@dataclass
class Reply:
    """A buffered answer of a pod."""

    status: int
    body: bytes
    headers: CIMultiDictProxy[str]

    def json(self) -> Any:
        try:
            return json.loads(self.body) if self.body else None
        except ValueError:
            return None

    def response(self) -> web.Response:
        """The pod's answer, unchanged, for the client."""
        return web.Response(
            status=self.status,
            body=self.body,
            headers=response_headers(self.headers, decoded=True),
        )


class Upstream:
    """Calls to ComfyUI pods through the proxy's one shared ClientSession."""

    def __init__(self, session: aiohttp.ClientSession, timeout_seconds: float) -> None:
        self.session = session
        self.timeout = aiohttp.ClientTimeout(total=timeout_seconds, sock_connect=10)

    async def call(
        self,
        pod: PodState,
        method: str,
        url: URL | str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout_seconds: float | None = None,
    ) -> Reply:
        """One request to `pod`, answer buffered. Raises UpstreamError (502/504)."""
        client_timeout = (
            self.timeout
            if timeout_seconds is None
            else aiohttp.ClientTimeout(total=timeout_seconds)
        )
        try:
            async with self.session.request(
                method,
                pod.url + str(url),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                timeout=client_timeout,
            ) as answer:
                data = await answer.read()
                return Reply(answer.status, data, answer.headers)
        except UPSTREAM_ERRORS as exc:
            raise _failure(pod, exc) from exc

    async def relay(
        self,
        request: web.Request,
        pod: PodState,
        url: URL | str,
        *,
        headers: Mapping[str, str],
        body: bytes | None = None,
        accept: Callable[[int], bool] | None = None,
        rewrite_location: Callable[[str], str] | None = None,
        before_prepare: Callable[[web.StreamResponse], None] | None = None,
    ) -> web.StreamResponse | None:
        """Stream the pod's answer to the client, unchanged (still compressed if it was).
        When `accept` says no to the pod's status, nothing is sent and None is returned;
        `before_prepare` may add headers (cookies) before the answer starts."""
        response: web.StreamResponse | None = None
        try:
            async with self.session.request(
                request.method,
                pod.url + str(url),
                headers=headers,
                data=body if body else None,
                allow_redirects=False,
                auto_decompress=False,
                timeout=self.timeout,
            ) as answer:
                if accept is not None and not accept(answer.status):
                    return None
                out_headers = response_headers(answer.headers, decoded=False)
                if rewrite_location is not None and "Location" in out_headers:
                    out_headers["Location"] = rewrite_location(out_headers["Location"])
                response = web.StreamResponse(
                    status=answer.status, reason=answer.reason, headers=out_headers
                )
                if answer.content_length is not None:
                    response.content_length = answer.content_length
                if before_prepare is not None:
                    before_prepare(response)
                await response.prepare(request)
                async for chunk in answer.content.iter_chunked(256 * 1024):
                    await response.write(chunk)
                await response.write_eof()
                return response
        except UPSTREAM_ERRORS as exc:
            if response is None or not response.prepared:
                raise _failure(pod, exc) from exc
            # Too late for an error answer: cut the connection so the client sees it broke.
            log.warning("relay broken mid-answer", pod=pod.name, error=str(exc) or type(exc))
            if request.transport is not None:
                request.transport.close()
            return response

    async def json_from_all(
        self, pods: list[PodState], method: str, url: URL | str, body: bytes | None = None
    ) -> list[tuple[PodState, Reply | UpstreamError]]:
        """The same call to every pod, concurrently; failures are returned, not raised."""

        async def one(pod: PodState) -> tuple[PodState, Reply | UpstreamError]:
            headers = {"Content-Type": "application/json"} if body else None
            try:
                return pod, await self.call(pod, method, url, headers=headers, body=body)
            except UpstreamError as exc:
                log.warning("pod call failed", pod=pod.name, url=str(url), error=exc.message)
                return pod, exc

        return list(await asyncio.gather(*(one(pod) for pod in pods)))
