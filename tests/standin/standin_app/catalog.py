"""The node catalog: the recorded `object_info`, with the file lists that depend on the input folder.

The recorded catalog is the single source of truth for input specs, output types and which nodes
are output nodes. Upload-backed combos (LoadImage, LoadAudio, LoadVideo, ...) list the files that
are in the input folder right now, as a real server does; the dataset loaders' `folder` combos list
every subfolder of the input folder, recursively, as ComfyUI's `get_input_subfolders` does.
"""

from __future__ import annotations

import copy
import json
import mimetypes
import os
from pathlib import Path

# The repository's root. Packaged on its own (the image tests' ComfyUI tarball puts it at the top of
# /comfyui), the stand-in has none above it and is given its catalogue with STANDIN_OBJECT_INFO.
_HERE = Path(__file__).resolve()
REPO_ROOT = _HERE.parents[3] if len(_HERE.parents) > 3 else _HERE.parent
DEFAULT_OBJECT_INFO = REPO_ROOT / "test_resources" / "comfy" / "object_info.json"

# extension -> content type ("image", "video", ...), like the real server's cache
_content_types: dict[str, str | None] = {}
# Nodes whose `folder` combo lists the input folder's subfolders (ComfyUI rebuilds it per request).
_FOLDER_LISTS = {
    "LoadImageDataSetFromFolder",
    "LoadImageTextDataSetFromFolder",
    "LoadVideoDataSetFromFolder",
    "LoadVideoTextDataSetFromFolder",
}
_UPLOAD_FLAGS = {"image_upload": ("image",), "video_upload": ("video",), "audio_upload": ("audio", "video")}


def content_type_of(filename: str) -> str | None:
    extension = filename.split(".")[-1]
    if extension not in _content_types:
        mime, _ = mimetypes.guess_type(filename, strict=False)
        _content_types[extension] = mime.split("/")[0] if mime else None
    return _content_types[extension]


def files_of_types(folder: str, kinds: tuple[str, ...]) -> list[str]:
    try:
        names = [n for n in os.listdir(folder) if os.path.isfile(os.path.join(folder, n))]
    except FileNotFoundError:
        return []
    return sorted(n for n in names if content_type_of(n) in kinds)


def input_subfolders(folder: str) -> list[str]:
    """Every folder under `folder` (not itself), relative, with forward slashes, sorted."""
    found = []
    for root, _, _ in os.walk(folder):
        relative = os.path.relpath(root, folder)
        if relative != ".":
            found.append(relative.replace(os.sep, "/"))
    return sorted(found)


class Catalog:
    def __init__(self, path: str | os.PathLike | None = None, api_nodes: bool = True):
        path = Path(path or os.environ.get("STANDIN_OBJECT_INFO") or DEFAULT_OBJECT_INFO)
        with open(path, encoding="utf-8") as f:
            self.nodes: dict[str, dict] = json.load(f)
        if not api_nodes:  # --disable-api-nodes: the comfy_api_nodes package is not loaded at all
            self.nodes = {
                k: v for k, v in self.nodes.items() if not str(v.get("python_module", "")).startswith("comfy_api_nodes")
            }
        # (class, category, input name, upload kinds, legacy list form?) for inputs listing input files
        self._upload_inputs: list[tuple[str, str, str, tuple[str, ...], bool]] = []
        for class_type, info in self.nodes.items():
            for category in ("required", "optional"):
                for name, spec in info.get("input", {}).get(category, {}).items():
                    extra = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                    if extra.get("image_folder") or extra.get("remote"):
                        continue
                    for flag, kinds in _UPLOAD_FLAGS.items():
                        if extra.get(flag):
                            self._upload_inputs.append((class_type, category, name, kinds, isinstance(spec[0], list)))
        self.input_dir = ""

    def __contains__(self, class_type: str) -> bool:
        return class_type in self.nodes

    def info(self, class_type: str) -> dict:
        """The node's info with live file lists (a copy only where something is live)."""
        info = self.nodes[class_type]
        live = [u for u in self._upload_inputs if u[0] == class_type]
        if not live and class_type not in _FOLDER_LISTS:
            return info
        info = copy.deepcopy(info)
        if class_type in _FOLDER_LISTS:
            info["input"]["required"]["folder"][1]["options"] = input_subfolders(self.input_dir)
        for _, category, name, kinds, legacy in live:
            files = files_of_types(self.input_dir, kinds)
            spec = info["input"][category][name]
            if legacy:
                spec[0] = files
            else:
                spec[1]["options"] = files
        return info

    def all_info(self) -> dict:
        out = dict(self.nodes)
        for class_type in {u[0] for u in self._upload_inputs} | (_FOLDER_LISTS & self.nodes.keys()):
            out[class_type] = self.info(class_type)
        return out

    def is_output_node(self, class_type: str) -> bool:
        return bool(self.nodes[class_type].get("output_node"))

    def output_types(self, class_type: str) -> list:
        return self.nodes[class_type].get("output", [])

    def output_is_list(self, class_type: str) -> list:
        return self.nodes[class_type].get("output_is_list", [])

    def is_input_list(self, class_type: str) -> bool:
        return bool(self.nodes[class_type].get("is_input_list"))

    def hidden_inputs(self, class_type: str) -> dict[str, str]:
        """Hidden input name -> kind (PROMPT, EXTRA_PNGINFO, UNIQUE_ID, ...)."""
        hidden = self.nodes[class_type].get("input", {}).get("hidden", {})
        return {name: (kind[0] if isinstance(kind, list) else kind) for name, kind in hidden.items()}

    def unique_id_in_signature(self, class_type: str) -> bool:
        # Only nodes declaring UNIQUE_ID the classic way (a bare string) put their id in the cache key.
        hidden = self.nodes[class_type].get("input", {}).get("hidden", {})
        return "UNIQUE_ID" in hidden.values()
