"""What a client sent: the body (size-limited), the application it names, and what to forward.

Clients name the application (`model`, the FluxWorkflow's name) as kubeai's did, in this order:

1. the JSON body field `model`, whatever the Content-Type (`curl -d '{"model": ...}'` sends JSON
   as application/x-www-form-urlencoded, even on a GET);
2. a multipart form field `model` (uploads);
3. an urlencoded form field `model`;
4. the query parameter `?model=`;
5. the `X-Model` header.

The field is removed from every place before the request goes to ComfyUI: JSON is
re-serialized without it, the multipart part is cut out byte for byte (files are not re-encoded),
and the query parameter and header are dropped.
"""

from __future__ import annotations

import json
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.helpers import parse_mimetype
from aiohttp.multipart import parse_content_disposition
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from serverless_comfyui.proxy.errors import ProxyError, bad_request

MODEL_FIELD = "model"
MODEL_HEADER = "X-Model"
TOKEN_QUERY = "token"
MISSING_MODEL = (
    'name the application: a JSON body field "model" (e.g. -d \'{"model": "<app>"}\'), '
    'a multipart form field "model", the query parameter ?model=<app>, or the X-Model header'
)


@dataclass
class Incoming:
    """A parsed request. `body`, `content_type` and `url` are what to forward to ComfyUI."""

    model: str | None
    source: str | None
    """Where the model came from: json, multipart, form, query or header."""
    body: bytes
    content_type: str | None
    data: Any = None
    """The JSON body (without `model`) when the body is JSON, else None."""
    is_json: bool = False
    url: URL = field(default_factory=lambda: URL("/"))
    """Path and query to forward (without `/openai`, `model` and `token`)."""

    @property
    def json_object(self) -> dict[str, Any] | None:
        return self.data if self.is_json and isinstance(self.data, dict) else None

    def with_json(self, data: Any) -> None:
        """Replace the JSON body to forward."""
        self.data, self.is_json = data, True
        self.body = json.dumps(data, ensure_ascii=False).encode()
        self.content_type = "application/json"


async def read_body(request: web.BaseRequest, limit: int) -> bytes:
    """The whole request body, refusing more than `limit` bytes with 413 (JSON)."""
    too_large = ProxyError(
        413, "body_too_large", f"request body exceeds the proxy's limit of {limit} bytes"
    )
    if request.content_length is not None and request.content_length > limit:
        raise too_large
    if not request.body_exists:
        return b""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def _looks_like_json(body: bytes, mimetype: str) -> bool:
    head = body.lstrip()[:1]
    return head in (b"{", b"[") or (mimetype.endswith("json") and bool(head))


