"""The node policy: which nodes a request may use, and which inputs take literal values only.

ComfyUI checks a COMBO value against its options only when the value is a literal; a value that
arrives through a link is used as computed (docs/security.md). A name built inside the graph
(`StringConcatenate`, `StringSubstring`, a switch) would otherwise reach a file loader, a save
node's prefix or a folder node unchecked. So, before anything runs:

* **Literal-only inputs**: every COMBO input (file lists among them: LoadImage's `image`, the
  model lists, LoadLatent's `latent`), every input with an upload widget (`image_upload`, …,
  Painter's `mask`), and every input that names a file or folder (`filename_prefix`, `folder`,
  `folder_name`, …). A link into one is a 400; literals are checked by the service
  (`predict_request`, `prepare.request_prefix`) and by ComfyUI against the options.
* **Folder nodes**: nodes that list or write a folder by name (the dataset loaders and savers,
  LoadImageOutput, which reads ComfyUI's shared output folder) are refused unless the operator
  names them in ALLOW_FOLDER_NODES, which the pipeline honours only where ComfyUI runs the
  isolation extension: without it, the folders they name are shared by every request. Those whose
  folder the extension does not scope (Load/SaveTrainingDataset: ComfyUI's `datasets` folder) are
  refused even then.
* **Confined graphs**: a raw graph from a caller who is not an admin runs only where ComfyUI
  runs the isolation extension (`check_confinement`): nodes that node expansion creates while a
  graph runs are in no graph this policy judges, and without the extension they see the shared
  folders.

The rules come from the catalogue (`object_info`) where it has the node, and from the names in
this module otherwise, so a graph is judged the same with or without a catalogue for the nodes
listed here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from handler.comfyui.graphshape import is_link
from handler.errors import BadRequest, Forbidden

NOT_CONFINED = (
    "this ComfyUI runs without comfyrun's isolation extension, so only admins may send raw workflows "
    "here: send workflow_id and params, or ask the operator to install the extension (docs/security.md)"
)

# Nodes of ComfyUI 0.33.0 that list or write a folder named by a value, or read the shared output
# folder. Any other node with a folder input (FOLDER_INPUT) counts too.
FOLDER_NODES = frozenset(
    {
        "LoadImageOutput",
        "LoadImageDataSetFromFolder",
        "LoadImageTextDataSetFromFolder",
        "LoadVideoDataSetFromFolder",
        "LoadVideoTextDataSetFromFolder",
        "SaveImageDataSetToFolder",
        "SaveImageTextDataSetToFolder",
        "LoadTrainingDataset",
        "SaveTrainingDataset",
    }
)
# Folder nodes whose folder is not ComfyUI's input, output or temp folder, so the isolation
# extension gives no request its own: ComfyUI's `datasets` folder, one for every request. Refused
# even where the operator allows them.
UNSCOPED_FOLDER_NODES = frozenset({"LoadTrainingDataset", "SaveTrainingDataset"})
# Inputs that name a folder: a node that has one lists or writes that folder.
FOLDER_INPUT = re.compile(r"^(folder|folder_name|folder_path|directory|dir|output_dir|input_dir)$")
# Inputs that name a file or a folder, whatever their type.
FILE_INPUT = re.compile(
    r"^(filename_prefix|file|filename|file_name|model_file|path|file_path|model_path)$|_(dir|folder|path)$"
)
# Widget options that make an input a file chooser (ComfyUI's frontend uploads into it).
UPLOAD_OPTIONS = frozenset({"image_upload", "audio_upload", "video_upload", "file_upload", "upload", "remote"})
COMBO_TYPES = frozenset({"COMBO", "COMFY_DYNAMICCOMBO_V3"})
# File inputs of common loaders, for when the catalogue does not have the node.
KNOWN_FILE_INPUTS = {
    "LoadImage": {"image"},
    "LoadImageMask": {"image"},
    "LoadAudio": {"audio"},
    "LoadVideo": {"file"},
    "LoadLatent": {"latent"},
    "Painter": {"mask"},
    "Load3D": {"model_file"},
}


# Loaders of ComfyUI 0.33.0 whose cache key holds a hash of the file's bytes (IS_CHANGED or
# fingerprint_inputs): a cached output of theirs is of the same bytes, whoever sent them.
HASHED_LOADERS = frozenset({"LoadImage", "LoadImageMask", "LoadAudio", "LoadLatent", "Painter"})


@dataclass(frozen=True)
class NodeRules:
    """What the policy knows of one node class."""

    literal_inputs: frozenset[str]
    folder_node: bool
    reads_files: bool  # an input names a file to read (an upload widget or a file name)


def _declared(info: Mapping[str, Any]) -> Iterable[tuple[str, Any]]:
    inputs = info.get("input")
    if not isinstance(inputs, Mapping):
        return
    for section in ("required", "optional"):
        declared = inputs.get(section)
        if isinstance(declared, Mapping):
            yield from declared.items()


def _is_literal_only(name: str, spec: Any) -> bool:
    if FILE_INPUT.search(name) or FOLDER_INPUT.match(name):
        return True
    if not isinstance(spec, list) or not spec:
        return False
    kind, options = spec[0], spec[1] if len(spec) > 1 and isinstance(spec[1], Mapping) else {}
    return isinstance(kind, list) or kind in COMBO_TYPES or bool(UPLOAD_OPTIONS & set(options))


# Rules per class for the catalogue they were read from (one catalogue at a time): reading them
# costs ~50 µs a node, on the path of every request.
_rules_of: tuple[Mapping[str, Any] | None, dict[str, NodeRules]] = (None, {})


def rules_for(class_type: str, object_info: Mapping[str, Any]) -> NodeRules:
    global _rules_of
    owner, known = _rules_of
    if owner is not object_info:
        known = {}
        _rules_of = (object_info, known)
    rules = known.get(class_type)
    if rules is None:
        rules = known[class_type] = _read_rules(class_type, object_info)
    return rules


def _read_rules(class_type: str, object_info: Mapping[str, Any]) -> NodeRules:
    info = object_info.get(class_type)
    literal = set(KNOWN_FILE_INPUTS.get(class_type, ()))
    folder_node = class_type in FOLDER_NODES
    reads_files = bool(literal)
    if isinstance(info, Mapping):
        for name, spec in _declared(info):
            options = spec[1] if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], Mapping) else {}
            if UPLOAD_OPTIONS & set(options) or (FILE_INPUT.search(name) and "prefix" not in name):
                reads_files = True
            # An output node's `prefix` (SaveLoRA) names its files; elsewhere it is text.
            if _is_literal_only(name, spec) or (name == "prefix" and info.get("output_node")):
                literal.add(name)
            if FOLDER_INPUT.match(name):
                folder_node = True
    return NodeRules(literal_inputs=frozenset(literal), folder_node=folder_node, reads_files=reads_files)


def fresh_each_run(workflow: Mapping[str, Any], object_info: Mapping[str, Any]) -> frozenset[str]:
    """The graph's node classes whose cached output may hold another request's files: they read
    a file or a folder by name, and ComfyUI's cache key for them holds no hash of its bytes
    (LoadVideo keys on the file's mtime, Load3D on nothing). Each run marks them
    (`prepare.REQUEST_MARKER`), so they run again for every request."""
    found = set()
    for node in workflow.values():
        class_type = node.get("class_type")
        if isinstance(class_type, str) and class_type not in HASHED_LOADERS:
            rules = rules_for(class_type, object_info)
            if rules.reads_files or rules.folder_node:
                found.add(class_type)
    return frozenset(found)


def check(
    workflow: Mapping[str, Any], object_info: Mapping[str, Any], allowed_folder_nodes: Iterable[str] = ()
) -> None:
    """Refuse (400) a graph that links into a literal-only input or uses a folder node the
    operator did not allow. Inputs the catalogue does not declare are judged by name."""
    allowed = frozenset(allowed_folder_nodes)
    for node_id, node in workflow.items():
        class_type = node.get("class_type")
        if not isinstance(class_type, str):
            continue
        rules = rules_for(class_type, object_info)
        if class_type in UNSCOPED_FOLDER_NODES:
            raise BadRequest(
                f"workflow node {node_id!r} uses {class_type}, which reads or writes ComfyUI's datasets folder: "
                "that folder is shared by every request, so this service does not run it"
            )
        if rules.folder_node and class_type not in allowed:
            raise BadRequest(
                f"workflow node {node_id!r} uses {class_type}, which lists or writes a folder shared by every "
                "request; this service runs it only if the operator allows it (ALLOW_FOLDER_NODES) and ComfyUI "
                "runs the isolation extension"
            )
        for name, value in (node.get("inputs") or {}).items():
            if not is_link(value):
                continue
            if name in rules.literal_inputs or FILE_INPUT.search(name) or FOLDER_INPUT.match(name):
                raise BadRequest(
                    f"workflow node {node_id!r} ({class_type}) input {name!r} names a file or folder or is a "
                    "choice from a list: it takes a literal value, not a link (a value computed inside the "
                    "graph would skip the checks that keep requests apart)"
                )


def check_confinement(confined: bool, isolated: bool) -> None:
    """A confined graph (`PredictRequest.confined`) only where ComfyUI is `isolated`; 403 elsewhere."""
    if confined and not isolated:
        raise Forbidden(NOT_CONFINED)
