"""Validation of request parameters against a workflow's parameter map."""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .errors import ParameterError, ParamIssue
from .spec import ParamSpec, WorkflowSpec

#: Set by the server for every render; a client may not choose them.
RESERVED_PARAMETERS: Mapping[str, str] = {
    "filename_prefix": "the server sets SaveImage's filename_prefix to "
    "<subfolder>/<prompt_id> so outputs never collide across pods",
}

#: File extensions ComfyUI lists for model folders (folder_paths.supported_pt_extensions).
MODEL_FILE_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".bin", ".pth", ".safetensors", ".pkl", ".sft")


class LoraRef(BaseModel):
    """One LoRA to apply: a file name from ComfyUI's models/loras and its strength."""

    model_config = ConfigDict(frozen=True)

    name: str
    strength: float = 1.0


class ValidatedParams(BaseModel):
    """Parameters checked against one workflow, defaults filled in.

    ``values`` holds every parameter of the workflow under its canonical name (aliases
    resolved). A ``random`` parameter (seed) left out or null is ``None`` here: the value is
    chosen at render time and returned in the render result.
    """

    model_config = ConfigDict(frozen=True)

    workflow: str
    values: dict[str, Any]
    supplied: frozenset[str] = Field(description="canonical names the request gave")
    ignored: dict[str, str] = Field(
        default_factory=dict, description="supplied parameters the workflow cannot honour"
    )
    warnings: list[str] = Field(default_factory=list)


def validate_params(
    workflow: str, spec: WorkflowSpec, raw: object, *, strict: bool = False
) -> ValidatedParams:
    """Check ``raw`` (the request's parameter object) against ``spec``.

    Raises :class:`ParameterError` listing every problem. Unknown names are rejected. A
    parameter the workflow declares as ``ignored`` (e.g. ``negative_prompt`` on Flux) is
    type-checked and then reported in ``ignored``/``warnings``; with ``strict=True`` it is
    rejected instead (rule ``unsupported``). ``null`` means "not given" (use the default; for
    a random parameter such as ``seed``: pick one).
    """
    if not isinstance(raw, Mapping):
        raise ParameterError(
            workflow, [ParamIssue(field="", rule="body", message="parameters must be an object")]
        )
    by_key: dict[str, ParamSpec] = {}
    for declared in spec.parameters:
        by_key[declared.name] = declared
        for alias in declared.aliases:
            by_key[alias] = declared

    issues: list[ParamIssue] = []
    given: dict[str, tuple[str, object]] = {}  # canonical name -> (key used, value)
    warnings: list[str] = []
    for key, value in raw.items():
        if not isinstance(key, str):
            issues.append(ParamIssue(field=str(key), rule="type", message="names must be strings"))
            continue
        if key in RESERVED_PARAMETERS:
            issues.append(ParamIssue(field=key, rule="reserved", message=RESERVED_PARAMETERS[key]))
            continue
        found = by_key.get(key)
        if found is None:
            issues.append(_unknown(key, by_key))
            continue
        if value is None:  # null means "not given"
            continue
        if found.name in given:
            other = given[found.name][0]
            issues.append(
                ParamIssue(
                    field=key,
                    rule="conflict",
                    message=f"{key!r} and {other!r} are the same parameter; give only one",
                )
            )
            continue
        given[found.name] = (key, value)

    values: dict[str, Any] = {}
    supplied: set[str] = set()
    ignored: dict[str, str] = {}
    for param in spec.parameters:
        key, value = given.get(param.name, (param.name, None))
        if value is None:
            if param.required:
                issues.append(ParamIssue(field=param.name, rule="required", message="is required"))
            values[param.name] = _copy_default(param)
            continue
        checked, problems = check_value(param, key, value)
        issues.extend(problems)
        if problems:
            continue
        supplied.add(param.name)
        values[param.name] = checked
        if key != param.name and param.ignored is None:
            note = f": {param.alias_note}" if param.alias_note else ""
            warnings.append(f"{key!r} was applied as {param.name!r}{note}")
        if param.ignored is not None and not _is_empty(checked):
            if strict:
                issues.append(ParamIssue(field=key, rule="unsupported", message=param.ignored))
            else:
                ignored[key] = param.ignored
                warnings.append(f"{key!r} was ignored: {param.ignored}")
    if issues:
        raise ParameterError(workflow, issues)
    return ValidatedParams(
        workflow=workflow,
        values=values,
        supplied=frozenset(supplied),
        ignored=ignored,
        warnings=warnings,
    )


