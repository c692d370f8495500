"""Loading the workflow library: ``<dir>/<name>/workflow.json`` + ``params.yaml``."""

from __future__ import annotations

import copy
import json
import os
import random
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .errors import (
    UnknownWorkflowError,
    WorkflowDefinitionError,
    WorkflowLibraryNotFoundError,
)
from .graph import Graph, consumers, is_link, structure_problems
from .render import RenderResult, render_graph
from .spec import ParamSpec, WorkflowSpec, split_target
from .validation import ValidatedParams, check_value, validate_params

#: Environment variable naming the library directory (the container image sets it).
WORKFLOWS_DIR_ENV = "SERVERLESS_COMFYUI_WORKFLOWS_DIR"
WORKFLOW_FILE = "workflow.json"
PARAMS_FILE = "params.yaml"
#: Folder of object_info-shaped JSON files describing custom nodes the library uses.
SCHEMAS_DIR = "_schemas"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_\-]*$")


def default_workflows_dir() -> Path:
    """``$SERVERLESS_COMFYUI_WORKFLOWS_DIR``, else the checkout's ``workflows/`` folder."""
    configured = os.environ.get(WORKFLOWS_DIR_ENV)
    if configured:
        return Path(configured)
    # operator/src/serverless_comfyui/workflows/library.py -> repository root
    checkout = Path(__file__).resolve().parents[4] / "workflows"
    if checkout.is_dir():
        return checkout
    raise WorkflowLibraryNotFoundError(
        f"no workflow library: set {WORKFLOWS_DIR_ENV} to the folder holding "
        f"<name>/{WORKFLOW_FILE} and <name>/{PARAMS_FILE} (looked for {checkout})"
    )


class Workflow:
    """One workflow: its API-format template graph and its parameter map."""

    def __init__(self, name: str, spec: WorkflowSpec, template: Graph, path: Path | None = None):
        problems = definition_problems(spec, template)
        if problems:
            raise WorkflowDefinitionError(str(path or name), problems)
        self.name = name
        self.spec = spec
        self.path = path
        self._template: Graph = copy.deepcopy(template)

    def __repr__(self) -> str:
        return f"Workflow({self.name!r})"

    @property
    def description(self) -> str:
        return self.spec.description

    @property
    def parameters(self) -> list[ParamSpec]:
        return list(self.spec.parameters)

    @property
    def template(self) -> Graph:
        """A copy of the template graph (mutating it does not affect the workflow)."""
        return copy.deepcopy(self._template)

    def validate_params(self, params: object, *, strict: bool = False) -> ValidatedParams:
        """Check request parameters; raises :class:`ParameterError` with every problem."""
        return validate_params(self.name, self.spec, params, strict=strict)

    def render(
        self,
        params: ValidatedParams | Mapping[str, Any],
        *,
        prompt_id: str,
        output_prefix: str = "",
        rng: random.Random | None = None,
    ) -> RenderResult:
        """Render the prompt graph for one request.

        ``params`` is either the result of :meth:`validate_params` or a raw mapping (validated
        here). Every SaveImage-like output gets ``filename_prefix = <output_prefix>/<prompt_id>``.
        ``rng`` only matters for random parameters left unset (the seed); by default a
        system random source is used.
        """
        if not isinstance(params, ValidatedParams):
            params = self.validate_params(params)
        elif params.workflow != self.name:
            raise ValueError(
                f"parameters were validated for {params.workflow!r}, not for {self.name!r}"
            )
        return render_graph(
            self.spec,
            self._template,
            params,
            prompt_id=prompt_id,
            output_prefix=output_prefix,
            rng=rng,
        )

    def parameters_schema(self) -> dict[str, Any]:
        """A JSON Schema (draft 2020-12) for this workflow's request parameters."""
        properties: dict[str, Any] = {}
        required: list[str] = []
        for param in self.spec.parameters:
            schema = _param_schema(param)
            properties[param.name] = schema
            for alias in param.aliases:
                properties[alias] = {**schema, "description": f"alias of {param.name}"}
            if param.required:
                required.append(param.name)
        return {
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": self.name,
            "description": self.spec.description,
            "type": "object",
            "properties": properties,
            "required": required,
            "additionalProperties": False,
        }


def _param_schema(param: ParamSpec) -> dict[str, Any]:
    type_map = {"string": "string", "integer": "integer", "number": "number", "boolean": "boolean"}
    schema: dict[str, Any] = {"description": param.description}
    if param.type == "loras":
        strength: dict[str, Any] = {"type": "number", "default": 1.0}
        if param.min is not None:
            strength["minimum"] = param.min
        if param.max is not None:
            strength["maximum"] = param.max
        schema.update(
            type="array",
            items={
                "type": "object",
                "properties": {"name": {"type": "string"}, "strength": strength},
                "required": ["name"],
                "additionalProperties": False,
            },
            default=param.default or [],
        )
        if param.max_items is not None:
            schema["maxItems"] = param.max_items
        return schema
    schema["type"] = [type_map[param.type], "null"] if param.random else type_map[param.type]
    if param.default is not None or param.random:
        schema["default"] = param.default
    for key, word in (
        ("min", "minimum"),
        ("max", "maximum"),
        ("multiple_of", "multipleOf"),
        ("enum", "enum"),
        ("min_length", "minLength"),
        ("max_length", "maxLength"),
    ):
        value = getattr(param, key)
        if value is not None:
            schema[word] = value
    if param.ignored:
        schema["description"] = f"{param.description} (ignored by this workflow: {param.ignored})"
    return schema


