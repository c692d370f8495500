"""Parameter validation: every rejection names the field and the rule (an HTTP 422 body)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from serverless_comfyui.workflows import (
    LoraRef,
    ParameterError,
    Workflow,
    WorkflowLibrary,
    load_library,
)

LIBRARY_DIR = Path(__file__).resolve().parents[2] / "workflows"


@pytest.fixture(scope="module")
def library() -> WorkflowLibrary:
    return load_library(LIBRARY_DIR)


@pytest.fixture(scope="module")
def flux(library: WorkflowLibrary) -> Workflow:
    return library.get("flux_dev_t5fp8")


def errors_of(workflow: Workflow, params: Any, **kwargs: Any) -> list[tuple[str, str]]:
    with pytest.raises(ParameterError) as info:
        workflow.validate_params(params, **kwargs)
    assert info.value.workflow == workflow.name
    return [(e.field, e.rule) for e in info.value.errors]


def test_prompt_alone_gets_the_defaults(flux: Workflow) -> None:
    params = flux.validate_params({"prompt": "a lighthouse at dusk"})
    assert params.workflow == "flux_dev_t5fp8"
    assert params.values == {
        "prompt": "a lighthouse at dusk",
        "negative_prompt": "",
        "width": 1024,
        "height": 1024,
        "steps": 20,
        "guidance": 3.5,
        "seed": None,  # chosen at render time
        "sampler_name": "euler",
        "scheduler": "simple",
        "batch_size": 1,
        "loras": [],
    }
    assert params.supplied == {"prompt"}
    assert params.ignored == {}
    assert params.warnings == []


def test_the_seed_001_request_shape_is_accepted(flux: Workflow) -> None:
    body = {
        "prompt": "A beautiful landscape",
        "negative_prompt": "blurry, low quality",
        "width": 1024,
        "height": 768,
        "steps": 20,
        "cfg_scale": 3.5,
        "seed": 123456,
        "loras": [{"name": "product_style.safetensors", "weight": 0.8}],
    }
    params = flux.validate_params(body)
    assert params.values["height"] == 768
    assert params.values["guidance"] == 3.5
    assert params.values["seed"] == 123456
    assert params.values["loras"] == [LoraRef(name="product_style.safetensors", strength=0.8)]
    assert "negative_prompt" in params.ignored


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [("prompt", "required")]),
        ({"prompt": None}, [("prompt", "required")]),
        ({"prompt": ""}, [("prompt", "min_length")]),
        ({"prompt": "x" * 10001}, [("prompt", "max_length")]),
        ({"prompt": 42}, [("prompt", "type")]),
        ({"prompt": "x", "promt": "y"}, [("promt", "unknown")]),
        ({"prompt": "x", "filename_prefix": "mine"}, [("filename_prefix", "reserved")]),
        ({"prompt": "x", "width": "1024"}, [("width", "type")]),
        ({"prompt": "x", "width": True}, [("width", "type")]),
        ({"prompt": "x", "width": 1024.5}, [("width", "type")]),
        ({"prompt": "x", "width": 1000}, [("width", "multiple_of")]),
        ({"prompt": "x", "width": 128}, [("width", "min")]),
        ({"prompt": "x", "height": 4096}, [("height", "max")]),
        ({"prompt": "x", "steps": 0}, [("steps", "min")]),
        ({"prompt": "x", "steps": 101}, [("steps", "max")]),
        ({"prompt": "x", "guidance": "high"}, [("guidance", "type")]),
        ({"prompt": "x", "guidance": math.nan}, [("guidance", "type")]),
        ({"prompt": "x", "guidance": math.inf}, [("guidance", "type")]),
        ({"prompt": "x", "guidance": -1}, [("guidance", "min")]),
        ({"prompt": "x", "sampler_name": "warp_drive"}, [("sampler_name", "enum")]),
        ({"prompt": "x", "scheduler": "Karras"}, [("scheduler", "enum")]),
        ({"prompt": "x", "batch_size": 9}, [("batch_size", "max")]),
        ({"prompt": "x", "seed": -1}, [("seed", "min")]),
        ({"prompt": "x", "seed": 2**64}, [("seed", "max")]),
        ({"prompt": "x", "seed": "42"}, [("seed", "type")]),
        ({"prompt": "x", "seed": 1.5}, [("seed", "type")]),
        ({"prompt": "x", "negative_prompt": 3}, [("negative_prompt", "type")]),
        ({"prompt": "x", "guidance": 3, "cfg_scale": 4}, [("cfg_scale", "conflict")]),
    ],
)
def test_bad_values_name_field_and_rule(
    flux: Workflow, params: dict[str, Any], expected: list[tuple[str, str]]
) -> None:
    assert errors_of(flux, params) == expected


def test_all_problems_are_reported_together(flux: Workflow) -> None:
    found = errors_of(
        flux,
        {"width": 1000, "height": 8, "steps": "many", "colour": "red", "seed": -5},
    )
    assert sorted(found) == sorted(
        [
            ("colour", "unknown"),
            ("prompt", "required"),
            ("width", "multiple_of"),
            ("height", "min"),
            ("height", "multiple_of"),
            ("steps", "type"),
            ("seed", "min"),
        ]
    )


def test_error_is_ready_for_an_http_422_body(flux: Workflow) -> None:
    with pytest.raises(ParameterError) as info:
        flux.validate_params({"prompt": "x", "promt": "y", "width": 4000})
    body = info.value.as_dicts()
    assert json.loads(json.dumps(body)) == body
    assert body[0] == {
        "field": "promt",
        "rule": "unknown",
        "message": body[0]["message"],
    }
    assert "did you mean 'prompt'" in body[0]["message"]
    assert body[1] == {"field": "width", "rule": "max", "message": "must be <= 2048"}
    assert "promt" in str(info.value) and "flux_dev_t5fp8" in str(info.value)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("body", [None, [], "prompt", 3])
def test_the_body_must_be_an_object(flux: Workflow, body: Any) -> None:
    assert errors_of(flux, body) == [("", "body")]


def test_integral_floats_are_integers(flux: Workflow) -> None:
    params = flux.validate_params({"prompt": "x", "width": 768.0, "seed": 7.0})
    assert params.values["width"] == 768 and isinstance(params.values["width"], int)
    assert params.values["seed"] == 7 and isinstance(params.values["seed"], int)


def test_null_means_default(flux: Workflow) -> None:
    params = flux.validate_params({"prompt": "x", "steps": None, "seed": None, "loras": None})
    assert params.values["steps"] == 20
    assert params.values["seed"] is None
    assert params.values["loras"] == []
    assert params.supplied == {"prompt"}
    # a null alias does not conflict with the canonical name
    params = flux.validate_params({"prompt": "x", "guidance": 2, "cfg_scale": None})
    assert params.values["guidance"] == 2 and params.warnings == []


def test_seed_bounds_come_from_object_info(flux: Workflow) -> None:
    assert flux.validate_params({"prompt": "x", "seed": 0}).values["seed"] == 0
    top = 18446744073709551615  # RandomNoise.noise_seed max in ComfyUI 0.8.0
    assert flux.validate_params({"prompt": "x", "seed": top}).values["seed"] == top


def test_cfg_scale_is_applied_as_flux_guidance_and_says_so(flux: Workflow) -> None:
    params = flux.validate_params({"prompt": "x", "cfg_scale": 4.5})
    assert params.values["guidance"] == 4.5
    assert params.supplied == {"prompt", "guidance"}
    assert len(params.warnings) == 1
    assert "'cfg_scale' was applied as 'guidance'" in params.warnings[0]
    assert errors_of(flux, {"prompt": "x", "cfg_scale": 31}) == [("cfg_scale", "max")]


def test_negative_prompt_is_reported_not_dropped(flux: Workflow) -> None:
    params = flux.validate_params({"prompt": "x", "negative_prompt": "blurry"})
    assert list(params.ignored) == ["negative_prompt"]
    assert "no negative conditioning" in params.ignored["negative_prompt"]
    assert any(w.startswith("'negative_prompt' was ignored") for w in params.warnings)


def test_empty_negative_prompt_is_nothing_to_report(flux: Workflow) -> None:
    params = flux.validate_params({"prompt": "x", "negative_prompt": ""})
    assert params.ignored == {} and params.warnings == []


def test_strict_mode_rejects_what_cannot_be_honoured(flux: Workflow) -> None:
    assert errors_of(flux, {"prompt": "x", "negative_prompt": "blurry"}, strict=True) == [
        ("negative_prompt", "unsupported")
    ]
    # honoured parameters and empty ignored ones are fine in strict mode
    flux.validate_params({"prompt": "x", "negative_prompt": "", "steps": 4}, strict=True)


def test_schnell_reports_guidance_and_cfg_scale_as_ignored(library: WorkflowLibrary) -> None:
    schnell = library.get("flux_schnell")
    params = schnell.validate_params({"prompt": "x", "cfg_scale": 7.5, "negative_prompt": "y"})
    assert set(params.ignored) == {"cfg_scale", "negative_prompt"}
    assert not any("applied as" in w for w in params.warnings)
    assert params.values["steps"] == 4


@pytest.mark.parametrize(
    ("loras", "expected"),
    [
        ("style.safetensors", [("loras", "type")]),
        ([{"strength": 1}], [("loras[0].name", "required")]),
        ([{"name": 5}], [("loras[0].name", "type")]),
        ([{"name": "../../etc/passwd.safetensors"}], [("loras[0].name", "format")]),
        ([{"name": "/abs/style.safetensors"}], [("loras[0].name", "format")]),
        ([{"name": "product_style"}], [("loras[0].name", "format")]),
        ([{"name": "a.safetensors", "strength": "strong"}], [("loras[0].strength", "type")]),
        ([{"name": "a.safetensors", "strength": 11}], [("loras[0].strength", "max")]),
        ([{"name": "a.safetensors", "weight": -11}], [("loras[0].weight", "min")]),
        (
            [{"name": "a.safetensors", "weight": 1, "strength": 1}],
            [("loras[0].weight", "conflict")],
        ),
        ([{"name": "a.safetensors", "clip": 1}], [("loras[0].clip", "unknown")]),
        ([{"name": "a.safetensors"}, 3], [("loras[1]", "type")]),
        ([{"name": f"l{i}.safetensors"} for i in range(9)], [("loras", "max_items")]),
    ],
)
def test_bad_loras(flux: Workflow, loras: Any, expected: list[tuple[str, str]]) -> None:
    assert errors_of(flux, {"prompt": "x", "loras": loras}) == expected


def test_good_loras(flux: Workflow) -> None:
    params = flux.validate_params(
        {
            "prompt": "x",
            "loras": [
                {"name": "styles/ghibsky.safetensors", "strength": 0.7},
                {"name": "FLUX.1-Turbo-Alpha.safetensors", "weight": 1},
                "detail.safetensors",  # shorthand: strength 1.0
            ],
        }
    )
    assert params.values["loras"] == [
        LoraRef(name="styles/ghibsky.safetensors", strength=0.7),
        LoraRef(name="FLUX.1-Turbo-Alpha.safetensors", strength=1.0),
        LoraRef(name="detail.safetensors", strength=1.0),
    ]


def test_weight_free_workflows_take_only_their_own_parameters(library: WorkflowLibrary) -> None:
    warmup = library.get("warmup")
    assert warmup.validate_params({}).values == {
        "width": 64,
        "height": 64,
        "batch_size": 1,
        "color": 0,
    }
    assert errors_of(warmup, {"prompt": "x"}) == [("prompt", "unknown")]
    smoke = library.get("smoke_invert")
    assert smoke.validate_params({"image": "upload/cat.png"}).values == {"image": "upload/cat.png"}
    assert errors_of(smoke, {"image": "../secret.png"}) == [("image", "format")]
    assert errors_of(smoke, {"image": ""}) == [("image", "min_length")]


def test_parameters_schema_describes_the_contract(flux: Workflow) -> None:
    schema = flux.parameters_schema()
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False
    assert schema["required"] == ["prompt"]
    props = schema["properties"]
    assert props["width"]["multipleOf"] == 16
    assert (props["width"]["minimum"], props["width"]["maximum"]) == (256, 2048)
    assert props["seed"]["type"] == ["integer", "null"]
    assert props["seed"]["maximum"] == 18446744073709551615
    assert "euler" in props["sampler_name"]["enum"]
    assert props["cfg_scale"]["description"] == "alias of guidance"
    assert "ignored by this workflow" in props["negative_prompt"]["description"]
    assert props["loras"]["type"] == "array" and props["loras"]["maxItems"] == 8
    json.dumps(schema)
