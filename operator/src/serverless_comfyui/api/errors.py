"""Error answers of the generation API: JSON `{"error": {"type", "message", "errors"?}}`, the
proxy's error shape, with `errors: [{field, rule, message}]` for invalid requests (422)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

Issue = dict[str, str]


def issue(field: str, rule: str, message: str) -> Issue:
    return {"field": field, "rule": rule, "message": message}


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        kind: str,
        message: str,
        *,
        errors: Sequence[Issue] | None = None,
        retry_after: float | None = None,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message
        self.errors = list(errors or [])
        self.retry_after = retry_after
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {"type": self.kind, "message": self.message}
        if self.errors:
            error["errors"] = self.errors
        return {"error": error, **self.extra}

    def response(self) -> web.Response:
        headers = dict(self.headers)
        if self.retry_after is not None:
            headers["Retry-After"] = str(max(1, math.ceil(self.retry_after)))
        return web.json_response(self.body(), status=self.status, headers=headers)


def invalid(errors: Sequence[Issue]) -> ApiError:
    """422 naming every field and rule that failed."""
    summary = "; ".join(f"{e['field'] or '<body>'}: {e['message']}" for e in errors[:10])
    if len(errors) > 10:
        summary += f"; and {len(errors) - 10} more"
    return ApiError(422, "invalid_request", summary, errors=errors)


def not_found(message: str, kind: str = "not_found") -> ApiError:
    return ApiError(404, kind, message)
