"""The declarative parameter map of a workflow (``workflows/<name>/params.yaml``)."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

ParamType = Literal["string", "integer", "number", "boolean", "loras"]

#: ``"<node id>.<input name>"``; node ids may not contain dots, input names may.
TARGET_RE = re.compile(r"^(?P<node>[^.\s]+)\.(?P<input>[A-Za-z0-9_][A-Za-z0-9_.\- ]*)$")
PARAM_NAME_RE = r"^[a-z][a-z0-9_]*$"

#: Largest integer a JavaScript client can hold exactly; random seeds stay below it.
JS_SAFE_INT_MAX = 2**53 - 1


def split_target(target: str) -> tuple[str, str]:
    """``"45.noise_seed"`` -> ``("45", "noise_seed")``."""
    match = TARGET_RE.match(target)
    if not match:
        raise ValueError(f'target {target!r} is not "<node id>.<input name>"')
    return match["node"], match["input"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraChain(_Strict):
    """Where and how a ``loras`` parameter inserts its chain of LoRA loader nodes.

    Rendering takes every input that reads output ``output`` of node ``after`` (the diffusion
    model loader), inserts one ``class_type`` node per requested LoRA, chained through
    ``model_input``, and points those inputs at the last node of the chain.
    """

    after: str = Field(description="node id whose output feeds the chain (the UNET loader)")
    output: int = Field(default=0, ge=0, description="output index of that node (MODEL)")
    class_type: str = "LoraLoaderModelOnly"
    model_input: str = "model"
    name_input: str = "lora_name"
    strength_input: str = "strength_model"
    extra_inputs: dict[str, Any] = Field(
        default_factory=dict, description="constant inputs set on every inserted node"
    )


class ParamSpec(_Strict):
    """One request parameter: its type, bounds, default and the graph inputs it sets."""

    name: str = Field(pattern=PARAM_NAME_RE)
    type: ParamType
    description: str = ""
    required: bool = False
    default: Any = None
    random: bool = Field(
        default=False,
        description="integer only: when omitted or null, pick a random value in bounds",
    )
    min: int | float | None = None
    max: int | float | None = None
    multiple_of: int | float | None = Field(default=None, gt=0)
    enum: list[str | int | float] | None = None
    min_length: int | None = Field(default=None, ge=0)
    max_length: int | None = Field(default=None, ge=0)
    max_items: int | None = Field(default=None, ge=0)
    format: Literal["filename"] | None = None
    targets: list[str] = Field(default_factory=list)
    aliases: list[str] = Field(default_factory=list)
    alias_note: str | None = None
    ignored: str | None = Field(
        default=None,
        description="why this workflow cannot honour the parameter; it is accepted, "
        "validated and reported as ignored, never applied",
    )
    lora_chain: LoraChain | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ParamSpec:
        problems: list[str] = []
        numeric = self.type in ("integer", "number")
        if not numeric and self.multiple_of is not None:
            problems.append("multiple_of applies to integer/number parameters only")
        if self.type not in ("integer", "number", "loras") and (
            self.min is not None or self.max is not None
        ):
            problems.append("min/max apply to integer, number and loras (strength) only")
        if self.type != "string" and (
            self.min_length is not None or self.max_length is not None or self.format
        ):
            problems.append("min_length/max_length/format apply to string parameters only")
        if self.type != "loras" and (self.max_items is not None or self.lora_chain):
            problems.append("max_items/lora_chain apply to loras parameters only")
        if self.type == "loras" and self.ignored is None and self.lora_chain is None:
            problems.append("a loras parameter needs a lora_chain")
        if self.type in ("boolean", "loras") and self.enum is not None:
            problems.append("enum does not apply to boolean/loras parameters")
        if self.random and self.type != "integer":
            problems.append("random applies to integer parameters only")
        if self.required and (self.default is not None or self.random):
            problems.append("a required parameter has no default and is not random")
        if self.min is not None and self.max is not None and self.min > self.max:
            problems.append("min is greater than max")
        if self.ignored is not None and (self.targets or self.lora_chain):
            problems.append("an ignored parameter has no targets")
        if self.ignored is None and self.type != "loras" and not self.targets:
            problems.append("a parameter needs at least one target (or `ignored: <reason>`)")
        if self.type == "loras" and self.targets:
            problems.append("a loras parameter is applied through lora_chain, not targets")
        for target in self.targets:
            if not TARGET_RE.match(target):
                problems.append(f'target {target!r} is not "<node id>.<input name>"')
        if len(set(self.targets)) != len(self.targets):
            problems.append("duplicate targets")
        if self.alias_note and not self.aliases:
            problems.append("alias_note without aliases")
        for alias in self.aliases:
            if not re.match(PARAM_NAME_RE, alias) or alias == self.name:
                problems.append(f"bad alias {alias!r}")
        if problems:
            raise ValueError(f"parameter {self.name!r}: " + "; ".join(problems))
        return self

    @property
    def random_max(self) -> int:
        """Upper bound for a randomly chosen value (kept JavaScript-safe)."""
        upper = JS_SAFE_INT_MAX if self.max is None else min(int(self.max), JS_SAFE_INT_MAX)
        return upper

    @property
    def random_min(self) -> int:
        return 0 if self.min is None else int(self.min)


class ModelFile(_Strict):
    """A weights file the workflow loads (informational: what to download, and where)."""

    folder: str = Field(description="ComfyUI models/ sub-folder, e.g. diffusion_models")
    file: str
    source: str = Field(default="", description="where to get it, e.g. a Hugging Face repo")
    size: str = ""
    gated: bool = False


class WorkflowSpec(_Strict):
    """The whole ``params.yaml``."""

    description: str
    tags: list[str] = Field(default_factory=list)
    notes: str = ""
    models: list[ModelFile] = Field(default_factory=list)
    custom_nodes: list[str] = Field(
        default_factory=list, description="custom node packs the workflow needs"
    )
    outputs: list[str] = Field(
        min_length=1,
        description="ids of the SaveImage-like nodes whose filename_prefix the renderer sets",
    )
    parameters: list[ParamSpec] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_names(self) -> WorkflowSpec:
        seen: dict[str, str] = {}
        for param in self.parameters:
            for key in (param.name, *param.aliases):
                if key in seen:
                    raise ValueError(
                        f"name {key!r} is used by both {seen[key]!r} and {param.name!r}"
                    )
                seen[key] = param.name
        if len(set(self.outputs)) != len(self.outputs):
            raise ValueError("duplicate ids in outputs")
        return self

    def param(self, name: str) -> ParamSpec:
        for param in self.parameters:
            if param.name == name:
                return param
        raise KeyError(name)
