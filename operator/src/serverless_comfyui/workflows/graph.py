"""Helpers for ComfyUI graphs in API format.

A graph is ``{"<node id>": {"class_type": str, "inputs": {...}, "_meta": {...}?}}``; an input
whose value is ``["<node id>", <output index>]`` is a link to another node's output, anything
else is a literal widget value.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, TypeGuard

Graph = dict[str, dict[str, Any]]
Link = list[Any]  # ["<node id>", <output index>]

_NODE_KEYS = frozenset({"class_type", "inputs", "_meta"})


def is_link(value: object) -> TypeGuard[Link]:
    """True for ``["<node id>", <int>]`` (ComfyUI treats a 2-element list as a link)."""
    return (
        isinstance(value, list)
        and len(value) == 2
        and isinstance(value[0], str)
        and isinstance(value[1], int)
        and not isinstance(value[1], bool)
    )


def iter_links(graph: Graph) -> Iterator[tuple[str, str, str, int]]:
    """Yield ``(node_id, input_name, source_node_id, source_output_index)`` for every link."""
    for node_id, node in graph.items():
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            continue
        for name, value in inputs.items():
            if is_link(value):
                yield node_id, name, value[0], value[1]


def consumers(graph: Graph, source: str, output: int) -> list[tuple[str, str]]:
    """Every ``(node_id, input_name)`` that reads output ``output`` of node ``source``."""
    return [
        (node_id, name)
        for node_id, name, src, idx in iter_links(graph)
        if src == source and idx == output
    ]


def next_node_ids(graph: Graph, count: int) -> list[str]:
    """``count`` fresh numeric node ids, all larger than any numeric id in ``graph``."""
    numeric = [int(k) for k in graph if k.isdigit()]
    start = max(numeric, default=0) + 1
    ids: list[str] = []
    candidate = start
    while len(ids) < count:
        if str(candidate) not in graph:
            ids.append(str(candidate))
        candidate += 1
    return ids


def structure_problems(graph: object) -> list[str]:
    """Problems with the shape of an API-format graph (no node schemas needed).

    Checks: a non-empty object of nodes, each with a string ``class_type`` and an ``inputs``
    object, no other keys than ``_meta``; every link names an existing node and a
    non-negative output index; 2-element lists that are not links; no cycles.
    """
    if not isinstance(graph, dict) or not graph:
        return ["the graph must be a non-empty JSON object of nodes"]
    problems: list[str] = []
    for node_id, node in graph.items():
        where = f"node {node_id!r}"
        if not isinstance(node, dict):
            problems.append(f"{where}: must be an object")
            continue
        extra = set(node) - _NODE_KEYS
        if extra:
            problems.append(f"{where}: unexpected keys {sorted(extra)}")
        class_type = node.get("class_type")
        if not isinstance(class_type, str) or not class_type:
            problems.append(f"{where}: class_type must be a non-empty string")
        inputs = node.get("inputs")
        if not isinstance(inputs, dict):
            problems.append(f"{where}: inputs must be an object")
            continue
        for name, value in inputs.items():
            if is_link(value):
                if value[0] not in graph:
                    problems.append(f"{where}.{name}: links to missing node {value[0]!r}")
                if value[1] < 0:
                    problems.append(f"{where}.{name}: negative output index {value[1]}")
            elif isinstance(value, list) and len(value) == 2:
                problems.append(
                    f"{where}.{name}: a 2-element list is read as a link by ComfyUI, "
                    f'but {value!r} is not ["<node id>", <output index>]'
                )
    if not problems:
        cycle = find_cycle(graph)
        if cycle:
            problems.append("the graph has a cycle: " + " -> ".join(cycle))
    return problems


def find_cycle(graph: Graph) -> list[str]:
    """A list of node ids forming a cycle (first repeated at the end), or ``[]``."""
    deps: dict[str, list[str]] = {node_id: [] for node_id in graph}
    for node_id, _name, src, _idx in iter_links(graph):
        if src in deps:
            deps[node_id].append(src)
    state: dict[str, int] = {}  # 1 = on the stack, 2 = done
    stack: list[str] = []

    def visit(node_id: str) -> list[str]:
        state[node_id] = 1
        stack.append(node_id)
        for dep in deps[node_id]:
            if state.get(dep) == 1:
                return [*stack[stack.index(dep) :], dep]
            if dep not in state:
                found = visit(dep)
                if found:
                    return found
        stack.pop()
        state[node_id] = 2
        return []

    for node_id in graph:
        if node_id not in state:
            found = visit(node_id)
            if found:
                return found
    return []
