"""Rendering: parameters land where the parameter map says, on a copy of the template."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest

from serverless_comfyui.workflows import (
    ParameterError,
    Workflow,
    WorkflowLibrary,
    filename_prefix_for,
    load_library,
)
from serverless_comfyui.workflows.graph import is_link
from serverless_comfyui.workflows.schema import NodeSchemas, check_graph
from serverless_comfyui.workflows.spec import JS_SAFE_INT_MAX

REPO = Path(__file__).resolve().parents[2]
OBJECT_INFO = REPO / "tests" / "fixtures" / "comfyui-0.8.0" / "object_info.flux-classes.json"
PROMPT_ID = "6f1c8f0e-3b7a-4d84-9a3e-2b8f0e7c1a55"


@pytest.fixture(scope="module")
def library() -> WorkflowLibrary:
    return load_library(REPO / "workflows")


@pytest.fixture(scope="module")
def schemas(library: WorkflowLibrary) -> NodeSchemas:
    recorded = json.loads(OBJECT_INFO.read_text())
    return NodeSchemas.from_object_info(recorded, library.custom_node_schemas)


@pytest.fixture(scope="module")
def flux(library: WorkflowLibrary) -> Workflow:
    return library.get("flux_dev_t5fp8")


def inputs(graph: dict[str, Any], node_id: str) -> dict[str, Any]:
    result: dict[str, Any] = graph[node_id]["inputs"]
    return result


def test_prompt_size_steps_and_sampler_land_on_their_nodes(flux: Workflow) -> None:
    result = flux.render(
        {
            "prompt": "a red fox in snow",
            "width": 1344,
            "height": 768,
            "steps": 28,
            "guidance": 2.5,
            "sampler_name": "dpmpp_2m",
            "scheduler": "beta",
            "batch_size": 2,
            "seed": 42,
        },
        prompt_id=PROMPT_ID,
    )
    g = result.graph
    assert inputs(g, "43")["text"] == "a red fox in snow"
    assert (inputs(g, "44")["width"], inputs(g, "44")["height"]) == (1344, 768)
    assert (inputs(g, "46")["width"], inputs(g, "46")["height"]) == (1344, 768)
    assert inputs(g, "44")["batch_size"] == 2
    assert inputs(g, "17")["steps"] == 28
    assert inputs(g, "17")["scheduler"] == "beta"
    assert inputs(g, "42")["guidance"] == 2.5
    assert inputs(g, "47")["sampler_name"] == "dpmpp_2m"
    assert inputs(g, "45")["noise_seed"] == 42
    assert result.seed == 42
    # links are untouched
    assert inputs(g, "43")["clip"] == ["11", 0]
    assert inputs(g, "40")["latent_image"] == ["44", 0]


def test_width_and_height_drive_latent_and_model_sampling(library: WorkflowLibrary) -> None:
    for name in ("flux_dev_t5fp8", "flux_dev_t5fp16", "flux_dev_nunchaku"):
        g = (
            library.get(name)
            .render({"prompt": "x", "width": 512, "height": 1536}, prompt_id="a")
            .graph
        )
        assert inputs(g, "44")["width"] == inputs(g, "46")["width"] == 512
        assert inputs(g, "44")["height"] == inputs(g, "46")["height"] == 1536
    g = library.get("flux_schnell").render({"prompt": "x", "width": 512}, prompt_id="a").graph
    assert inputs(g, "44")["width"] == 512
    assert "46" not in g


def test_render_does_not_touch_the_template(flux: Workflow) -> None:
    before = flux.template
    first = flux.render({"prompt": "one", "loras": ["a.safetensors"]}, prompt_id="p1")
    second = flux.render({"prompt": "two"}, prompt_id="p2")
    assert flux.template == before
    assert inputs(first.graph, "43")["text"] == "one"
    assert inputs(second.graph, "43")["text"] == "two"
    inputs(first.graph, "46")["model"].append("mutated")
    assert inputs(flux.render({"prompt": "x"}, prompt_id="p3").graph, "46")["model"] == ["48", 0]


def test_null_seed_is_random_within_bounds_and_returned(flux: Workflow) -> None:
    seeds = set()
    for i in range(20):
        result = flux.render({"prompt": "x", "seed": None}, prompt_id=f"p{i}")
        assert result.seed is not None
        assert 0 <= result.seed <= JS_SAFE_INT_MAX  # within RandomNoise bounds, JSON/JS-safe
        assert inputs(result.graph, "45")["noise_seed"] == result.seed
        assert result.params["seed"] == result.seed
        seeds.add(result.seed)
    assert len(seeds) > 1


def test_random_seed_can_be_made_reproducible(flux: Workflow) -> None:
    a = flux.render({"prompt": "x"}, prompt_id="p", rng=random.Random(7))
    b = flux.render({"prompt": "x"}, prompt_id="p", rng=random.Random(7))
    assert a.seed == b.seed
    assert a.graph == b.graph


@pytest.mark.parametrize("seed", [0, 1, 18446744073709551615])
def test_explicit_seed_is_kept(flux: Workflow, seed: int) -> None:
    result = flux.render({"prompt": "x", "seed": seed}, prompt_id="p", rng=random.Random(1))
    assert result.seed == seed
    assert inputs(result.graph, "45")["noise_seed"] == seed


def test_loras_are_chained_between_the_unet_and_its_consumers(
    flux: Workflow, schemas: NodeSchemas
) -> None:
    template_ids = set(flux.template)
    result = flux.render(
        {
            "prompt": "x",
            "loras": [
                {"name": "turbo.safetensors", "strength": 1.0},
                {"name": "styles/ghibsky.safetensors", "weight": 0.6},
            ],
        },
        prompt_id="p",
    )
    g = result.graph
    first, second = result.lora_nodes
    assert not {first, second} & template_ids  # fresh ids
    assert set(g) == template_ids | {first, second}
    assert g[first]["class_type"] == g[second]["class_type"] == "LoraLoaderModelOnly"
    assert inputs(g, first) == {
        "model": ["48", 0],
        "lora_name": "turbo.safetensors",
        "strength_model": 1.0,
    }
    assert inputs(g, second) == {
        "model": [first, 0],
        "lora_name": "styles/ghibsky.safetensors",
        "strength_model": 0.6,
    }
    assert inputs(g, "46")["model"] == [second, 0]  # the UNET's only consumer now reads the chain
    readers_of_unet = [
        (node_id, name)
        for node_id, node in g.items()
        for name, value in node["inputs"].items()
        if is_link(value) and value[0] == "48"
    ]
    assert readers_of_unet == [(first, "model")]
    assert check_graph(g, schemas) == []
    assert result.params["loras"] == [
        {"name": "turbo.safetensors", "strength": 1.0},
        {"name": "styles/ghibsky.safetensors", "strength": 0.6},
    ]


def test_lora_chain_rewires_every_consumer(library: WorkflowLibrary, schemas: NodeSchemas) -> None:
    schnell = library.get("flux_schnell")
    assert inputs(schnell.template, "17")["model"] == inputs(schnell.template, "38")["model"]
    result = schnell.render({"prompt": "x", "loras": ["a.safetensors"]}, prompt_id="p")
    (lora,) = result.lora_nodes
    assert inputs(result.graph, "17")["model"] == [lora, 0]
    assert inputs(result.graph, "38")["model"] == [lora, 0]
    assert check_graph(result.graph, schemas) == []


def test_nunchaku_uses_its_own_lora_loader(library: WorkflowLibrary, schemas: NodeSchemas) -> None:
    result = library.get("flux_dev_nunchaku").render(
        {"prompt": "x", "loras": [{"name": "a.safetensors", "strength": 0.5}]}, prompt_id="p"
    )
    (lora,) = result.lora_nodes
    assert result.graph[lora]["class_type"] == "NunchakuFluxLoraLoader"
    assert inputs(result.graph, lora) == {
        "model": ["48", 0],
        "lora_name": "a.safetensors",
        "lora_strength": 0.5,
    }
    assert check_graph(result.graph, schemas) == []


def test_no_loras_leaves_the_graph_shape_alone(flux: Workflow) -> None:
    result = flux.render({"prompt": "x", "loras": []}, prompt_id="p")
    assert result.lora_nodes == []
    assert set(result.graph) == set(flux.template)
    assert inputs(result.graph, "46")["model"] == ["48", 0]


def test_negative_prompt_on_flux_is_reported_and_absent_from_the_graph(flux: Workflow) -> None:
    result = flux.render({"prompt": "a cat", "negative_prompt": "zebra stripes"}, prompt_id="p")
    assert result.ignored == ["negative_prompt"]
    assert any("negative_prompt" in w and "ignored" in w for w in result.warnings)
    assert "zebra stripes" not in json.dumps(result.graph)
    assert "negative_prompt" not in result.params


def test_cfg_scale_on_flux_sets_guidance_with_a_warning(flux: Workflow) -> None:
    result = flux.render({"prompt": "x", "cfg_scale": 5}, prompt_id="p")
    assert inputs(result.graph, "42")["guidance"] == 5
    assert result.params["guidance"] == 5
    assert any("cfg_scale" in w for w in result.warnings)
    assert result.ignored == []


def test_filename_prefix_is_unique_per_prompt_id(flux: Workflow) -> None:
    a = flux.render({"prompt": "x"}, prompt_id="id-a", output_prefix="api")
    b = flux.render({"prompt": "x"}, prompt_id="id-b", output_prefix="api")
    assert inputs(a.graph, "39")["filename_prefix"] == a.filename_prefix == "api/id-a"
    assert inputs(b.graph, "39")["filename_prefix"] == "api/id-b"
    assert a.output_nodes == ["39"]
    plain = flux.render({"prompt": "x"}, prompt_id=PROMPT_ID)
    assert inputs(plain.graph, "39")["filename_prefix"] == PROMPT_ID
    nested = flux.render({"prompt": "x"}, prompt_id="i", output_prefix="/tenant-1/2026/")
    assert nested.filename_prefix == "tenant-1/2026/i"


@pytest.mark.parametrize(
    ("prompt_id", "output_prefix"),
    [
        ("../escape", ""),
        ("a/b", ""),
        ("", ""),
        ("ok", "../up"),
        ("ok", "a/../b"),
        ("ok", "a//b"),
        ("ok", "sp ace"),
        ("..", ""),
    ],
)
def test_unsafe_prefixes_are_refused(prompt_id: str, output_prefix: str) -> None:
    with pytest.raises(ValueError):
        filename_prefix_for(prompt_id, output_prefix)


def test_every_workflow_sets_its_output_prefix(library: WorkflowLibrary) -> None:
    for workflow in library:
        params = {"prompt": "x"} if "prompt" in {p.name for p in workflow.parameters} else {}
        result = workflow.render(params, prompt_id="pid", output_prefix="out")
        for node_id in workflow.spec.outputs:
            assert inputs(result.graph, node_id)["filename_prefix"] == "out/pid"


def test_weight_free_workflows(library: WorkflowLibrary, schemas: NodeSchemas) -> None:
    warmup = library.get("warmup").render({"width": 8, "color": 0xFF0000}, prompt_id="w")
    assert inputs(warmup.graph, "1")["width"] == 8
    assert inputs(warmup.graph, "1")["color"] == 0xFF0000
    assert warmup.seed is None
    assert warmup.warnings == []
    smoke = library.get("smoke_invert").render({"image": "cat.png"}, prompt_id="s")
    assert inputs(smoke.graph, "1")["image"] == "cat.png"
    assert check_graph(warmup.graph, schemas) == check_graph(smoke.graph, schemas) == []


def test_render_validates_raw_params(flux: Workflow) -> None:
    with pytest.raises(ParameterError) as info:
        flux.render({"prompt": "x", "width": 1001}, prompt_id="p")
    assert [(e.field, e.rule) for e in info.value.errors] == [("width", "multiple_of")]


def test_validated_params_belong_to_one_workflow(library: WorkflowLibrary) -> None:
    params = library.get("flux_dev_t5fp8").validate_params({"prompt": "x"})
    library.get("flux_dev_t5fp8").render(params, prompt_id="ok")
    with pytest.raises(ValueError, match="validated for 'flux_dev_t5fp8'"):
        library.get("flux_dev_t5fp16").render(params, prompt_id="p")


def test_result_is_json_ready(flux: Workflow) -> None:
    result = flux.render(
        {"prompt": "x", "loras": ["a.safetensors"], "negative_prompt": "n"}, prompt_id="p"
    )
    dumped = json.loads(json.dumps(result.model_dump()))
    assert dumped["graph"] == result.graph
    assert dumped["seed"] == result.seed
    assert dumped["workflow"] == "flux_dev_t5fp8"
    assert set(dumped) >= {"graph", "seed", "warnings", "ignored", "params", "filename_prefix"}
