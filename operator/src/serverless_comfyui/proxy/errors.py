"""The proxy's own error answers: JSON shaped like ComfyUI's, `{"error": {"type", "message"}}`.

Handlers raise `ProxyError`; the error middleware (app.py) turns it into the JSON answer. Errors
that come from ComfyUI itself (e.g. a 400 with `error` and `node_errors`) are never wrapped: they
are relayed unchanged.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from aiohttp import web


class ProxyError(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.retry_after = retry_after
        self.headers = dict(headers or {})

    def response(self) -> web.Response:
        return error_response(
            self.status, self.kind, self.message, retry_after=self.retry_after, headers=self.headers
        )


def error_response(
    status: int,
    kind: str,
    message: str,
    *,
    retry_after: float | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    out = dict(headers or {})
    if retry_after is not None:
        out["Retry-After"] = str(max(1, math.ceil(retry_after)))
    body = {"error": {"type": kind, "message": message}}
    return web.json_response(body, status=status, headers=out)


def bad_request(message: str, kind: str = "bad_request") -> ProxyError:
    return ProxyError(400, kind, message)


def not_found(message: str, kind: str = "not_found") -> ProxyError:
    return ProxyError(404, kind, message)
