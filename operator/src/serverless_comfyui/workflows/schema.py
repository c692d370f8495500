"""Checking graphs and parameter maps against ComfyUI node schemas (``GET /object_info``).

ComfyUI describes each node class as ``{"input": {"required": {...}, "optional": {...},
"hidden": {...}}, "output": [...types], "output_node": bool, ...}`` where an input is
``[TYPE, {options}]`` with TYPE one of INT / FLOAT / STRING / BOOLEAN, a link type such as
MODEL or CLIP, a list of allowed values (a combo), or ``"COMBO"`` with ``options`` listing them.

Combos that list model or input *files* (``unet_name``, ``lora_name``, ``image`` ...) depend on
what a given ComfyUI has installed, so they are checked as "a safe relative file name", not
against the recorded list.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .graph import Graph, is_link, structure_problems
from .library import Workflow
from .spec import LoraChain, ParamSpec, split_target
from .validation import filename_problem

PRIMITIVE_TYPES = frozenset({"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"})

#: Combo inputs whose options are file names that vary with the installation.
FILE_INPUTS = frozenset(
    {
        "unet_name",
        "ckpt_name",
        "clip_name",
        "clip_name1",
        "clip_name2",
        "clip_name3",
        "clip_name4",
        "vae_name",
        "lora_name",
        "control_net_name",
        "image",
        "model_path",  # Nunchaku DiT loader: a folder or .safetensors under diffusion_models
        "text_encoder1",
        "text_encoder2",
    }
)


@dataclass(frozen=True)
class InputSchema:
    """One input of a node class."""

    name: str
    type: str  # INT, FLOAT, STRING, BOOLEAN, COMBO or a link type (MODEL, CLIP, ...)
    required: bool
    options: tuple[Any, ...] | None = None
    min: int | float | None = None
    max: int | float | None = None
    step: int | float | None = None

    @property
    def is_link_type(self) -> bool:
        return self.type not in PRIMITIVE_TYPES


@dataclass(frozen=True)
class NodeSchema:
    """One node class: its inputs and output types."""

    class_type: str
    inputs: Mapping[str, InputSchema]
    outputs: tuple[str, ...]
    output_node: bool


def _parse_input(name: str, entry: object, required: bool) -> InputSchema:
    if not isinstance(entry, list | tuple) or not entry:
        raise ValueError(f"input {name!r}: expected [TYPE, options?], got {entry!r}")
    head = entry[0]
    opts = entry[1] if len(entry) > 1 and isinstance(entry[1], Mapping) else {}
    options: tuple[Any, ...] | None = None
    if isinstance(head, list | tuple):
        type_name, options = "COMBO", tuple(head)
    elif head == "COMBO":
        type_name, options = "COMBO", tuple(opts.get("options", ()))
    elif isinstance(head, str):
        type_name = head
    else:
        raise ValueError(f"input {name!r}: unexpected type {head!r}")

    def number(key: str) -> int | float | None:
        value = opts.get(key)  # kept exact: seeds go up to 2**64 - 1, beyond float precision
        if isinstance(value, bool) or not isinstance(value, int | float):
            return None
        return value

    return InputSchema(
        name=name,
        type=type_name,
        required=required,
        options=options,
        min=number("min"),
        max=number("max"),
        step=number("step"),
    )


class NodeSchemas:
    """Node classes by name, parsed from one or more ``/object_info`` documents."""

    def __init__(self, classes: Mapping[str, NodeSchema]):
        self._classes = dict(classes)

    @classmethod
    def from_object_info(cls, *documents: Mapping[str, Any]) -> NodeSchemas:
        """Later documents override earlier ones; keys starting with ``_`` are skipped."""
        classes: dict[str, NodeSchema] = {}
        for document in documents:
            for class_type, info in document.items():
                if class_type.startswith("_"):
                    continue
                inputs: dict[str, InputSchema] = {}
                sections = info.get("input", {})
                for section, required in (("required", True), ("optional", False)):
                    for name, entry in (sections.get(section) or {}).items():
                        inputs[name] = _parse_input(name, entry, required)
                classes[class_type] = NodeSchema(
                    class_type=class_type,
                    inputs=inputs,
                    outputs=tuple(info.get("output", ())),
                    output_node=bool(info.get("output_node", False)),
                )
        return cls(classes)

    def get(self, class_type: str) -> NodeSchema | None:
        return self._classes.get(class_type)

    def __contains__(self, class_type: object) -> bool:
        return class_type in self._classes

    def names(self) -> list[str]:
        return sorted(self._classes)


def literal_problem(spec: InputSchema, value: object, *, file_inputs: Iterable[str]) -> str | None:
    """Why ComfyUI would refuse ``value`` for this input, or ``None`` if it accepts it."""
    if spec.is_link_type:
        return f"expects a link of type {spec.type}, got a literal"
    if spec.type == "INT":
        if isinstance(value, bool) or not isinstance(value, int):
            return f"expects an INT, got {value!r}"
    elif spec.type == "FLOAT":
        if isinstance(value, bool) or not isinstance(value, int | float):
            return f"expects a FLOAT, got {value!r}"
    elif spec.type == "STRING":
        if not isinstance(value, str):
            return f"expects a STRING, got {value!r}"
    elif spec.type == "BOOLEAN":
        if not isinstance(value, bool):
            return f"expects a BOOLEAN, got {value!r}"
    elif spec.type == "COMBO":
        if spec.name in file_inputs:
            if not isinstance(value, str):
                return f"expects a file name, got {value!r}"
            return filename_problem(value)
        if spec.options is None or value not in spec.options:
            return f"{value!r} is not one of {list(spec.options or ())}"
    if spec.type in ("INT", "FLOAT") and isinstance(value, int | float):
        if spec.min is not None and value < spec.min:
            return f"{value} is below the minimum {spec.min}"
        if spec.max is not None and value > spec.max:
            return f"{value} is above the maximum {spec.max}"
    return None


def _types_match(output_type: str, input_type: str) -> bool:
    if "*" in (output_type, input_type) or input_type == "COMBO":
        return True
    return bool(set(output_type.split(",")) & set(input_type.split(",")))


def check_graph(
    graph: object, schemas: NodeSchemas, *, file_inputs: Iterable[str] = FILE_INPUTS
) -> list[str]:
    """Every problem ComfyUI's prompt validation would find in ``graph`` (and a few more).

    Unknown classes, unknown or missing inputs, literal values of the wrong type / out of
    bounds / not in the combo, links to missing nodes or output indexes, links whose types do
    not match, cycles, and a graph without an output node.
    """
    problems = structure_problems(graph)
    if problems or not isinstance(graph, dict):
        return problems
    nodes: Graph = graph
    file_inputs = frozenset(file_inputs)
    has_output = False
    for node_id, node in nodes.items():
        class_type = node["class_type"]
        where = f"node {node_id!r} ({class_type})"
        schema = schemas.get(class_type)
        if schema is None:
            problems.append(f"{where}: unknown node class")
            continue
        has_output = has_output or schema.output_node
        inputs: dict[str, Any] = node["inputs"]
        for name, declared in schema.inputs.items():
            if declared.required and name not in inputs:
                problems.append(f"{where}: required input {name!r} is missing")
        for name, value in inputs.items():
            input_schema = schema.inputs.get(name)
            if input_schema is None:
                problems.append(f"{where}: no input named {name!r}")
                continue
            if is_link(value):
                source = nodes[value[0]]
                source_schema = schemas.get(source["class_type"])
                if source_schema is None:
                    continue  # reported on the source node
                if value[1] >= len(source_schema.outputs):
                    problems.append(
                        f"{where}.{name}: node {value[0]!r} ({source['class_type']}) has no "
                        f"output {value[1]} (it has {len(source_schema.outputs)})"
                    )
                    continue
                output_type = source_schema.outputs[value[1]]
                if not _types_match(output_type, input_schema.type):
                    problems.append(
                        f"{where}.{name}: expects {input_schema.type}, but output {value[1]} "
                        f"of node {value[0]!r} is {output_type}"
                    )
                continue
            problem = literal_problem(input_schema, value, file_inputs=file_inputs)
            if problem:
                problems.append(f"{where}.{name}: {problem}")
    if not has_output:
        problems.append("the graph has no output node (ComfyUI refuses a prompt without one)")
    return problems


def check_parameters(
    workflow: Workflow, schemas: NodeSchemas, *, file_inputs: Iterable[str] = FILE_INPUTS
) -> list[str]:
    """Problems with a workflow's parameter map against the node schemas.

    Each target must be an input whose type fits the parameter's type, and the parameter's
    bounds / enum must lie inside what the input accepts, so that any value that passes
    :meth:`Workflow.validate_params` also passes ComfyUI's validation. LoRA chains must name
    a known class with the given inputs and carry the right link type. Output nodes must be
    output nodes with a STRING ``filename_prefix``.
    """
    file_inputs = frozenset(file_inputs)
    graph = workflow.template
    problems: list[str] = []
    for param in workflow.parameters:
        where = f"parameter {param.name!r}"
        for target in param.targets:
            node_id, input_name = split_target(target)
            class_type = graph[node_id]["class_type"]
            node_schema = schemas.get(class_type)
            spec = node_schema.inputs.get(input_name) if node_schema else None
            if spec is None:
                problems.append(f"{where}: {target} is not an input of {class_type}")
                continue
            problems += [
                f"{where} -> {target}: {p}"
                for p in _fits(
                    param_type=param.type, spec=spec, param=param, file_inputs=file_inputs
                )
            ]
        chain = param.lora_chain
        if chain is not None:
            problems += [f"{where}: {p}" for p in _check_chain(graph, schemas, param, chain)]
    for node_id in workflow.spec.outputs:
        class_type = graph[node_id]["class_type"]
        node_schema = schemas.get(class_type)
        if node_schema is None:
            problems.append(f"outputs: node {node_id!r}: unknown class {class_type}")
            continue
        prefix = node_schema.inputs.get("filename_prefix")
        if not node_schema.output_node or prefix is None or prefix.type != "STRING":
            problems.append(
                f"outputs: node {node_id!r} ({class_type}) is not an output node with a "
                "STRING filename_prefix"
            )
    return problems


def _fits(
    *, param_type: str, spec: InputSchema, param: ParamSpec, file_inputs: frozenset[str]
) -> list[str]:
    problems: list[str] = []
    compatible = {
        "string": ("STRING", "COMBO"),
        "integer": ("INT", "FLOAT"),
        "number": ("FLOAT",),
        "boolean": ("BOOLEAN",),
    }
    if spec.type not in compatible.get(param_type, ()):
        return [f"a {param_type} parameter cannot set a {spec.type} input"]
    if spec.type == "COMBO":
        if spec.name in file_inputs:
            if param.format != "filename" and param.enum is None:
                problems.append("file-name combo: declare format: filename or an enum")
        elif param.enum is None:
            problems.append(f"combo input: declare an enum (subset of {list(spec.options or ())})")
        else:
            extra = [v for v in param.enum if v not in (spec.options or ())]
            if extra:
                problems.append(f"enum values {extra} are not accepted by the input")
        if param.default is not None:
            problem = literal_problem(spec, param.default, file_inputs=file_inputs)
            if problem:
                problems.append(f"default: {problem}")
        return problems
    if spec.type in ("INT", "FLOAT"):
        low = param.random_min if param.random and param.min is None else param.min
        high = param.max
        if spec.min is not None and (low is None or low < spec.min):
            problems.append(f"min {low} is below the input's minimum {spec.min}")
        if spec.max is not None and (high is None or high > spec.max):
            problems.append(f"max {high} is above the input's maximum {spec.max}")
        if (
            spec.type == "INT"
            and spec.step
            and spec.step > 1
            and (param.multiple_of is None or param.multiple_of % spec.step)
        ):
            problems.append(f"multiple_of should be a multiple of the input's step {spec.step}")
    return problems


def _check_chain(
    graph: Graph, schemas: NodeSchemas, param: ParamSpec, chain: LoraChain
) -> list[str]:
    problems: list[str] = []
    lora_schema = schemas.get(chain.class_type)
    if lora_schema is None:
        return [f"lora_chain: unknown class {chain.class_type}"]
    model_in = lora_schema.inputs.get(chain.model_input)
    name_in = lora_schema.inputs.get(chain.name_input)
    strength_in = lora_schema.inputs.get(chain.strength_input)
    for label, spec in (
        ("model_input", model_in),
        ("name_input", name_in),
        ("strength_input", strength_in),
    ):
        if spec is None:
            problems.append(f"lora_chain.{label}: {chain.class_type} has no such input")
    for name, input_schema in lora_schema.inputs.items():
        if (
            input_schema.required
            and name not in (chain.model_input, chain.name_input, chain.strength_input)
            and name not in chain.extra_inputs
        ):
            problems.append(f"lora_chain: required input {name!r} is not set (extra_inputs)")
    for name, value in chain.extra_inputs.items():
        spec = lora_schema.inputs.get(name)
        if spec is None:
            problems.append(f"lora_chain.extra_inputs: {chain.class_type} has no input {name!r}")
        else:
            problem = literal_problem(spec, value, file_inputs=FILE_INPUTS)
            if problem:
                problems.append(f"lora_chain.extra_inputs.{name}: {problem}")
    source_schema = schemas.get(graph[chain.after]["class_type"])
    if model_in is not None and source_schema is not None:
        if chain.output >= len(source_schema.outputs):
            problems.append(f"lora_chain: node {chain.after!r} has no output {chain.output}")
        else:
            source_type = source_schema.outputs[chain.output]
            if not _types_match(source_type, model_in.type):
                problems.append(
                    f"lora_chain: {chain.class_type}.{chain.model_input} expects "
                    f"{model_in.type}, node {chain.after!r} gives {source_type}"
                )
            if not lora_schema.outputs or lora_schema.outputs[0] != source_type:
                problems.append(
                    f"lora_chain: {chain.class_type} output 0 must be {source_type} to replace "
                    f"node {chain.after!r}'s output"
                )
    if strength_in is not None:
        if strength_in.type != "FLOAT":
            problems.append("lora_chain.strength_input must be a FLOAT input")
        if strength_in.min is not None and (param.min is None or param.min < strength_in.min):
            problems.append(f"strength min {param.min} is below the input's {strength_in.min}")
        if strength_in.max is not None and (param.max is None or param.max > strength_in.max):
            problems.append(f"strength max {param.max} is above the input's {strength_in.max}")
    if name_in is not None and name_in.type != "COMBO":
        problems.append("lora_chain.name_input must be a combo (file name) input")
    return problems


def check_workflow(
    workflow: Workflow, schemas: NodeSchemas, *, file_inputs: Iterable[str] = FILE_INPUTS
) -> list[str]:
    """:func:`check_graph` on the template plus :func:`check_parameters`."""
    return [
        *(
            f"template: {p}"
            for p in check_graph(workflow.template, schemas, file_inputs=file_inputs)
        ),
        *check_parameters(workflow, schemas, file_inputs=file_inputs),
    ]
