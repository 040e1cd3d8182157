"""The shape of an API-format graph, checked before anything looks at its nodes' meaning.

* `shape_problem`: {node id: {class_type, inputs}} or what is wrong with it (a UI-format workflow
  gets a hint on how to export the API format), for request bodies and template files alike;
* `longest_chain`: the most nodes on one path of links, without recursion, so any graph gets an
  answer; ComfyUI's own validation walks those chains recursively, hence `MAX_CHAIN`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Graph = Mapping[str, Any]


def is_ui_format(workflow: Any) -> bool:
    """A workflow saved by the editor (`nodes` + `links` lists), not the API format."""
    return (
        isinstance(workflow, Mapping)
        and isinstance(workflow.get("nodes"), list)
        and isinstance(workflow.get("links"), list)
    )


UI_FORMAT_HINT = (
    "this looks like a workflow saved in ComfyUI's UI format (it has 'nodes' and 'links'); "
    "export it with 'Export (API)' in ComfyUI's workflow menu and send that instead"
)


def shape_problem(workflow: Any) -> str | None:
    """The one check of the API format's shape, {node id: {class_type, inputs}}, used for request
    bodies and template files alike: what is wrong, or None."""
    if is_ui_format(workflow):
        return UI_FORMAT_HINT
    if not isinstance(workflow, Mapping) or not workflow:
        return "a workflow must be a non-empty object of nodes in ComfyUI's API format"
    for node_id, node in workflow.items():
        if not isinstance(node, Mapping) or not isinstance(node.get("class_type"), str):
            return f"workflow node {node_id!r} must be an object with a string class_type"
        if not isinstance(node.get("inputs", {}), Mapping):
            return f"workflow node {node_id!r} has inputs that are not an object"
    return None


# Longest chain of linked nodes a request may send. ComfyUI validates recursively along links:
# measured on 0.3x, a chain of 700 runs and one of 1,000 fails there with an empty error.
MAX_CHAIN = 500


def is_link(value: Any) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[1], int) and not isinstance(value[1], bool)


def _sources(graph: Graph, node_id: str) -> list[str]:
    inputs = graph[node_id].get("inputs") if isinstance(graph[node_id], Mapping) else None
    if not isinstance(inputs, Mapping):
        return []
    return [v[0] for v in inputs.values() if is_link(v) and isinstance(v[0], str) and v[0] in graph]


def longest_chain(graph: Graph) -> int:
    """The most nodes on one path of links (cycles are cut where they close), without recursion."""
    depth: dict[str, int] = {}
    for start in graph:
        stack: list[tuple[str, bool]] = [(start, False)]
        on_path: set[str] = set()
        while stack:
            node_id, finished = stack.pop()
            if finished:
                on_path.discard(node_id)
                depth[node_id] = 1 + max((depth[u] for u in _sources(graph, node_id) if u in depth), default=0)
            elif node_id not in depth and node_id not in on_path:
                on_path.add(node_id)
                stack.append((node_id, True))
                stack.extend((u, False) for u in _sources(graph, node_id) if u not in depth and u not in on_path)
    return max(depth.values(), default=0)