def _unknown(key: str, by_key: Mapping[str, ParamSpec]) -> ParamIssue:
    close = difflib.get_close_matches(key, list(by_key), n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    known = ", ".join(sorted({p.name for p in by_key.values()})) or "none"
    return ParamIssue(
        field=key,
        rule="unknown",
        message=f"unknown parameter{hint} (this workflow takes: {known})",
    )


def _is_empty(value: object) -> bool:
    return value is None or value == "" or value == []


def _copy_default(param: ParamSpec) -> Any:
    if param.type == "loras":
        return [LoraRef.model_validate(item) for item in (param.default or [])]
    return param.default


def check_value(param: ParamSpec, field: str, value: object) -> tuple[Any, list[ParamIssue]]:
    """Validate one non-null value; returns ``(normalised value, problems)``."""
    if param.type == "loras":
        return _check_loras(param, field, value)
    if param.type == "boolean":
        if not isinstance(value, bool):
            return None, [_type(field, "a boolean")]
        return value, []
    if param.type == "string":
        if not isinstance(value, str):
            return None, [_type(field, "a string")]
        return value, _check_string(param, field, value)
    if param.type == "integer":
        number = _as_integer(value)
        if number is None:
            return None, [_type(field, "an integer")]
        return number, _check_number(param, field, number)
    number_f = _as_number(value)
    if number_f is None:
        return None, [_type(field, "a finite number")]
    return number_f, _check_number(param, field, number_f)


def _type(field: str, expected: str) -> ParamIssue:
    return ParamIssue(field=field, rule="type", message=f"must be {expected}")


def _as_integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value)
    return None


def _as_number(value: object) -> int | float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _check_number(param: ParamSpec, field: str, value: int | float) -> list[ParamIssue]:
    issues: list[ParamIssue] = []
    if param.min is not None and value < param.min:
        issues.append(ParamIssue(field=field, rule="min", message=f"must be >= {param.min}"))
    if param.max is not None and value > param.max:
        issues.append(ParamIssue(field=field, rule="max", message=f"must be <= {param.max}"))
    if param.multiple_of is not None and not _is_multiple(value, param.multiple_of):
        issues.append(
            ParamIssue(
                field=field,
                rule="multiple_of",
                message=f"must be a multiple of {param.multiple_of}",
            )
        )
    if param.enum is not None and value not in param.enum:
        issues.append(_enum(field, param.enum))
    return issues


def _is_multiple(value: int | float, step: int | float) -> bool:
    if isinstance(value, int) and isinstance(step, int):
        return value % step == 0
    quotient = value / step
    return math.isclose(quotient, round(quotient), rel_tol=0.0, abs_tol=1e-9)


def _enum(field: str, allowed: list[str | int | float]) -> ParamIssue:
    shown = ", ".join(repr(a) for a in allowed)
    return ParamIssue(field=field, rule="enum", message=f"must be one of: {shown}")


