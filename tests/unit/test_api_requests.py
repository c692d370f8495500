"""Request validation of the generation API (no pod, no store): 422 issues name the field and
the rule; defaults (workflow per application, delivery per mode) are applied."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from api_harness import fast_settings, flux_body
from serverless_comfyui.api.errors import ApiError
from serverless_comfyui.api.requests import (
    Caller,
    graph_problems,
    prepare_comfyui,
    prepare_generate,
)
from serverless_comfyui.proxy.registry import Registry
from serverless_comfyui.workflows import load_library

LIBRARY = load_library()
CALLER = Caller(client="anonymous", base_url="http://h/v1")


def registry() -> Registry:
    reg = Registry()
    reg.ensure("flux")
    reg.ensure("schnell")
    return reg


def issues(body: Any, tmp_path: Path, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(ApiError) as info:
        prepare_generate(
            body,
            caller=kwargs.pop("caller", CALLER),
            registry=registry(),
            library=LIBRARY,
            settings=fast_settings(tmp_path, "file:///tmp/x"),
            **kwargs,
        )
    assert info.value.status == 422
    return [(e["field"], e["rule"]) for e in info.value.errors]


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    body = flux_body(width=4000, height=100, steps=0, promt="x", output={"format": "bmp"})
    found = issues(body, tmp_path)
    assert ("width", "max") in found and ("height", "min") in found
    assert ("steps", "min") in found and ("promt", "unknown") in found
    assert ("output.format", "enum") in found


def test_body_and_key_shapes(tmp_path: Path) -> None:
    assert issues([1, 2], tmp_path) == [("", "body")]
    bad_key = Caller(client="anonymous", base_url="x", idempotency_key="\x00")
    assert ("Idempotency-Key", "format") in issues(flux_body(), tmp_path, caller=bad_key)


def test_defaults_workflow_per_application_and_delivery_per_mode(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, "file:///tmp/x", model_workflows={"schnell": "flux_schnell"})
    sync = prepare_generate(
        flux_body(), caller=CALLER, registry=registry(), library=LIBRARY, settings=settings
    )
    assert sync.mode == "sync" and sync.task.workflow == "flux_dev_t5fp8"
    assert sync.task.output.delivery == "base64" and sync.task.seed == 7
    later = prepare_generate(
        flux_body(model="schnell", mode="async", seed=None),
        caller=CALLER,
        registry=registry(),
        library=LIBRARY,
        settings=settings,
    )
    assert later.task.workflow == "flux_schnell" and later.task.output.delivery == "url"
    assert isinstance(later.task.seed, int) and later.task.params["seed"] == later.task.seed
    chosen = prepare_generate(
        flux_body(),
        caller=CALLER,
        registry=registry(),
        library=LIBRARY,
        settings=settings,
        workflow_of=lambda model: "flux_dev_t5fp16",
    )
    assert chosen.task.workflow == "flux_dev_t5fp16"


def test_same_request_same_fingerprint(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, "file:///tmp/x")
    kwargs: dict[str, Any] = {
        "caller": CALLER,
        "registry": registry(),
        "library": LIBRARY,
        "settings": settings,
    }
    a = prepare_generate(flux_body(), **kwargs).task.fingerprint
    b = prepare_generate(dict(reversed(list(flux_body().items()))), **kwargs).task.fingerprint
    c = prepare_generate(flux_body(steps=5), **kwargs).task.fingerprint
    assert a == b != c


def test_comfyui_api_bodies(tmp_path: Path) -> None:
    settings = fast_settings(tmp_path, "file:///tmp/x")
    assert (
        graph_problems({"1": {"class_type": "EmptyImage", "inputs": {}}})[0]["rule"] == "no_output"
    )
    with pytest.raises(ApiError) as info:
        prepare_comfyui(
            {
                "prompt": {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}},
                "s3": {"bucket": "b"},
            },
            model="flux",
            caller=CALLER,
            registry=registry(),
            settings=settings,
        )
    assert [(e["field"], e["rule"]) for e in info.value.errors] == [("s3", "unsupported")]
    prepared = prepare_comfyui(
        {
            "prompt": {"9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x"}}},
            "webhook": "http://127.0.0.1/hook",
            "convert_output": {"format": "webp", "options": {"quality": 50}},
            "id": "r1",
        },
        model="flux",
        caller=CALLER,
        registry=registry(),
        settings=settings,
    )
    assert prepared.mode == "async" and prepared.task.external_id == "r1"
    assert prepared.task.output.format == "webp" and prepared.task.output.quality == 50
    assert prepared.task.webhook is not None and prepared.task.webhook.format == "comfyui-api"
