"""ComfyUI's refusal of a graph, with the files there are where it refused a missing file.

ComfyUI's own `value_not_in_list` lists an input's options only when there are at most 20, so a
refused checkpoint in a full `models/checkpoints` says "(list of length 37)". `with_installed`
takes ComfyUI's refusal as it is and, for each such error that our own check of the same graph
(`graph.check` against the node catalogue) also finds, adds `installed`: the files the catalogue
lists for that input. `WorkflowInvalid` then names them in its message and `missing_files`.
Everything else is ComfyUI's refusal untouched: the catalogue is read once per boot, so lists that
ComfyUI rebuilds per request (input folders, uploaded files) are ComfyUI's to judge.
"""

from __future__ import annotations

import copy
from typing import Any

from handler.comfyui import graph
from handler.errors import WorkflowInvalid


def with_installed(refusal: WorkflowInvalid, workflow: dict[str, Any], object_info: dict[str, Any]) -> WorkflowInvalid:
    theirs = copy.deepcopy(refusal.details.get("node_errors"))
    if not object_info or not isinstance(theirs, dict):
        return refusal
    ours = graph.check(workflow, object_info).node_errors
    added = False
    for node_id, entry in theirs.items():
        mine = {
            err["extra_info"].get("input_name"): err["extra_info"]["installed"]
            for err in ours.get(node_id, {}).get("errors", [])
            if err["type"] == "value_not_in_list" and "installed" in err["extra_info"]
        }
        for err in entry.get("errors", []) if isinstance(entry, dict) else []:
            extra = err.get("extra_info") if isinstance(err, dict) else None
            if isinstance(extra, dict) and err.get("type") == "value_not_in_list" and extra.get("input_name") in mine:
                extra["installed"] = mine[extra["input_name"]]
                added = True
    if not added:
        return refusal
    return WorkflowInvalid(refusal.message, comfyui_error=refusal.details.get("comfyui_error"), node_errors=theirs)