def _model_value(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise bad_request(f'"model" in the {where} must be a non-empty string (the app name)')
    return value.strip()


def split_multipart(body: bytes, boundary: bytes) -> list[bytes] | None:
    """The raw parts of a multipart body (each `headers CRLF CRLF content`), or None when the
    body is not multipart with this boundary. Parts keep their exact bytes."""
    delimiter = b"\r\n--" + boundary
    pieces = (b"\r\n" + body).split(delimiter)
    if len(pieces) < 2 or not pieces[-1].startswith(b"--"):
        return None
    parts = []
    for piece in pieces[1:-1]:
        line_end = piece.find(b"\r\n")
        if line_end < 0 or piece[:line_end].strip(b" \t"):
            return None
        parts.append(piece[line_end + 2 :])
    return parts


def join_multipart(parts: list[bytes], boundary: bytes) -> bytes:
    out = b"".join(b"--" + boundary + b"\r\n" + part + b"\r\n" for part in parts)
    return out + b"--" + boundary + b"--\r\n"


def part_field(part: bytes) -> tuple[str | None, bool, bytes]:
    """(form field name, whether it is a file, content) of one raw part."""
    head, _, content = part.partition(b"\r\n\r\n")
    name: str | None = None
    is_file = False
    for line in head.decode("latin-1").split("\r\n"):
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-disposition":
            _, params = parse_content_disposition(value.strip())
            name = params.get("name")
            is_file = "filename" in params or "filename*" in params
    return name, is_file, content


def _strip_multipart(body: bytes, boundary: str) -> tuple[str | None, bytes]:
    parts = split_multipart(body, boundary.encode("latin-1"))
    if parts is None:
        return None, body
    model: str | None = None
    kept = []
    for part in parts:
        name, is_file, content = part_field(part)
        if name == MODEL_FIELD and not is_file:
            if model is None:
                try:
                    model = _model_value(content.decode(), "multipart form")
                except UnicodeDecodeError as exc:
                    raise bad_request('the multipart field "model" is not UTF-8') from exc
            continue
        kept.append(part)
    if model is None:
        return None, body
    return model, join_multipart(kept, boundary.encode("latin-1"))


def parse(request: web.BaseRequest, body: bytes, raw_path: str) -> Incoming:
    """Find the model and prepare what to forward (to `raw_path` on the pod).

    A body that looks like JSON but does not parse is refused (400) here: ComfyUI would answer
    a bare 500."""
    content_type = request.headers.get("Content-Type")
    mime = parse_mimetype(content_type or "")
    mimetype = f"{mime.type}/{mime.subtype}".lower()
    incoming = Incoming(model=None, source=None, body=body, content_type=content_type)

    if _looks_like_json(body, mimetype):
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise bad_request(f"the request body is not valid JSON: {exc}", "invalid_json") from exc
        incoming.data, incoming.is_json = data, True
        if isinstance(data, dict) and MODEL_FIELD in data:
            incoming.model = _model_value(data.pop(MODEL_FIELD), "JSON body")
            incoming.source = "json"
            incoming.with_json(data)
    elif mimetype == "multipart/form-data" and "boundary" in mime.parameters:
        model, stripped = _strip_multipart(body, mime.parameters["boundary"])
        if model is not None:
            incoming.model, incoming.source, incoming.body = model, "multipart", stripped
    elif mimetype == "application/x-www-form-urlencoded" and body:
        try:
            pairs = urllib.parse.parse_qsl(body.decode(), keep_blank_values=True)
        except UnicodeDecodeError:
            pairs = []
        models = [value for key, value in pairs if key == MODEL_FIELD]
        if models:
            incoming.model = _model_value(models[0], "form")
            incoming.source = "form"
            kept = [(key, value) for key, value in pairs if key != MODEL_FIELD]
            incoming.body = urllib.parse.urlencode(kept).encode()

    query = request.rel_url.query
    if incoming.model is None and MODEL_FIELD in query:
        incoming.model, incoming.source = _model_value(query[MODEL_FIELD], "query"), "query"
    if incoming.model is None and MODEL_HEADER in request.headers:
        incoming.model = _model_value(request.headers[MODEL_HEADER], "X-Model header")
        incoming.source = "header"

    if request.method in ("GET", "HEAD") and incoming.json_object == {}:
        # Only the model was in it (the seed's GETs): ComfyUI's GET handlers read no body.
        incoming.body, incoming.content_type = b"", None
    incoming.url = forward_url(request, raw_path)
    return incoming


def forward_url(request: web.BaseRequest, raw_path: str) -> URL:
    """`raw_path` (still percent-encoded) with the request's query minus the proxy's own
    parameters (`model`, `token`)."""
    rest = request.rel_url.without_query_params(MODEL_FIELD, TOKEN_QUERY)
    return URL.build(path=raw_path, query_string=rest.raw_query_string, encoded=True)


def model_from_query_or_header(
    query: Any, headers: CIMultiDictProxy[str] | CIMultiDict[str]
) -> str | None:
    """The model of a request without a body (WebSocket upgrades)."""
    if MODEL_FIELD in query:
        return _model_value(query[MODEL_FIELD], "query")
    if MODEL_HEADER in headers:
        return _model_value(headers[MODEL_HEADER], "X-Model header")
    return None


def require_model(incoming_model: str | None) -> str:
    if incoming_model is None:
        raise bad_request(f"no application named: {MISSING_MODEL}", "missing_model")
    return incoming_model
