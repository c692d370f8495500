"""Helpers of the fake ComfyUI's validation: error records and ComfyUI-like tracebacks.

Frames point at the recorded ComfyUI's execution.py; the line numbers of the two recorded frames
(bad_link in prompt_errors.json) are exact, the others are close approximations.
"""

from __future__ import annotations

from typing import Any

# Where the recorded ComfyUI lived; the fake tracebacks point into the same files.
SOURCE = "/tmp/comfy/src/execution.py"
SITES = {
    "prompt": (
        1043,
        "validate_prompt",
        "m = await validate_inputs(prompt_id, prompt, o, validated)",
        "        " + "^" * 54,
    ),
    "recurse": (
        850,
        "validate_inputs",
        "r = await validate_inputs(prompt_id, prompt, o_id, validated)",
        "",
    ),
    "link": (
        818,
        "validate_inputs",
        "o_class_type = prompt[o_id]['class_type']",
        "                   ~~~~~~^^^^^^",
    ),
    "inputs": (782, "validate_inputs", "inputs = prompt[unique_id]['inputs']", ""),
    "output": (820, "validate_inputs", "received_type = r[val[1]]", ""),
    "compare": (898, "validate_inputs", 'if "min" in extra_info and val < extra_info["min"]:', ""),
    "custom": (
        953,
        "validate_inputs",
        "ret = await _async_map_node_over_list(prompt_id, unique_id, "
        "obj_class, input_filtered, validate_function_name, v3_data=v3_data)",
        "",
    ),
}


def frame(site: str) -> str:
    line, func, code, marker = SITES[site]
    text = f'  File "{SOURCE}", line {line}, in {func}\n    {code}\n'
    return text + (f"{marker}\n" if marker else "")


def located(ex: Exception, site: str) -> Exception:
    ex.__dict__.setdefault("comfy_frames", [frame(site)])
    return ex


def frames_of(ex: BaseException) -> list[str]:
    frames: list[str] = ex.__dict__.get("comfy_frames", [])
    return frames


def full_type_name(klass: type) -> str:
    module = klass.__module__
    return klass.__qualname__ if module == "builtins" else f"{module}.{klass.__qualname__}"


def comfy_error(kind: str, message: str, details: str, **extra: Any) -> dict[str, Any]:
    return {"type": kind, "message": message, "details": details, "extra_info": extra}


def validate_node_input(received_type: Any, input_type: Any) -> bool:
    """`comfy_execution.validation.validate_node_input` (non-strict)."""
    if received_type == input_type:
        return True
    if received_type == "*" or input_type == "*":
        return True
    if not isinstance(received_type, str) or not isinstance(input_type, str):
        return False
    received = {t.strip() for t in received_type.split(",")}
    return bool(received & {t.strip() for t in input_type.split(",")})


def check_value(
    x: str, val: Any, input_type: Any, extra_info: dict[str, Any], info: list[Any]
) -> dict[str, Any] | None:
    """Bounds, then combo membership, of a constant input (ComfyUI skips both for inputs that a
    VALIDATE_INPUTS function takes)."""
    try:
        if "min" in extra_info and val < extra_info["min"]:
            return comfy_error(
                "value_smaller_than_min",
                f"Value {val} smaller than min of {extra_info['min']}",
                x,
                input_name=x,
                input_config=info,
                received_value=val,
            )
        if "max" in extra_info and val > extra_info["max"]:
            return comfy_error(
                "value_bigger_than_max",
                f"Value {val} bigger than max of {extra_info['max']}",
                x,
                input_name=x,
                input_config=info,
                received_value=val,
            )
    except TypeError as ex:
        raise located(ex, "compare") from None
    if not (isinstance(input_type, list) or input_type == "COMBO"):
        return None
    options = extra_info.get("options", []) if input_type == "COMBO" else input_type
    if val in options:
        return None
    input_config: list[Any] | None = info
    if len(options) > 20:
        list_info = f"(list of length {len(options)})"
        input_config = None
    else:
        list_info = str(options)
    return comfy_error(
        "value_not_in_list",
        "Value not in list",
        f"{x}: '{val}' not in {list_info}",
        input_name=x,
        input_config=input_config,
        received_value=val,
    )