def definition_problems(spec: WorkflowSpec, template: object) -> list[str]:
    """Inconsistencies between a parameter map and its template graph (schema-free)."""
    problems = structure_problems(template)
    if problems or not isinstance(template, dict):
        return problems
    graph: Graph = template

    def literal_input(target: str, what: str) -> None:
        node_id, input_name = split_target(target)
        node = graph.get(node_id)
        if node is None:
            problems.append(f"{what}: node {node_id!r} does not exist")
        elif input_name not in node["inputs"]:
            problems.append(
                f"{what}: node {node_id!r} ({node['class_type']}) has no input {input_name!r} "
                "in the template"
            )
        elif is_link(node["inputs"][input_name]):
            problems.append(f"{what}: {target} is a link, not a literal input")

    for param in spec.parameters:
        where = f"parameter {param.name!r}"
        for target in param.targets:
            literal_input(target, where)
        if param.default is not None:
            _, issues = check_value(param, param.name, param.default)
            problems.extend(f"{where}: default {i.message}" for i in issues)
        chain = param.lora_chain
        if chain is not None:
            node = graph.get(chain.after)
            if node is None:
                problems.append(f"{where}: lora_chain.after node {chain.after!r} does not exist")
            elif not consumers(graph, chain.after, chain.output):
                problems.append(
                    f"{where}: nothing reads output {chain.output} of node {chain.after!r}"
                )
    for node_id in spec.outputs:
        literal_input(f"{node_id}.filename_prefix", "outputs")
    for node_id, node in graph.items():
        if "filename_prefix" in node["inputs"] and node_id not in spec.outputs:
            problems.append(
                f"node {node_id!r} ({node['class_type']}) has a filename_prefix but is not "
                "listed in outputs (its files could collide across pods)"
            )
    return problems


def load_workflow(folder: Path) -> Workflow:
    """Load ``folder/workflow.json`` and ``folder/params.yaml``; the folder name is the name."""
    name = folder.name
    if not _NAME_RE.match(name):
        raise WorkflowDefinitionError(
            str(folder), ["folder name must match [a-z0-9][a-z0-9_-]* (it is the workflow name)"]
        )
    problems: list[str] = []
    template: object = None
    try:
        template = json.loads((folder / WORKFLOW_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        problems.append(f"{WORKFLOW_FILE}: {exc}")
    spec: WorkflowSpec | None = None
    try:
        raw = yaml.safe_load((folder / PARAMS_FILE).read_text(encoding="utf-8"))
        spec = WorkflowSpec.model_validate(raw)
    except (OSError, yaml.YAMLError) as exc:
        problems.append(f"{PARAMS_FILE}: {exc}")
    except ValidationError as exc:
        for err in exc.errors():
            loc = ".".join(str(p) for p in err["loc"])
            problems.append(f"{PARAMS_FILE}: {loc}: {err['msg']}")
    if problems or spec is None:
        raise WorkflowDefinitionError(str(folder), problems)
    if not isinstance(template, dict):
        raise WorkflowDefinitionError(str(folder), [f"{WORKFLOW_FILE}: must be a JSON object"])
    return Workflow(name, spec, template, path=folder)


class WorkflowLibrary:
    """The set of workflows a deployment serves, by name."""

    def __init__(
        self,
        workflows: Mapping[str, Workflow],
        path: Path | None = None,
        custom_node_schemas: Mapping[str, Any] | None = None,
    ):
        self._workflows = dict(workflows)
        self.path = path
        #: object_info-shaped schemas of the custom nodes the library uses (``_schemas/``).
        self.custom_node_schemas: dict[str, Any] = dict(custom_node_schemas or {})

    def get(self, name: str) -> Workflow:
        try:
            return self._workflows[name]
        except KeyError:
            raise UnknownWorkflowError(name, self._workflows) from None

    def names(self) -> list[str]:
        return sorted(self._workflows)

    def __contains__(self, name: object) -> bool:
        return name in self._workflows

    def __iter__(self) -> Iterator[Workflow]:
        return iter(self._workflows[name] for name in self.names())

    def __len__(self) -> int:
        return len(self._workflows)


def load_library(path: str | os.PathLike[str] | None = None) -> WorkflowLibrary:
    """Load every workflow under ``path`` (default: :func:`default_workflows_dir`).

    Each sub-folder not starting with ``_`` or ``.`` is one workflow and must hold
    ``workflow.json`` and ``params.yaml``. All problems across the library are reported at
    once in a :class:`WorkflowDefinitionError`.
    """
    root = Path(path) if path is not None else default_workflows_dir()
    if not root.is_dir():
        raise WorkflowLibraryNotFoundError(f"workflow library {root} is not a directory")
    workflows: dict[str, Workflow] = {}
    problems: list[str] = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        if folder.name.startswith(("_", ".")):
            continue
        try:
            workflows[folder.name] = load_workflow(folder)
        except WorkflowDefinitionError as exc:
            problems += [f"{folder.name}: {p}" for p in exc.problems]
    schemas: dict[str, Any] = {}
    schema_dir = root / SCHEMAS_DIR
    if schema_dir.is_dir():
        for file in sorted(schema_dir.glob("*.json")):
            try:
                data = json.loads(file.read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                problems.append(f"{SCHEMAS_DIR}/{file.name}: {exc}")
                continue
            if not isinstance(data, dict):
                problems.append(f"{SCHEMAS_DIR}/{file.name}: must be a JSON object")
                continue
            schemas.update({k: v for k, v in data.items() if not k.startswith("_")})
    if problems:
        raise WorkflowDefinitionError(str(root), problems)
    if not workflows:
        raise WorkflowLibraryNotFoundError(f"workflow library {root} holds no workflows")
    return WorkflowLibrary(workflows, path=root, custom_node_schemas=schemas)


__all__ = [
    "WORKFLOWS_DIR_ENV",
    "Workflow",
    "WorkflowLibrary",
    "default_workflows_dir",
    "load_library",
    "load_workflow",
]
