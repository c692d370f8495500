"""HTTP plumbing shared by the API's sub-applications: the service key, the error middleware,
request identity, the public base URL and JSON bodies."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from serverless_comfyui.api.errors import ApiError, invalid, issue
from serverless_comfyui.api.service import ApiService
from serverless_comfyui.api.store import StoreError

SERVICE = web.AppKey("scui_api_service", ApiService)
V1_APP = web.AppKey("scui_api_v1_app", web.Application)
"""The /v1 sub-application (its mount prefix gives the base of result URLs)."""


def service_of(request: web.Request) -> ApiService:
    return request.app[SERVICE]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return exc.response()
    except StoreError as exc:
        return ApiError(
            503, "store_unavailable", f"the task store is unavailable: {exc}", retry_after=5
        ).response()
    except web.HTTPRequestEntityTooLarge as exc:
        return ApiError(413, "body_too_large", exc.text or "request body too large").response()
    except web.HTTPMethodNotAllowed as exc:
        allowed = ", ".join(sorted(exc.allowed_methods))
        return ApiError(
            405,
            "method_not_allowed",
            f"{request.method} is not allowed here (allowed: {allowed})",
            headers={"Allow": allowed},
        ).response()
    except web.HTTPNotFound:
        return ApiError(404, "not_found", f"no such endpoint: {request.path}").response()


async def not_found(request: web.Request) -> web.StreamResponse:
    """Catch-all of a sub-application: unknown paths under its prefix never fall through to
    the proxy's ComfyUI passthrough."""
    raise ApiError(404, "not_found", f"no such endpoint: {request.method} {request.path}")


def client_identity(request: web.Request) -> str:
    """A stable, non-reversible name for the caller's API key ("anonymous" without one)."""
    authorization = request.headers.get("Authorization", "")
    scheme, _, value = authorization.partition(" ")
    key = value.strip() if scheme.lower() == "bearer" else ""
    key = key or request.headers.get("X-API-Key", "").strip() or request.query.get("token", "")
    if not key:
        return "anonymous"
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]


def public_base(request: web.Request) -> str:
    """The API's public base URL, e.g. https://host/v1."""
    service = service_of(request)
    configured = service.settings.public_base_url
    if configured:
        origin = configured.rstrip("/")
    else:
        proto = request.headers.get("X-Forwarded-Proto", request.scheme).split(",")[0].strip()
        host = request.headers.get("X-Forwarded-Host", request.host).split(",")[0].strip()
        origin = f"{proto}://{host}"
    v1 = request.app.get(V1_APP) or request.app
    spec_path = str(v1.router["openapi"].url_for())
    return origin + spec_path.removesuffix("/openapi.json")


async def read_body(request: web.Request) -> bytes:
    """The body, refusing more than the setting max_body_bytes with 413 (a sub-application's
    own client_max_size does not apply: aiohttp uses the root application's)."""
    limit = service_of(request).settings.max_body_bytes
    too_large = ApiError(413, "body_too_large", f"the request body exceeds {limit} bytes")
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


async def read_json(request: web.Request) -> Any:
    raw = await read_body(request)
    if not raw.strip():
        raise invalid([issue("", "body", "a JSON body is required")])
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise invalid([issue("", "json", f"the body is not valid JSON: {exc}")]) from exc


def json_response(
    body: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.json_response(
        body, status=status, headers=headers, dumps=lambda v: json.dumps(v, ensure_ascii=False)
    )
