"""The proxy's pure parts: where the model comes from and how it is removed, output prefixes,
API keys reloaded from their file, token buckets."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from multidict import CIMultiDict

from serverless_comfyui.proxy import ids
from serverless_comfyui.proxy.auth import ApiKeys, RateLimiter
from serverless_comfyui.proxy.errors import ProxyError
from serverless_comfyui.proxy.incoming import join_multipart, parse, split_multipart
from serverless_comfyui.proxy.routes_comfy import prefix_outputs

FORM = "application/x-www-form-urlencoded"


def request(method: str, path: str, content_type: str | None = None, **headers: str) -> web.Request:
    all_headers = CIMultiDict(headers)
    if content_type:
        all_headers["Content-Type"] = content_type
    return make_mocked_request(method, path, headers=all_headers)


def multipart(boundary: str, fields: list[tuple[str, str | None, bytes]]) -> bytes:
    parts = []
    for name, filename, content in fields:
        disposition = f'form-data; name="{name}"'
        if filename:
            disposition += f'; filename="{filename}"'
        parts.append(f"Content-Disposition: {disposition}\r\n\r\n".encode() + content)
    return join_multipart(parts, boundary.encode())


def test_json_body_with_form_content_type_as_curl_sends_it_even_on_get() -> None:
    # curl -X GET <proxy>/openai/api/system_stats -d '{"model": "serverless-comfyui"}'
    req = request("GET", "/openai/api/system_stats?x=1", FORM)
    inc = parse(req, b'{"model": "serverless-comfyui"}', "/api/system_stats")
    assert (inc.model, inc.source) == ("serverless-comfyui", "json")
    assert inc.body == b"" and inc.content_type is None  # nothing left for ComfyUI
    assert str(inc.url) == "/api/system_stats?x=1"


def test_json_model_removed_and_rest_kept() -> None:
    req = request("POST", "/prompt", "application/json")
    body = {"model": "flux", "prompt": {"1": {}}, "client_id": "c"}
    inc = parse(req, b"  " + json.dumps(body).encode(), "/prompt")
    assert inc.model == "flux"
    assert json.loads(inc.body) == {"prompt": {"1": {}}, "client_id": "c"}
    assert inc.content_type == "application/json"


def test_multipart_model_field_cut_out_byte_for_byte() -> None:
    png = b"\x89PNG\r\n\x1a\n--not-a-boundary\r\n" + bytes(range(256))
    body = multipart(
        "XyZ",
        [
            ("image", "test.png", png),
            ("model", None, b"serverless-comfyui"),
            ("overwrite", None, b"true"),
        ],
    )
    req = request("POST", "/api/upload/image", "multipart/form-data; boundary=XyZ")
    inc = parse(req, body, "/api/upload/image")
    assert (inc.model, inc.source) == ("serverless-comfyui", "multipart")
    parts = split_multipart(inc.body, b"XyZ")
    assert parts is not None and len(parts) == 2
    assert parts[0].endswith(png) and b'name="model"' not in inc.body
    assert inc.content_type == "multipart/form-data; boundary=XyZ"


def test_query_and_header_and_form_sources_and_their_order() -> None:
    inc = parse(request("GET", "/queue?model=a&token=secret&keep=1"), b"", "/queue")
    assert (inc.model, inc.source) == ("a", "query")
    assert str(inc.url) == "/queue?keep=1"  # model and token never reach ComfyUI
    inc = parse(request("GET", "/queue", **{"X-Model": "b"}), b"", "/queue")
    assert (inc.model, inc.source) == ("b", "header")
    inc = parse(request("POST", "/free", FORM), b"model=c&free_memory=true", "/free")
    assert (inc.model, inc.source, inc.body) == ("c", "form", b"free_memory=true")
    # The body wins over the query, the query over the header.
    req = request("POST", "/prompt?model=q", "application/json", **{"X-Model": "h"})
    assert parse(req, b'{"model": "j"}', "/prompt").model == "j"
    assert parse(request("GET", "/x?model=q", **{"X-Model": "h"}), b"", "/x").model == "q"
    assert parse(request("GET", "/x"), b"", "/x").model is None


@pytest.mark.parametrize(
    ("body", "kind"),
    [(b'{"model": "flux", "prompt": ', "invalid_json"), (b'{"model": 3}', "bad_request")],
)
def test_bad_bodies_are_400_not_forwarded(body: bytes, kind: str) -> None:
    with pytest.raises(ProxyError) as raised:
        parse(request("POST", "/prompt", "application/json"), body, "/prompt")
    assert raised.value.status == 400 and raised.value.kind == kind


def test_output_prefixes_carry_the_prompt_id() -> None:
    prompt_id = ids.mint("flux", "flux-0")
    graph: dict[str, Any] = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
        "2": {"class_type": "SaveImage", "inputs": {"filename_prefix": "flux/ComfyUI"}},
        "3": {"class_type": "SaveImage", "inputs": {"filename_prefix": ["4", 0]}},
    }
    out = prefix_outputs(graph, prompt_id)
    assert out["2"]["inputs"]["filename_prefix"] == f"{prompt_id}/flux/ComfyUI"
    assert out["3"]["inputs"]["filename_prefix"] == ["4", 0]  # a link, not a string
    assert graph["2"]["inputs"]["filename_prefix"] == "flux/ComfyUI"  # the original is kept
    assert prefix_outputs(out, prompt_id) == out  # idempotent (a retried body)


def test_api_keys_reload_when_the_file_changes(tmp_path: Path) -> None:
    path = tmp_path / "keys"
    path.write_text("# keys\nk1\n\n k2 \n")
    keys = ApiKeys(path, check_interval=0)
    assert keys.enabled and keys.valid("k1") and keys.valid("k2") and not keys.valid("k3")
    # Kubernetes swaps the mounted Secret's symlink: a new file replaces the old one.
    new = tmp_path / "keys.new"
    new.write_text("k3\n")
    os.replace(new, path)
    assert keys.valid("k3") and not keys.valid("k1")
    path.unlink()
    assert keys.enabled and keys.error is not None and not keys.valid("k3")  # fails closed
    assert not ApiKeys(None).enabled
    empty = tmp_path / "empty"
    empty.write_text("\n")
    assert not ApiKeys(empty).enabled


def test_token_bucket_allows_the_rate_and_says_when_to_retry() -> None:
    now = [0.0]
    limiter = RateLimiter(60, clock=lambda: now[0])
    assert all(limiter.take("a") is None for _ in range(60))
    wait = limiter.take("a")
    assert wait is not None and 0.9 < wait <= 1.0
    assert limiter.take("b") is None  # per identity
    now[0] += 1.0
    assert limiter.take("a") is None and limiter.take("a") is not None
    assert RateLimiter(0).take("a") is None  # 0: unlimited
