"""What the workers can run, published to the store so that the api role can check async
submits without a ComfyUI of its own.

A worker, once its ComfyUI has booted (and warmed up), writes ComfyUI's node catalogue
(`/object_info`, which also lists the model files each loader can pick) to
`catalog/object_info.json`. The api role reads it back (cached for a minute) and runs the same
graph checks a worker would, so a workflow that cannot run is a 4xx at submit, not a failed job
later. Until a worker has published one, only the shape of a graph is checked.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from . import graph
from .storage import Store

log = logging.getLogger("handler.catalog")

CATALOG_KEY = "catalog/object_info.json"
CACHE_TTL_S = 60.0


def publish(store: Store, object_info: dict[str, Any]) -> None:
    """Called by a worker after boot. A failure is logged: the worker serves all the same."""
    try:
        store.put_json(CATALOG_KEY, object_info)
        log.info("published the node catalogue (%d node classes) for the api role", len(object_info))
    except Exception as exc:
        log.warning("could not publish the node catalogue: %s", exc)


class StoreCatalog:
    """The api role's graph checks, against the catalogue a worker published."""

    def __init__(self, store: Store):
        self.store = store
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def object_info(self) -> dict[str, Any]:
        with self._lock:
            if self._cached and time.monotonic() - self._cached[0] < CACHE_TTL_S:
                return self._cached[1]
        found = self.store.get_json(CATALOG_KEY)
        info = found.data if found is not None and isinstance(found.data, dict) else {}
        if info:  # until a worker publishes one, look again on every submit
            with self._lock:
                self._cached = (time.monotonic(), info)
        return info

    def preflight(self, workflow: dict[str, Any]) -> None:
        info = self.object_info()
        if info:
            graph.check(workflow, info).raise_for_errors()
