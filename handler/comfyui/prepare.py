"""A request's private copy of its graph, as ComfyUI will run it: outputs inside the request's
folder, a per-run cache marker on the nodes whose cached output could be another request's, and
previews saved where only the request sees them (docs/security.md)."""

from __future__ import annotations

import posixpath
from typing import Any

from handler.errors import BadRequest

# An undeclared input on output nodes: ComfyUI ignores it when running the node, but it is part
# of the node's cache key, so each request's output nodes run again (cheaply, upstream stays
# cached) and never hand back a file an earlier request owned and has deleted. Its value: the prompt id.
REQUEST_MARKER = "_request_id"
# Output nodes ComfyUI may not flag when its catalogue is unavailable.
KNOWN_OUTPUT_NODES = frozenset(
    {
        "SaveImage",
        "PreviewImage",
        "SaveImageWebsocket",
        "PreviewAny",
        "SaveAnimatedWEBP",
        "SaveAnimatedPNG",
        "SaveLatent",
    }
)


def request_prefix(prefix: str, request_id: str) -> str:
    """`filename_prefix` inside the request's own output subfolder, or a 400 if it would leave it."""
    if "\\" in prefix or "\0" in prefix:
        raise BadRequest(f"filename_prefix {prefix!r} may not contain backslashes or NUL")
    normalized = posixpath.normpath(prefix.lstrip("/"))
    parts = normalized.split("/")
    if parts[0] == "..":
        raise BadRequest(f"filename_prefix {prefix!r} leaves the request's own folder: '..' is not allowed there")
    if any(len(part.encode("utf-8", "surrogatepass")) > 200 for part in parts) or len(parts) > 8:
        raise BadRequest("filename_prefix is too long: at most 8 folders of 200 bytes each")
    if normalized == ".":  # ComfyUI would name the files after the folder in front: ours, a secret
        raise BadRequest(f"filename_prefix {prefix!r} names no file: give a name such as 'out' or 'folder/out'")
    # A trailing "/" means "files named by the counter alone, in that folder": keep it.
    return f"{request_id}/{normalized}" + ("/" if prefix.endswith("/") else "")


# ComfyUI writes PreviewImage's files to its one temp folder, shared by every request, and the node
# takes no filename_prefix. Previews are therefore saved by SaveImage into the request's own folder
# (the same pixels; PNG compression 4 instead of 1), and callers still see them as `type: temp`.
PREVIEW_CLASS = "PreviewImage"
PREVIEW_PREFIX = "ComfyUI_temp"


def preview_nodes(workflow: dict[str, Any]) -> frozenset[str]:
    return frozenset(node_id for node_id, node in workflow.items() if node.get("class_type") == PREVIEW_CLASS)


def prepare_graph(
    workflow: dict[str, Any], request_id: str, output_classes: frozenset[str], *, marker: str, isolated: bool = False
) -> dict[str, Any]:
    """A private copy of the graph whose outputs, previews included, land in the request's own
    subfolder: by prefix, or, `isolated` (ComfyUI runs the isolation extension, whose output
    folder for the prompt is that subfolder), with the caller's prefix checked and kept.

    Only nodes and their inputs are copied (what is changed here and in rewrite_references):
    no recursion into values, however deep."""
    graph = {node_id: {**node, "inputs": dict(node.get("inputs") or {})} for node_id, node in workflow.items()}
    for node in graph.values():
        class_type = node.get("class_type")
        inputs = node["inputs"]
        if class_type == PREVIEW_CLASS:
            node["class_type"] = class_type = "SaveImage"
            inputs["filename_prefix"] = PREVIEW_PREFIX
        is_output = class_type in output_classes or class_type in KNOWN_OUTPUT_NODES
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str):
            # A "/" in the prefix makes a subfolder: outputs go under output/<request id>/.
            inside = request_prefix(prefix, request_id)
            inputs["filename_prefix"] = inside[len(request_id) + 1 :] if isolated else inside
            is_output = True
        if is_output:
            inputs[REQUEST_MARKER] = marker  # never the request folder: it ends up in the files' metadata
    return graph
