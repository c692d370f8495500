"""Execution order and output caching of the fake ComfyUI, after `comfy_execution`.

`ExecutionList` is ComfyUI's topological dissolve with its "UX friendly" pick (output nodes
first, then what unblocks them), so nodes run in the order a real ComfyUI runs them. Node
signatures follow the classic input-signature cache: a node whose class, inputs and ancestors
are unchanged since the previous prompt is reported in `execution_cached` and not run again.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable
from typing import Any

from serverless_comfyui.emulator.schema import NodeSchema


def is_link(value: Any) -> bool:
    """`comfy_execution.graph_utils.is_link`."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
    )


class ExecutionList:
    """Nodes still to run for one prompt; cached nodes are not added."""

    def __init__(
        self, prompt: dict[str, Any], schema: NodeSchema, is_cached: Callable[[str], bool]
    ) -> None:
        self.prompt = prompt
        self.schema = schema
        self.is_cached = is_cached
        self.pending: dict[str, bool] = {}
        self.blockers: dict[str, set[str]] = {}
        self.blocking: dict[str, dict[str, set[int]]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links: list[tuple[str, int, str]] = []
        while stack:
            unique_id = stack.pop()
            if unique_id in self.pending:
                continue
            self.pending[unique_id] = True
            self.blockers[unique_id] = set()
            self.blocking[unique_id] = {}
            for value in self.prompt[unique_id]["inputs"].values():
                if is_link(value):
                    from_id, socket = value
                    if not self.is_cached(from_id):
                        stack.append(from_id)
                    links.append((from_id, socket, unique_id))
        for from_id, socket, to_id in links:
            if not self.is_cached(from_id) or from_id in self.pending:
                self.add_node(from_id)
                self.blocking[from_id].setdefault(to_id, set()).add(socket)
                self.blockers[to_id].add(from_id)

    def is_empty(self) -> bool:
        return not self.pending

    def _is_output(self, node_id: str) -> bool:
        return self.schema.is_output(self.prompt[node_id]["class_type"])

    def pick(self) -> str:
        """`ExecutionList.ux_friendly_pick_node` over the ready nodes."""
        ready = [n for n in self.pending if not self.blockers[n]]
        if not ready:
            raise RuntimeError("Dependency cycle detected")
        for node_id in ready:
            if self._is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self._is_output(b) for b in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for blocked in self.blocking[node_id]:
                if blocked in self.pending and any(
                    self._is_output(b) for b in self.blocking[blocked]
                ):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        self.blockers.pop(node_id, None)
        for blocked in self.blocking.pop(node_id, {}):
            self.blockers[blocked].discard(node_id)


def node_signatures(
    prompt: dict[str, Any], is_changed: Callable[[str, dict[str, Any]], Any]
) -> dict[str, str]:
    """An input signature per node: class, IS_CHANGED value, constant inputs, ancestors."""
    memo: dict[str, str] = {}
    visiting: set[str] = set()

    def signature(node_id: str) -> str:
        if node_id in memo:
            return memo[node_id]
        node = prompt.get(node_id)
        if not isinstance(node, dict) or node_id in visiting:
            return f"nan-{uuid.uuid4()}"  # cannot be cached
        visiting.add(node_id)
        inputs = node.get("inputs", {})
        parts: list[Any] = [node.get("class_type"), is_changed(node_id, node)]
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value):
                parts.append([key, "ANCESTOR", signature(value[0]), value[1]])
            else:
                parts.append([key, value])
        visiting.discard(node_id)
        text = json.dumps(parts, sort_keys=True, default=str)
        memo[node_id] = hashlib.sha256(text.encode()).hexdigest()
        return memo[node_id]

    return {node_id: signature(node_id) for node_id in prompt}
