"""The warm-up run that makes a pod Ready ("ready means warm", architecture decision 7).

`WARMUP_WORKFLOW` names a JSON file, normally a ComfyUI API-format graph. Also accepted, so the
pod works whatever the operator mounts there:

* `{"prompt": <graph>}` (a `/prompt` body);
* a FluxWorkflow `spec.workflow` reference (`{"name": ..., "configMapRef": ..., "warmup": ...}`):
  the warm-up source (`warmup`, else the served workflow) is taken from the workflow library
  (`$SERVERLESS_COMFYUI_WORKFLOWS_DIR`) or from the resolved graph the operator writes beside the
  file (`warmup.json`, `workflow.json`). A served workflow is cut down to a minimal run (one
  step, 256 px, batch of one): enough to load every weight into VRAM.

Unset, missing or empty file (or `{}`): no warm-up. A file that cannot be used is a warm-up
failure (the pod stays unready and says why); it is read again at every attempt, so a fixed
ConfigMap heals the pod without a restart.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serverless_comfyui.entrypoint.comfy import (
    ComfyUIClient,
    ComfyUIError,
    describe_execution_failure,
)

Graph = dict[str, Any]
WARMUP_SUBFOLDER = "warmup"
REFERENCE_KEYS = frozenset({"name", "configMapRef", "warmup"})
MINIMAL_SIDE = 256
MINIMAL_PROMPT = "warm-up"


class WarmupError(Exception):
    """The warm-up could not run or did not succeed; the message says why."""


@dataclass(frozen=True)
class WarmupPlan:
    graph: Graph | None
    """The graph to run; None: no warm-up."""
    source: str
    """Where the graph came from (for logs and /status)."""


def is_graph(value: object) -> bool:
    """A ComfyUI API-format graph: node id -> {"class_type": str, "inputs": {...}}."""
    if not isinstance(value, dict) or not value:
        return False
    return all(
        isinstance(node, dict)
        and isinstance(node.get("class_type"), str)
        and isinstance(node.get("inputs", {}), dict)
        for node in value.values()
    )


def load_plan(path: Path | None) -> WarmupPlan:
    """Read `WARMUP_WORKFLOW`; raises `WarmupError` when the file is there but unusable."""
    if path is None:
        return WarmupPlan(None, "WARMUP_WORKFLOW is not set")
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return WarmupPlan(None, f"{path} does not exist")
    except OSError as exc:
        raise WarmupError(f"cannot read {path}: {exc}") from exc
    if not text.strip():
        return WarmupPlan(None, f"{path} is empty")
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise WarmupError(f"{path} is not valid JSON: {exc}") from exc
    if data == {}:
        return WarmupPlan(None, f"{path} is empty")
    if is_graph(data):
        return WarmupPlan(data, str(path))
    if isinstance(data, dict) and is_graph(data.get("prompt")):
        return WarmupPlan(data["prompt"], str(path))
    if isinstance(data, dict) and data.keys() <= REFERENCE_KEYS:
        return _from_reference(data, path)
    raise WarmupError(
        f"{path} is not a ComfyUI API-format graph "
        '(expected {"<node id>": {"class_type": ..., "inputs": {...}}, ...})'
    )


def _from_reference(ref: dict[str, Any], path: Path) -> WarmupPlan:
    warmup = ref.get("warmup")
    if isinstance(warmup, dict):
        source, sibling, minimal = warmup, path.parent / "warmup.json", False
    else:
        source, sibling, minimal = ref, path.parent / "workflow.json", True
    name = source.get("name")
    if isinstance(name, str) and name:
        try:
            return WarmupPlan(_render_library(name, minimal), f"library workflow {name!r}")
        except WarmupError:
            if not sibling.is_file():
                raise
    if sibling.is_file():
        try:
            data = json.loads(sibling.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise WarmupError(f"cannot read {sibling}: {exc}") from exc
        graph = data.get("prompt") if isinstance(data, dict) and "prompt" in data else data
        if not is_graph(graph):
            raise WarmupError(f"{sibling} is not a ComfyUI API-format graph")
        assert isinstance(graph, dict)
        return WarmupPlan(minimal_graph(graph) if minimal else graph, str(sibling))
    raise WarmupError(
        f"{path} references a workflow that is neither in the library nor in {sibling}"
    )


def _render_library(name: str, minimal: bool) -> Graph:
    # Imported here: the library is only needed for references, and pulls in more modules.
    from serverless_comfyui.workflows import WorkflowError, default_workflows_dir, load_workflow

    try:
        workflow = load_workflow(default_workflows_dir() / name)
        params: dict[str, Any] = {}
        for param in workflow.parameters:
            if param.ignored is not None:
                continue
            if param.required and param.type == "string":
                params[param.name] = MINIMAL_PROMPT
            elif minimal and param.type == "integer" and param.name == "steps":
                params[param.name] = int(param.min) if param.min is not None else 1
            elif minimal and param.type == "integer" and param.name == "batch_size":
                params[param.name] = 1
            elif minimal and param.type == "integer" and param.name in ("width", "height"):
                params[param.name] = _side(param.min, param.max, param.multiple_of)
        rendered = workflow.render(params, prompt_id=str(uuid.uuid4()), output_prefix="warmup")
    except (WorkflowError, KeyError, ValueError, OSError) as exc:
        raise WarmupError(f"workflow {name!r} from the library: {exc}") from exc
    return rendered.graph


def _side(low: float | None, high: float | None, multiple: float | None) -> int:
    value = float(MINIMAL_SIDE)
    if multiple:
        value = -(-value // multiple) * multiple
    if low is not None:
        value = max(value, low)
    if high is not None:
        value = min(value, high)
    return int(value)


def minimal_graph(graph: Graph) -> Graph:
    """The cheapest run of a served graph that still loads its models: one sampling step and
    small latents. Only literal inputs change; links are left alone."""
    result = copy.deepcopy(graph)
    for node in result.values():
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        latent = "Latent" in str(node.get("class_type", ""))
        for key, value in list(inputs.items()):
            if not isinstance(value, int) or isinstance(value, bool):
                continue
            if key == "steps" and value > 1:
                inputs[key] = 1
            elif latent and key in ("width", "height") and value > MINIMAL_SIDE:
                inputs[key] = MINIMAL_SIDE
            elif latent and key == "batch_size" and value > 1:
                inputs[key] = 1
    return result


def prepare_graph(graph: Graph, prompt_id: str) -> Graph:
    """A copy whose every output file prefix is `warmup/<prompt_id>`, so warm-up images never
    collide with (or count as) user outputs."""
    result = copy.deepcopy(graph)
    for node in result.values():
        inputs = node.get("inputs")
        if isinstance(inputs, dict) and isinstance(inputs.get("filename_prefix"), str):
            inputs["filename_prefix"] = f"{WARMUP_SUBFOLDER}/{prompt_id}"
    return result


@dataclass(frozen=True)
class WarmupResult:
    prompt_id: str
    seconds: float


async def run_warmup(
    client: ComfyUIClient, graph: Graph, time_limit: float, poll_seconds: float = 0.25
) -> WarmupResult:
    """Submit the graph with a fresh prompt id and wait for its history entry.

    Raises `WarmupError` with ComfyUI's reason (validation error, node exception, timeout).
    """
    prompt_id = str(uuid.uuid4())
    started = time.monotonic()
    try:
        await client.submit(
            prepare_graph(graph, prompt_id), prompt_id, f"serverless-comfyui-warmup-{prompt_id}"
        )
    except ComfyUIError as exc:
        raise WarmupError(str(exc)) from exc
    deadline = started + time_limit
    while True:
        try:
            entry = await client.history(prompt_id)
        except ComfyUIError:
            entry = None  # a busy or restarting ComfyUI: keep waiting until the deadline
        if entry is not None:
            status = entry.get("status")
            if isinstance(status, dict) and status.get("status_str") == "success":
                return WarmupResult(prompt_id, time.monotonic() - started)
            raise WarmupError(describe_execution_failure(entry))
        if time.monotonic() >= deadline:
            await client.cancel(prompt_id)
            raise WarmupError(f"no result after {time_limit:g} s (WARMUP_TIMEOUT_SECONDS)")
        await asyncio.sleep(poll_seconds)
