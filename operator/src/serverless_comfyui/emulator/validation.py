"""Prompt validation of the fake ComfyUI: a port of ComfyUI 0.8.0's `validate_prompt`.

Same checks, same order, same error types, messages, details and `extra_info`, the same in-place
conversion of INT/FLOAT/STRING/BOOLEAN values, and only nodes reachable from output nodes are
validated. Exceptions ComfyUI would hit (a link to a missing node, a bad output index) are raised
here too and reported the same way, with tracebacks that imitate ComfyUI's frames.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any, NamedTuple

from serverless_comfyui.emulator.files import DataDirs
from serverless_comfyui.emulator.schema import NodeSchema, get_input_info
from serverless_comfyui.emulator.validation_support import (
    check_value,
    comfy_error,
    frame,
    frames_of,
    full_type_name,
    located,
    validate_node_input,
)

# Node classes with a VALIDATE_INPUTS and the inputs it takes (LoadImage checks its file).
VALIDATE_FUNCTION_INPUTS = {"LoadImage": ["image"]}

Result = tuple[bool, list[dict[str, Any]], str]


class ValidationResult(NamedTuple):
    ok: bool
    error: dict[str, Any] | None
    outputs: list[str]
    node_errors: dict[str, Any]


class _Validator:
    def __init__(self, prompt: dict[str, Any], schema: NodeSchema, dirs: DataDirs) -> None:
        self.prompt = prompt
        self.schema = schema
        self.dirs = dirs
        self.visiting: list[str] = []

    def validate_inputs(self, unique_id: str, validated: dict[str, Result]) -> Result:
        if unique_id in validated:
            return validated[unique_id]
        if unique_id in self.visiting:
            raise located(RecursionError("maximum recursion depth exceeded"), "recurse")
        try:
            inputs = self.prompt[unique_id]["inputs"]
        except Exception as ex:
            raise located(ex, "inputs") from None
        if not isinstance(inputs, dict):
            raise located(TypeError(f"'{type(inputs).__name__}' object is not a mapping"), "inputs")
        class_type = self.prompt[unique_id]["class_type"]
        class_inputs = self.schema.input_types(class_type)
        validate_function_inputs = VALIDATE_FUNCTION_INPUTS.get(class_type, [])
        errors: list[dict[str, Any]] = []
        valid = True
        names = list(class_inputs.get("required") or {})
        names += [n for n in class_inputs.get("optional") or {} if n not in names]
        for x in names:
            input_type, category, extra_info = get_input_info(class_inputs, x)
            if x not in inputs:
                if category == "required":
                    errors.append(
                        comfy_error(
                            "required_input_missing", "Required input is missing", x, input_name=x
                        )
                    )
                continue
            val = inputs[x]
            info = [input_type, extra_info]
            if isinstance(val, list):
                link_ok = self._check_link(unique_id, x, val, info, input_type, errors, validated)
                valid = valid and link_ok
                continue
            try:
                if isinstance(val, dict) and "__value__" in val:
                    val = val["__value__"]
                    inputs[x] = val
                if input_type == "INT":
                    val = int(val)
                    inputs[x] = val
                if input_type == "FLOAT":
                    val = float(val)
                    inputs[x] = val
                if input_type == "STRING":
                    val = str(val)
                    inputs[x] = val
                if input_type == "BOOLEAN":
                    val = bool(val)
                    inputs[x] = val
            except Exception as ex:
                errors.append(
                    comfy_error(
                        "invalid_input_type",
                        f"Failed to convert an input value to a {input_type} value",
                        f"{x}, {val}, {ex}",
                        input_name=x,
                        input_config=info,
                        received_value=val,
                        exception_message=str(ex),
                    )
                )
                continue
            if x not in validate_function_inputs:
                error = check_value(x, val, input_type, extra_info, info)
                if error is not None:
                    errors.append(error)
        if validate_function_inputs:
            errors.extend(self._custom_validation(inputs, validate_function_inputs))
        result: Result = (
            (False, errors, unique_id) if errors or not valid else (True, [], unique_id)
        )
        validated[unique_id] = result
        return result

    def _check_link(
        self,
        unique_id: str,
        x: str,
        val: list[Any],
        info: list[Any],
        input_type: Any,
        errors: list[dict[str, Any]],
        validated: dict[str, Result],
    ) -> bool:
        if len(val) != 2:
            errors.append(
                comfy_error(
                    "bad_linked_input",
                    "Bad linked input, must be a length-2 list of [node_id, slot_index]",
                    x,
                    input_name=x,
                    input_config=info,
                    received_value=val,
                )
            )
            return True
        o_id = val[0]
        try:
            o_class_type = self.prompt[o_id]["class_type"]
        except Exception as ex:
            raise located(ex, "link") from None
        try:
            received_type = self.schema.return_types(o_class_type)[val[1]]
        except Exception as ex:
            raise located(ex, "output") from None
        if not validate_node_input(received_type, input_type):
            details = f"{x}, received_type({received_type}) mismatch input_type({input_type})"
            errors.append(
                comfy_error(
                    "return_type_mismatch",
                    "Return type mismatch between linked nodes",
                    details,
                    input_name=x,
                    input_config=info,
                    received_type=received_type,
                    linked_node=val,
                )
            )
            return True
        try:
            self.visiting.append(unique_id)
            try:
                upstream = self.validate_inputs(o_id, validated)
            finally:
                self.visiting.pop()
            return upstream[0] is not False
        except Exception as ex:
            reasons = [
                comfy_error(
                    "exception_during_inner_validation",
                    "Exception when validating inner node",
                    str(ex),
                    input_name=x,
                    input_config=info,
                    exception_message=str(ex),
                    exception_type=full_type_name(type(ex)),
                    traceback=[frame("recurse"), *frames_of(ex)],
                    linked_node=val,
                )
            ]
            validated[o_id] = (False, reasons, o_id)
            return False

    def _custom_validation(self, inputs: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
        """LoadImage.VALIDATE_INPUTS(image): the file must exist (annotated names allowed)."""
        given = {
            x: (None if isinstance(inputs[x], list) else inputs[x]) for x in names if x in inputs
        }
        if "image" not in given:
            raise located(
                TypeError(
                    "LoadImage.VALIDATE_INPUTS() missing 1 required positional argument: 'image'"
                ),
                "custom",
            )
        image = given["image"]
        if not isinstance(image, str):
            message = f"'{type(image).__name__}' object has no attribute 'endswith'"
            raise located(AttributeError(message), "custom")
        if self.dirs.exists_annotated(image):
            return []
        reason = f"Invalid image file: {image}"
        return [
            comfy_error(
                "custom_validation_failed",
                "Custom validation failed for node",
                f"{x} - {reason}",
                input_name=x,
            )
            for x in given
        ]


def _invalid_prompt(message: str, node_id: Any) -> ValidationResult:
    error = comfy_error("invalid_prompt", message, f"Node ID '#{node_id}'")
    return ValidationResult(False, error, [], {})


def validate_prompt(
    prompt: Any, schema: NodeSchema, dirs: DataDirs, partial_targets: Any = None
) -> ValidationResult:
    """`execution.validate_prompt`. Raises where ComfyUI would crash (it then answers 500)."""
    if isinstance(prompt, str | list) and not prompt:
        prompt = {}
    if not isinstance(prompt, dict):
        raise TypeError(f"'{type(prompt).__name__}' object is not a valid prompt")
    outputs: list[str] = []
    for x, node in prompt.items():
        if not isinstance(node, dict):
            if isinstance(node, str | list | tuple) and "class_type" not in node:
                return _invalid_prompt(
                    "Cannot execute because a node is missing the class_type property.", x
                )
            raise TypeError(f"'{type(node).__name__}' object is not subscriptable")
        if "class_type" not in node:
            return _invalid_prompt(
                "Cannot execute because a node is missing the class_type property.", x
            )
        class_type = node["class_type"]
        if not isinstance(class_type, Hashable):
            raise TypeError(f"unhashable type: '{type(class_type).__name__}'")
        if not schema.has_class(class_type):
            return _invalid_prompt(f"Cannot execute because node {class_type} does not exist.", x)
        if schema.is_output(str(class_type)) and (partial_targets is None or x in partial_targets):
            outputs.append(x)
    if not outputs:
        error = comfy_error("prompt_no_outputs", "Prompt has no outputs", "")
        return ValidationResult(False, error, [], {})

    validator = _Validator(prompt, schema, dirs)
    good: list[str] = []
    failed: list[tuple[str, list[dict[str, Any]]]] = []
    node_errors: dict[str, Any] = {}
    validated: dict[str, Result] = {}
    for o in outputs:
        try:
            valid, reasons, _ = validator.validate_inputs(o, validated)
        except Exception as ex:
            valid = False
            reasons = [
                comfy_error(
                    "exception_during_validation",
                    "Exception when validating node",
                    str(ex),
                    exception_type=full_type_name(type(ex)),
                    traceback=[frame("prompt"), *frames_of(ex)],
                )
            ]
            validated[o] = (False, reasons, o)
        if valid is True:
            good.append(o)
            continue
        failed.append((o, reasons))
        for node_id, (node_valid, node_reasons, _) in validated.items():
            if node_valid is not True and node_reasons:
                if node_id not in node_errors:
                    node_errors[node_id] = {
                        "errors": node_reasons,
                        "dependent_outputs": [],
                        "class_type": prompt[node_id]["class_type"],
                    }
                node_errors[node_id]["dependent_outputs"].append(o)
    if not good:
        details = "\n".join(f"{e['message']}: {e['details']}" for _, es in failed for e in es)
        error = comfy_error(
            "prompt_outputs_failed_validation", "Prompt outputs failed validation", details
        )
        return ValidationResult(False, error, [], node_errors)
    return ValidationResult(True, None, good, node_errors)
