"""Models named by URL, made ready for one run: fetched into the cache, pinned, and the graph
pointed at the cached files. A cached file is named by its URL only: its cached name is refused.

`stage(cache, workflow, object_info, deadline)` acquires every model the workflow names by URL
(handler/models/refs.py), within the request's deadline (a set `cancel` stops it), telling
`progress` how each download goes (handler/models/progress.py: the `model`-th of `models`);
`Staged.rewrite(graph)` puts the cached
file's name where the URL was; `Staged.release()` unpins them once the prompt is over (queued or
running prompts' files are never evicted). `Staged.report()` is the answer's `models`: which
files, from where, their digests, whether this request fetched them, and how long it took.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from handler.errors import BadRequest
from handler.models.cache import Acquired, ModelCache
from handler.models.progress import DownloadProgress, Listener
from handler.models.refs import Use, find_uses, looks_like_url


@dataclass(kw_only=True)
class Staged:
    cache: ModelCache | None = None
    uses: list[Use] = field(default_factory=list)
    acquired: list[Acquired] = field(default_factory=list)

    def rewrite(self, graph: dict[str, Any]) -> None:
        for use, got in zip(self.uses, self.acquired):
            graph[use.node_id]["inputs"][use.input] = got.entry.name

    def release(self) -> None:
        cache, acquired = self.cache, self.acquired
        self.acquired = []
        if cache is not None:
            for got in acquired:
                cache.release(got.entry.key)

    def report(self) -> list[dict[str, Any]]:
        return [
            {"node": use.node_id, "input": use.input, **got.describe()} for use, got in zip(self.uses, self.acquired)
        ]


# A folder of the cache as ComfyUI lists it: `<key>/<filename>` (handler/models/cache.py).
_CACHED_FOLDER = re.compile(r"(?:^|[/\\])([0-9a-f]{24})(?=[/\\])")


def refuse_cached_names(cache: ModelCache, workflow: Mapping[str, Any]) -> None:
    """A cached file is reached by its URL only (400 for its cached name). The cache is shared:
    its names are in ComfyUI's model lists, and a URL may carry a credential only its caller has
    (a token in the query, a signed link), so a request that names the file without the URL would
    load another caller's model."""
    cached: set[str] | None = None
    for node_id, node in workflow.items():
        for name, value in (node.get("inputs") or {}).items():
            if not isinstance(value, str) or looks_like_url(value):
                continue
            for key in _CACHED_FOLDER.findall(value):
                cached = {entry.key for entry in cache.entries()} if cached is None else cached
                if key in cached:
                    raise BadRequest(
                        f"workflow node {node_id!r} input {name!r} names a file of the model cache: name a cached "
                        "model by its URL (the cache is shared by every caller, and a URL may hold what only "
                        "its caller may use)"
                    )


def stage(
    cache: ModelCache | None,
    workflow: Mapping[str, Any],
    object_info: Mapping[str, Any] | None,
    deadline: float,
    cancel: threading.Event | None = None,
    progress: Listener | None = None,
) -> Staged:
    if cache is not None:
        refuse_cached_names(cache, workflow)
    uses = find_uses(workflow, object_info)
    if not uses:
        return Staged()
    if cache is None:
        raise BadRequest(f"workflow node {uses[0].node_id!r} names a model by URL; this service does not fetch models")
    staged = Staged(cache=cache, uses=uses)
    try:
        for n, use in enumerate(uses, 1):
            heard = _numbered(progress, n, len(uses)) if progress is not None else None
            staged.acquired.append(cache.acquire(use.ref, deadline=deadline, cancel=cancel, progress=heard))
    except BaseException:
        staged.release()
        raise
    return staged


def _numbered(progress: Listener, model: int, models: int) -> Listener:
    def heard(value: DownloadProgress) -> None:
        progress(value.of(model, models))

    return heard
