"""The workflow library: loading, definitions, and every workflow against ComfyUI's schemas."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from serverless_comfyui.workflows import (
    WORKFLOWS_DIR_ENV,
    UnknownWorkflowError,
    Workflow,
    WorkflowDefinitionError,
    WorkflowLibrary,
    WorkflowLibraryNotFoundError,
    default_workflows_dir,
    load_library,
)
from serverless_comfyui.workflows.graph import is_link
from serverless_comfyui.workflows.schema import (
    FILE_INPUTS,
    NodeSchemas,
    check_graph,
    check_parameters,
    check_workflow,
)
from serverless_comfyui.workflows.spec import split_target

REPO = Path(__file__).resolve().parents[2]
LIBRARY_DIR = REPO / "workflows"
OBJECT_INFO = REPO / "tests" / "fixtures" / "comfyui-0.8.0" / "object_info.flux-classes.json"
EXPECTED = {
    "flux_dev_t5fp8",
    "flux_dev_t5fp16",
    "flux_schnell",
    "flux_dev_nunchaku",
    "warmup",
    "smoke_invert",
}
FLUX = sorted(n for n in EXPECTED if n.startswith("flux"))


@pytest.fixture(scope="module")
def library() -> WorkflowLibrary:
    return load_library(LIBRARY_DIR)


@pytest.fixture(scope="module")
def schemas(library: WorkflowLibrary) -> NodeSchemas:
    recorded = json.loads(OBJECT_INFO.read_text())
    return NodeSchemas.from_object_info(recorded, library.custom_node_schemas)


def sample_params(workflow: Workflow) -> dict[str, Any]:
    """Valid parameters exercising every applied parameter at its upper bound."""
    params: dict[str, Any] = {}
    for param in workflow.parameters:
        if param.ignored is not None:
            continue
        if param.type == "loras":
            count = param.max_items or 2
            params[param.name] = [
                {"name": f"style_{i}.safetensors", "strength": param.max} for i in range(count)
            ]
        elif param.enum is not None:
            params[param.name] = param.enum[-1]
        elif param.type in ("integer", "number") and param.max is not None:
            params[param.name] = param.max
        elif param.type == "string":
            params[param.name] = "a_file.png" if param.format == "filename" else "a red fox"
    return params


# --- loading ---------------------------------------------------------------------------


def test_library_has_the_expected_workflows(library: WorkflowLibrary) -> None:
    assert set(library.names()) >= EXPECTED
    assert len(library) == len(library.names())
    assert all(isinstance(w, Workflow) for w in library)
    assert "flux_dev_t5fp8" in library
    assert "_schemas" not in library


def test_default_dir_is_the_checkout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORKFLOWS_DIR_ENV, raising=False)
    assert default_workflows_dir() == LIBRARY_DIR
    assert set(load_library().names()) >= EXPECTED


def test_env_var_overrides_the_library_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    shutil.copytree(LIBRARY_DIR / "warmup", tmp_path / "only_this")
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, str(tmp_path))
    assert default_workflows_dir() == tmp_path
    assert load_library().names() == ["only_this"]


def test_missing_library_dir_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(WORKFLOWS_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(WorkflowLibraryNotFoundError, match="not a directory"):
        load_library()
    with pytest.raises(WorkflowLibraryNotFoundError, match="no workflows"):
        load_library(tmp_path)


def test_unknown_workflow(library: WorkflowLibrary) -> None:
    with pytest.raises(UnknownWorkflowError) as info:
        library.get("flux_pro")
    err = info.value
    assert isinstance(err, KeyError)  # callers catching KeyError keep working
    assert err.name == "flux_pro"
    assert "flux_dev_t5fp8" in err.available
    assert "unknown workflow 'flux_pro'" in str(err)
    assert "warmup" in str(err)


def test_template_is_a_copy(library: WorkflowLibrary) -> None:
    workflow = library.get("warmup")
    template = workflow.template
    template["1"]["inputs"]["width"] = 5
    assert workflow.template["1"]["inputs"]["width"] == 64


# --- every workflow against ComfyUI 0.8.0's object_info (+ the recorded nunchaku schema) ---


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_template_and_parameter_map_match_object_info(
    library: WorkflowLibrary, schemas: NodeSchemas, name: str
) -> None:
    assert check_workflow(library.get(name), schemas) == []


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_graph_links_point_at_existing_outputs(
    library: WorkflowLibrary, schemas: NodeSchemas, name: str
) -> None:
    graph = library.get(name).template
    links = 0
    for node in graph.values():
        schema = schemas.get(node["class_type"])
        assert schema is not None, node["class_type"]
        for input_name, value in node["inputs"].items():
            assert input_name in schema.inputs, (node["class_type"], input_name)
            if is_link(value):
                links += 1
                source = graph[value[0]]
                source_schema = schemas.get(source["class_type"])
                assert source_schema is not None
                assert 0 <= value[1] < len(source_schema.outputs)
    assert links >= 1


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_workflow_has_an_output_node_whose_prefix_is_managed(
    library: WorkflowLibrary, schemas: NodeSchemas, name: str
) -> None:
    workflow = library.get(name)
    graph = workflow.template
    output_nodes = [
        node_id
        for node_id, node in graph.items()
        if (s := schemas.get(node["class_type"])) is not None and s.output_node
    ]
    assert output_nodes
    assert set(workflow.spec.outputs) == {
        node_id for node_id in output_nodes if "filename_prefix" in graph[node_id]["inputs"]
    }


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_target_exists_and_defaults_match_the_template(
    library: WorkflowLibrary, name: str
) -> None:
    workflow = library.get(name)
    graph = workflow.template
    for param in workflow.parameters:
        for target in param.targets:
            node_id, input_name = split_target(target)
            assert input_name in graph[node_id]["inputs"], target
            literal = graph[node_id]["inputs"][input_name]
            assert not is_link(literal), target
            if param.default is not None:
                assert literal == param.default, (param.name, target)
        if param.lora_chain is not None:
            assert param.lora_chain.after in graph


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_rendered_graphs_at_the_bounds_pass_object_info(
    library: WorkflowLibrary, schemas: NodeSchemas, name: str
) -> None:
    workflow = library.get(name)
    params = sample_params(workflow)
    result = workflow.render(params, prompt_id="0b7e2c7e-8a7c-4c1e-9a57-3b1f3c6d2f10")
    assert check_graph(result.graph, schemas) == []
    low = {
        p.name: p.min
        for p in workflow.parameters
        if p.ignored is None and p.type in ("integer", "number") and p.min is not None
    }
    result = workflow.render({**params, **low}, prompt_id="p2")
    assert check_graph(result.graph, schemas) == []


@pytest.mark.parametrize("name", FLUX)
def test_flux_workflows_declare_the_files_they_load(library: WorkflowLibrary, name: str) -> None:
    workflow = library.get(name)
    declared = {m.file for m in workflow.spec.models}
    loaded = {
        value
        for node in workflow.template.values()
        for input_name, value in node["inputs"].items()
        if input_name in FILE_INPUTS and isinstance(value, str)
    }
    assert loaded == declared


def test_the_flux_dev_graph_is_the_seed_graph(library: WorkflowLibrary) -> None:
    graph = library.get("flux_dev_t5fp8").template
    classes = {node_id: node["class_type"] for node_id, node in graph.items()}
    assert classes == {
        "8": "VAEDecode",
        "10": "VAELoader",
        "11": "DualCLIPLoader",
        "17": "BasicScheduler",
        "38": "BasicGuider",
        "39": "SaveImage",
        "40": "SamplerCustomAdvanced",
        "42": "FluxGuidance",
        "43": "CLIPTextEncode",
        "44": "EmptySD3LatentImage",
        "45": "RandomNoise",
        "46": "ModelSamplingFlux",
        "47": "KSamplerSelect",
        "48": "UNETLoader",
    }
    assert graph["48"]["inputs"]["unet_name"] == "flux1-dev.safetensors"
    assert graph["11"]["inputs"]["clip_name1"] == "t5xxl_fp8_e4m3fn.safetensors"
    assert graph["11"]["inputs"]["clip_name2"] == "clip_l.safetensors"
    assert graph["11"]["inputs"]["type"] == "flux"
    assert graph["10"]["inputs"]["vae_name"] == "ae.safetensors"


def test_variants_differ_only_where_they_should(library: WorkflowLibrary) -> None:
    fp8 = library.get("flux_dev_t5fp8").template
    fp16 = library.get("flux_dev_t5fp16").template
    assert fp16["11"]["inputs"]["clip_name1"] == "t5xxl_fp16.safetensors"
    fp16["11"]["inputs"]["clip_name1"] = fp8["11"]["inputs"]["clip_name1"]
    assert fp16 == fp8

    schnell = library.get("flux_schnell").template
    assert schnell["48"]["inputs"]["unet_name"] == "flux1-schnell.safetensors"
    assert not {"FluxGuidance", "ModelSamplingFlux"} & {n["class_type"] for n in schnell.values()}
    assert schnell["17"]["inputs"]["steps"] == 4

    nunchaku = library.get("flux_dev_nunchaku")
    assert nunchaku.template["48"]["class_type"] == "NunchakuFluxDiTLoader"
    assert nunchaku.spec.custom_nodes == ["ComfyUI-nunchaku"]
    loras = nunchaku.spec.param("loras").lora_chain
    assert loras is not None
    assert (loras.class_type, loras.strength_input) == ("NunchakuFluxLoraLoader", "lora_strength")


def test_nunchaku_schema_is_recorded_with_its_source(library: WorkflowLibrary) -> None:
    raw = json.loads((LIBRARY_DIR / "_schemas" / "comfyui-nunchaku.object_info.json").read_text())
    assert "nunchaku-tech/ComfyUI-nunchaku" in raw["_source"]
    loader = raw["NunchakuFluxDiTLoader"]["input"]
    assert set(loader["required"]) == {
        "model_path",
        "cache_threshold",
        "attention",
        "cpu_offload",
        "device_id",
        "data_type",
    }
    assert set(loader["optional"]) == {"i2f_mode"}
    assert raw["NunchakuFluxLoraLoader"]["output"] == ["MODEL"]
    assert "_source" not in library.custom_node_schemas


# --- the checker itself finds what ComfyUI would refuse -------------------------------


def _mutated(library: WorkflowLibrary, name: str = "flux_dev_t5fp8") -> dict[str, Any]:
    return library.get(name).template


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda g: g["47"].update(class_type="NoSuchNode"), "unknown node class"),
        (lambda g: g["44"]["inputs"].update(depth=3), "no input named 'depth'"),
        (lambda g: g["44"]["inputs"].pop("batch_size"), "required input 'batch_size' is missing"),
        (lambda g: g["8"]["inputs"].update(vae=["99", 0]), "links to missing node '99'"),
        (lambda g: g["8"]["inputs"].update(vae=["10", 1]), "has no output 1"),
        (lambda g: g["8"]["inputs"].update(vae=["48", 0]), "expects VAE, but output 0"),
        (lambda g: g["44"]["inputs"].update(width=8), "below the minimum 16"),
        (lambda g: g["45"]["inputs"].update(noise_seed=2**64), "above the maximum"),
        (lambda g: g["44"]["inputs"].update(width="1024"), "expects an INT"),
        (lambda g: g["47"]["inputs"].update(sampler_name="warp"), "is not one of"),
        (lambda g: g["11"]["inputs"].update(type="sd9"), "is not one of"),
        (lambda g: g["42"]["inputs"].update(conditioning="text"), "expects a link"),
        (lambda g: g["10"]["inputs"].update(vae_name="../ae.safetensors"), "'..'"),
        (lambda g: g.pop("39"), "no output node"),
        (lambda g: g["48"]["inputs"].update(weight_dtype=["x", "y"]), "2-element list"),
        (lambda g: g["43"]["inputs"].update(clip=["10", 0]), "expects CLIP"),
    ],
)
def test_check_graph_finds_problems(
    library: WorkflowLibrary, schemas: NodeSchemas, mutate: Any, expected: str
) -> None:
    graph = _mutated(library)
    mutate(graph)
    problems = check_graph(graph, schemas)
    assert any(expected in p for p in problems), problems


def test_check_graph_finds_cycles(library: WorkflowLibrary, schemas: NodeSchemas) -> None:
    graph = _mutated(library, "smoke_invert")
    graph["1"] = {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}}
    assert any("cycle" in p for p in check_graph(graph, schemas))


def test_model_file_combos_accept_any_installed_name(
    library: WorkflowLibrary, schemas: NodeSchemas
) -> None:
    graph = _mutated(library)
    graph["48"]["inputs"]["unet_name"] = "subdir/flux1-dev-fp8.safetensors"
    assert check_graph(graph, schemas) == []
    # ... but only the inputs known to hold file names
    assert check_graph(graph, schemas, file_inputs=()) != []


def test_check_parameters_rejects_bounds_wider_than_the_input(
    library: WorkflowLibrary, schemas: NodeSchemas, tmp_path: Path
) -> None:
    folder = tmp_path / "wide"
    shutil.copytree(LIBRARY_DIR / "warmup", folder)
    text = (folder / "params.yaml").read_text().replace("max: 16777215", "max: 99999999")
    (folder / "params.yaml").write_text(text)
    workflow = load_library(tmp_path).get("wide")
    problems = check_parameters(workflow, schemas)
    assert any("color" in p and "above the input's maximum" in p for p in problems), problems


# --- broken definitions are refused at load time, all problems at once ----------------


def _copy(tmp_path: Path, name: str = "warmup", as_name: str = "wf") -> Path:
    folder = tmp_path / as_name
    shutil.copytree(LIBRARY_DIR / name, folder)
    return folder


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new))


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        ('targets: ["1.width"]', 'targets: ["9.width"]', "node '9' does not exist"),
        ('targets: ["1.width"]', 'targets: ["1.depth"]', "has no input 'depth'"),
        ('targets: ["1.width"]', 'targets: ["2.images"]', "is a link"),
        ('targets: ["1.width"]', "targets: [width]", "is not"),
        ("    default: 64\n", "    default: 5000\n", "default must be <= 1024"),
        ("    type: integer\n    default: 0", "    type: integr\n    default: 0", "type"),
        ("outputs:", "outptus:", "outptus"),
        ('outputs: ["2"]', "outputs: []", "outputs"),
        ("  - name: height", "  - name: width", "used by both"),
    ],
)
def test_bad_params_yaml_is_refused(tmp_path: Path, old: str, new: str, expected: str) -> None:
    folder = _copy(tmp_path)
    _edit(folder / "params.yaml", old, new)
    with pytest.raises(WorkflowDefinitionError) as info:
        load_library(tmp_path)
    assert any(expected in p for p in info.value.problems), info.value.problems


def test_unmanaged_save_node_is_refused(tmp_path: Path) -> None:
    folder = _copy(tmp_path)
    graph = json.loads((folder / "workflow.json").read_text())
    graph["3"] = {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}
    (folder / "workflow.json").write_text(json.dumps(graph))
    with pytest.raises(WorkflowDefinitionError, match="not listed in outputs"):
        load_library(tmp_path)


def test_broken_files_are_reported_for_every_workflow(tmp_path: Path) -> None:
    bad_json = _copy(tmp_path, as_name="bad_json")
    (bad_json / "workflow.json").write_text("{not json")
    no_params = _copy(tmp_path, as_name="no_params")
    (no_params / "params.yaml").unlink()
    _copy(tmp_path, as_name="fine")
    with pytest.raises(WorkflowDefinitionError) as info:
        load_library(tmp_path)
    text = "\n".join(info.value.problems)
    assert "bad_json: workflow.json" in text
    assert "no_params: params.yaml" in text
    assert "fine" not in text


def test_folder_name_must_be_a_valid_workflow_name(tmp_path: Path) -> None:
    _copy(tmp_path, as_name="Bad Name")
    with pytest.raises(WorkflowDefinitionError, match="folder name"):
        load_library(tmp_path)


def test_lora_chain_needs_a_consumed_source(tmp_path: Path) -> None:
    folder = _copy(tmp_path, "flux_dev_t5fp8")
    _edit(folder / "params.yaml", 'after: "48"', 'after: "39"')
    with pytest.raises(WorkflowDefinitionError, match="nothing reads output 0"):
        load_library(tmp_path)
