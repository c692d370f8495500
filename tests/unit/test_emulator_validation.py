"""Prompt validation of the ComfyUI emulator, case by case against ComfyUI 0.8.0's rules."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from serverless_comfyui.emulator import EmulatorSettings
from serverless_comfyui.emulator.state import EmulatorState, build_state
from serverless_comfyui.emulator.testing import RunningEmulator, serve_emulator
from serverless_comfyui.emulator.validation import ValidationResult, validate_prompt


@pytest.fixture
def state(tmp_path: Path) -> EmulatorState:
    return build_state(EmulatorSettings(data_dir=tmp_path))


def check(state: EmulatorState, prompt: Any, partial: Any = None) -> ValidationResult:
    return validate_prompt(prompt, state.schema, state.dirs, partial)


def empty_image(**inputs: Any) -> dict[str, Any]:
    values = {"width": 64, "height": 64, "batch_size": 1, "color": 0, **inputs}
    return {"class_type": "EmptyImage", "inputs": values}


def save(source: str, prefix: str = "x") -> dict[str, Any]:
    return {"class_type": "SaveImage", "inputs": {"images": [source, 0], "filename_prefix": prefix}}


def only_error(result: ValidationResult, node_id: str) -> dict[str, Any]:
    errors = result.node_errors[node_id]["errors"]
    assert len(errors) == 1, errors
    error: dict[str, Any] = errors[0]
    return error


def test_bounds_give_comfyui_messages(state: EmulatorState) -> None:
    result = check(state, {"1": empty_image(width=0), "2": save("1")})
    assert not result.ok
    assert only_error(result, "1") == {
        "type": "value_smaller_than_min",
        "message": "Value 0 smaller than min of 1",
        "details": "width",
        "extra_info": {
            "input_name": "width",
            "input_config": ["INT", {"default": 512, "min": 1, "max": 16384, "step": 1}],
            "received_value": 0,
        },
    }
    blur = {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 40, "sigma": 1}}
    result = check(state, {"1": empty_image(), "3": blur, "2": save("3")})
    error = only_error(result, "3")
    assert (error["type"], error["message"]) == (
        "value_bigger_than_max",
        "Value 40 bigger than max of 31",
    )
    assert result.node_errors["3"] == {
        "errors": [error],
        "dependent_outputs": ["2"],
        "class_type": "ImageBlur",
    }


def test_conversions_happen_in_place_and_float_failures_are_reported(
    state: EmulatorState,
) -> None:
    prompt = {"1": empty_image(width="48", color=7.9), "2": save("1")}
    assert check(state, prompt).ok
    assert prompt["1"]["inputs"]["width"] == 48
    assert prompt["1"]["inputs"]["color"] == 7

    guidance = {"class_type": "FluxGuidance", "inputs": {"conditioning": ["9", 0], "guidance": "x"}}
    prompt = {"5": guidance, "6": {"class_type": "PreviewImage", "inputs": {"images": ["7", 0]}}}
    prompt["7"] = {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["10", 0]}}
    prompt["8"] = {
        "class_type": "EmptyLatentImage",
        "inputs": {"width": 64, "height": 64, "batch_size": 1},
    }
    prompt["10"] = {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}
    # FluxGuidance is not reachable from the output: ComfyUI does not validate it.
    assert check(state, prompt).ok
    prompt["9"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "t", "clip": ["11", 0]}}
    result = check(state, {"5": guidance, "9": prompt["9"]})
    assert result.error is not None and result.error["type"] == "prompt_no_outputs"


def test_combo_values_use_the_live_model_lists(state: EmulatorState) -> None:
    unet = {
        "class_type": "UNETLoader",
        "inputs": {"unet_name": "nope.safetensors", "weight_dtype": "default"},
    }
    sampler = {"class_type": "KSampler", "inputs": {"model": ["1", 0]}}
    decode = {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["1", 0]}}
    preview = {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}}
    result = check(state, {"1": unet, "4": sampler, "3": decode, "2": save("3"), "5": preview})
    assert not result.ok
    error = only_error(result, "1")
    assert error["details"] == (
        "unet_name: 'nope.safetensors' not in "
        "['flux1-dev.safetensors', 'flux1-schnell.safetensors']"
    )
    assert error["extra_info"]["input_config"] == [
        ["flux1-dev.safetensors", "flux1-schnell.safetensors"],
        {},
    ]
    assert result.node_errors["1"]["dependent_outputs"] == ["2", "5"]
    assert list(result.node_errors) == ["1", "4", "3"]
    assert "required_input_missing" in {e["type"] for e in result.node_errors["4"]["errors"]}
    assert result.node_errors["3"]["errors"][-1] == {
        "type": "return_type_mismatch",
        "message": "Return type mismatch between linked nodes",
        "details": "vae, received_type(MODEL) mismatch input_type(VAE)",
        "extra_info": {
            "input_name": "vae",
            "input_config": ["VAE", {"tooltip": "The VAE model used for decoding the latent."}],
            "received_type": "MODEL",
            "linked_node": ["1", 0],
        },
    }
    select = {"class_type": "KSamplerSelect", "inputs": {"sampler_name": "bogus"}}
    custom = {"class_type": "SamplerCustomAdvanced", "inputs": {"sampler": ["2", 0]}}
    decode = {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["8", 0]}}
    vae = {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}}
    result = check(state, {"2": select, "5": custom, "7": decode, "8": vae, "6": save("7")})
    error = only_error(result, "2")
    assert error["details"].startswith("sampler_name: 'bogus' not in (list of length ")
    assert error["extra_info"]["input_config"] is None


def test_exceptions_inside_the_graph(state: EmulatorState) -> None:
    invert = {"class_type": "ImageInvert", "inputs": {"image": ["99", 0]}}
    result = check(state, {"3": invert, "2": save("3")})
    error = only_error(result, "3")
    assert error["type"] == "exception_during_inner_validation"
    assert error["details"] == "'99'"
    assert error["extra_info"]["exception_type"] == "KeyError"
    assert error["extra_info"]["linked_node"] == ["3", 0]  # the link into the failing node
    assert result.error is not None and result.error["details"] == ""

    result = check(
        state,
        {
            "1": empty_image(),
            "2": save("1"),
            "3": {
                "class_type": "SaveImage",
                "inputs": {"images": ["1", 5], "filename_prefix": "y"},
            },
        },
    )
    assert result.ok and result.outputs == ["2"]
    error = only_error(result, "3")
    assert (error["type"], error["details"]) == (
        "exception_during_validation",
        "tuple index out of range",
    )
    assert error["extra_info"]["exception_type"] == "IndexError"


def test_dependent_outputs_and_top_level_details(state: EmulatorState) -> None:
    result = check(state, {"1": empty_image(height=-1), "2": save("1"), "3": save("1", "y")})
    assert not result.ok
    assert result.node_errors["1"]["dependent_outputs"] == ["2", "3"]
    assert result.outputs == []
    result = check(
        state,
        {"1": empty_image(), "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0]}}},
    )
    assert result.error is not None
    assert result.error["details"] == "Required input is missing: filename_prefix"
    assert check(state, {"1": empty_image(), "2": save("1"), "3": save("9")}, partial=["2"]).ok


def test_malformed_prompts(state: EmulatorState) -> None:
    result = check(state, {"1": {"inputs": {}}})
    assert result.error == {
        "type": "invalid_prompt",
        "message": "Cannot execute because a node is missing the class_type property.",
        "details": "Node ID '#1'",
        "extra_info": {},
    }
    assert check(state, []).error == check(state, {}).error
    with pytest.raises(TypeError):
        check(state, 5)


def test_load_image_accepts_annotated_names(state: EmulatorState) -> None:
    (Path(state.dirs.output) / "made.png").write_bytes(b"x")
    load: dict[str, Any] = {"class_type": "LoadImage", "inputs": {"image": "made.png [output]"}}
    assert check(state, {"1": load, "2": save("1")}).ok
    load["inputs"]["image"] = "made.png"
    error = only_error(check(state, {"1": load, "2": save("1")}), "1")
    assert error["details"] == "image - Invalid image file: made.png"


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[RunningEmulator]:
    async with serve_emulator(EmulatorSettings(data_dir=tmp_path)) as running:
        yield running


async def test_numbers_count_every_parsed_request(emu: RunningEmulator) -> None:
    async with aiohttp.ClientSession() as http:
        for body in ([1, 2], {"prompt": {"1": {"class_type": "Nope", "inputs": {}}}}):
            async with http.post(f"{emu.url}/prompt", json=body) as response:
                assert response.status == 400
        prompt = {"1": empty_image(), "2": save("1")}
        request = {"prompt": prompt, "extra_data": {"api_key_comfy_org": "secret"}}
        async with http.post(f"{emu.url}/prompt", json=request) as response:
            body = await response.json()
        assert body["number"] == 2
        async with http.post(f"{emu.url}/prompt", json={"prompt": 7}) as response:
            assert response.status == 500
        async with http.get(f"{emu.url}/queue") as response:
            queue = await response.json()
    items = (
        queue["queue_running"]
        + queue["queue_pending"]
        + [entry["prompt"] for entry in emu.state.queue.history.values()]
    )
    assert all("api_key_comfy_org" not in item[3] for item in items)