def _check_string(param: ParamSpec, field: str, value: str) -> list[ParamIssue]:
    issues: list[ParamIssue] = []
    if param.min_length is not None and len(value) < param.min_length:
        what = "must not be empty" if param.min_length == 1 else None
        issues.append(
            ParamIssue(
                field=field,
                rule="min_length",
                message=what or f"must be at least {param.min_length} characters",
            )
        )
    if param.max_length is not None and len(value) > param.max_length:
        issues.append(
            ParamIssue(
                field=field,
                rule="max_length",
                message=f"must be at most {param.max_length} characters",
            )
        )
    if param.enum is not None and value not in param.enum:
        issues.append(_enum(field, param.enum))
    if param.format == "filename" and not any(i.rule == "min_length" for i in issues):
        problem = filename_problem(value)
        if problem:
            issues.append(ParamIssue(field=field, rule="format", message=problem))
    return issues


def filename_problem(value: str) -> str | None:
    """Why ``value`` is not a safe relative file name for a ComfyUI folder, or ``None``."""
    if not value:
        return "must not be empty"
    if "\x00" in value or "\\" in value:
        return "must not contain backslashes or NUL characters"
    if value.startswith("/"):
        return "must be a relative file name"
    if any(part in ("", ".", "..") for part in value.split("/")):
        return "must not contain empty, '.' or '..' path segments"
    return None


def _check_loras(param: ParamSpec, field: str, value: object) -> tuple[Any, list[ParamIssue]]:
    if not isinstance(value, list):
        return None, [_type(field, "a list of {name, strength} objects")]
    issues: list[ParamIssue] = []
    if param.max_items is not None and len(value) > param.max_items:
        issues.append(
            ParamIssue(
                field=field,
                rule="max_items",
                message=f"at most {param.max_items} LoRAs",
            )
        )
    refs: list[LoraRef] = []
    for index, item in enumerate(value):
        where = f"{field}[{index}]"
        if isinstance(item, str):  # shorthand: just the file name, strength 1.0
            item = {"name": item}
        if not isinstance(item, Mapping):
            issues.append(_type(where, "an object {name, strength}"))
            continue
        item_issues: list[ParamIssue] = []
        for key in item:
            if key not in ("name", "strength", "weight"):
                item_issues.append(
                    ParamIssue(
                        field=f"{where}.{key}",
                        rule="unknown",
                        message="a LoRA takes only name and strength (or weight)",
                    )
                )
        if "strength" in item and "weight" in item:
            item_issues.append(
                ParamIssue(
                    field=f"{where}.weight",
                    rule="conflict",
                    message="weight is an alias of strength; give only one",
                )
            )
        name = item.get("name")
        if name is None:
            item_issues.append(
                ParamIssue(field=f"{where}.name", rule="required", message="is required")
            )
        elif not isinstance(name, str):
            item_issues.append(_type(f"{where}.name", "a string"))
        else:
            problem = filename_problem(name)
            if problem is None and not name.lower().endswith(MODEL_FILE_EXTENSIONS):
                problem = (
                    "must be a file name in ComfyUI's models/loras, with its extension "
                    "(e.g. 'my_style.safetensors')"
                )
            if problem:
                item_issues.append(
                    ParamIssue(field=f"{where}.name", rule="format", message=problem)
                )
            elif param.enum is not None and name not in param.enum:
                item_issues.append(_enum(f"{where}.name", param.enum))
        strength_key = "weight" if "weight" in item and "strength" not in item else "strength"
        raw_strength = item.get(strength_key, 1.0)
        strength = _as_number(raw_strength)
        if strength is None:
            item_issues.append(_type(f"{where}.{strength_key}", "a finite number"))
        else:
            if param.min is not None and strength < param.min:
                item_issues.append(
                    ParamIssue(
                        field=f"{where}.{strength_key}",
                        rule="min",
                        message=f"must be >= {param.min}",
                    )
                )
            if param.max is not None and strength > param.max:
                item_issues.append(
                    ParamIssue(
                        field=f"{where}.{strength_key}",
                        rule="max",
                        message=f"must be <= {param.max}",
                    )
                )
        issues.extend(item_issues)
        if not item_issues and isinstance(name, str) and strength is not None:
            refs.append(LoraRef(name=name, strength=float(strength)))
    return refs, issues
