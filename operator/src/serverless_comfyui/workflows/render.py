"""Rendering: a workflow template plus validated parameters -> a ComfyUI prompt graph."""

from __future__ import annotations

import copy
import random
import re
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .graph import Graph, consumers, next_node_ids
from .spec import LoraChain, WorkflowSpec, split_target
from .validation import LoraRef, ValidatedParams

_PROMPT_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")
_SEGMENT_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,63}$")
_SYSTEM_RANDOM = random.SystemRandom()


class RenderResult(BaseModel):
    """What :meth:`Workflow.render` produces."""

    model_config = ConfigDict(frozen=True)

    workflow: str
    graph: dict[str, Any] = Field(description="the prompt graph to POST to ComfyUI /prompt")
    seed: int | None = Field(description="the seed actually used (None: no seed parameter)")
    params: dict[str, Any] = Field(
        description="the value applied for every parameter (ignored ones left out)"
    )
    warnings: list[str] = Field(default_factory=list)
    ignored: list[str] = Field(
        default_factory=list, description="supplied parameters the workflow could not honour"
    )
    filename_prefix: str
    output_nodes: list[str]
    lora_nodes: list[str] = Field(default_factory=list, description="ids of inserted nodes")


def filename_prefix_for(prompt_id: str, output_prefix: str = "") -> str:
    """``<output_prefix>/<prompt_id>``, after checking both are safe path pieces.

    ``prompt_id`` is one segment (a UUID in practice); ``output_prefix`` is zero or more
    ``/``-separated segments. Neither may escape ComfyUI's output directory.
    """
    if not _PROMPT_ID_RE.match(prompt_id) or ".." in prompt_id:
        raise ValueError(f"prompt_id {prompt_id!r} is not a safe file name segment")
    prefix = output_prefix.strip("/")
    if not prefix:
        return prompt_id
    segments = prefix.split("/")
    for segment in segments:
        if not _SEGMENT_RE.match(segment) or ".." in segment:
            raise ValueError(f"output_prefix {output_prefix!r} has an unsafe segment {segment!r}")
    return "/".join([*segments, prompt_id])


def render_graph(
    spec: WorkflowSpec,
    template: Graph,
    params: ValidatedParams,
    *,
    prompt_id: str,
    output_prefix: str = "",
    rng: random.Random | None = None,
) -> RenderResult:
    """Apply ``params`` to a deep copy of ``template``; no I/O, ``template`` is untouched."""
    prefix = filename_prefix_for(prompt_id, output_prefix)
    graph: Graph = copy.deepcopy(template)
    values: dict[str, Any] = dict(params.values)
    lora_nodes: list[str] = []
    for param in spec.parameters:
        if param.ignored is not None:
            continue
        value = values.get(param.name)
        if param.random and value is None:
            value = (rng or _SYSTEM_RANDOM).randint(param.random_min, param.random_max)
            values[param.name] = value
        if param.type == "loras":
            assert param.lora_chain is not None  # guaranteed by ParamSpec
            lora_nodes += insert_lora_chain(graph, param.lora_chain, value or [])
            continue
        for target in param.targets:
            node_id, input_name = split_target(target)
            graph[node_id]["inputs"][input_name] = copy.deepcopy(value)
    for index, node_id in enumerate(spec.outputs):
        suffix = f"_{index}" if len(spec.outputs) > 1 else ""
        graph[node_id]["inputs"]["filename_prefix"] = prefix + suffix
    seed = values.get("seed")
    return RenderResult(
        workflow=params.workflow,
        graph=graph,
        seed=seed if isinstance(seed, int) else None,
        params={
            p.name: _jsonable(values.get(p.name)) for p in spec.parameters if p.ignored is None
        },
        warnings=list(params.warnings),
        ignored=list(params.ignored),
        filename_prefix=prefix,
        output_nodes=list(spec.outputs),
        lora_nodes=lora_nodes,
    )


def insert_lora_chain(graph: Graph, chain: LoraChain, loras: Sequence[LoraRef]) -> list[str]:
    """Insert one ``chain.class_type`` node per LoRA after ``chain.after``; returns their ids.

    Every input that read ``[chain.after, chain.output]`` before now reads the last LoRA node.
    """
    if not loras:
        return []
    readers = consumers(graph, chain.after, chain.output)
    ids = next_node_ids(graph, len(loras))
    upstream: list[Any] = [chain.after, chain.output]
    for index, (node_id, lora) in enumerate(zip(ids, loras, strict=True), start=1):
        inputs: dict[str, Any] = copy.deepcopy(chain.extra_inputs)
        inputs[chain.model_input] = upstream
        inputs[chain.name_input] = lora.name
        inputs[chain.strength_input] = lora.strength
        graph[node_id] = {
            "class_type": chain.class_type,
            "inputs": inputs,
            "_meta": {"title": f"LoRA {index}: {lora.name}"},
        }
        upstream = [node_id, 0]
    for node_id, input_name in readers:
        graph[node_id]["inputs"][input_name] = list(upstream)
    return ids


def _jsonable(value: Any) -> Any:
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, BaseModel):
        return value.model_dump()
    return value
