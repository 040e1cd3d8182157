"""ComfyUI's node catalogue (`GET /object_info`): the worker's own copy, and the one it publishes
to the store so that the api role can check async submits without a ComfyUI of its own.

A worker loads the catalogue after each ComfyUI boot, once the service is ready (or before its
warmup, which needs it): readiness does not wait for it. `CatalogueSlot` holds it. From the
moment a load begins until it ends, whoever needs the catalogue (a run rewriting its output
nodes, an async submit's graph check) waits for it, up to `WAIT_S`, then gets a 503: nothing is
checked or prepared against a catalogue that is still on its way. Before the first boot, and
when a load is abandoned (ComfyUI exited, the service stops), it answers the last one loaded
(empty at first: then only the shape of a graph is checked).

Once loaded, the worker writes it to `catalog/object_info.json` (`publish`, after readiness).
The api role reads it back (`StoreCatalog`, cached for a minute) and runs the same graph checks
a worker would, so a workflow that cannot run is a 4xx at submit, not a failed job later. Until
a worker has published one, only the shape of a graph is checked.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from handler.comfyui import graph, policy
from handler.errors import ComfyUnavailable
from handler.storage import Store

log = logging.getLogger("handler.comfyui.catalog")

CATALOG_KEY = "catalog/object_info.json"
CACHE_TTL_S = 60.0
# How long a request waits for a catalogue on its way (it takes ComfyUI about 0.1 s to compute).
WAIT_S = 30.0


@dataclass(frozen=True)
class NodeCatalogue:
    """One catalogue: every node class, and the names of those that are output nodes."""

    object_info: dict[str, Any] = field(default_factory=dict)
    output_classes: frozenset[str] = frozenset()

    @classmethod
    def of(cls, object_info: dict[str, Any]) -> NodeCatalogue:
        outputs = (name for name, info in object_info.items() if isinstance(info, dict) and info.get("output_node"))
        return cls(object_info, frozenset(outputs))


class CatalogueSlot:
    """The worker's catalogue: `expect` when a load begins, then `fill` or `settle` (abandoned)."""

    def __init__(self) -> None:
        self._current = NodeCatalogue()
        self._settled = threading.Event()  # clear exactly while a load is on its way
        self._settled.set()

    @property
    def loading(self) -> bool:
        return not self._settled.is_set()

    def expect(self) -> None:
        self._settled.clear()

    def fill(self, catalogue: NodeCatalogue) -> None:
        self._current = catalogue
        self._settled.set()

    def settle(self) -> None:
        """The load in progress, if any, will not come: answer the last one loaded."""
        self._settled.set()

    def latest(self) -> NodeCatalogue:
        """The last catalogue loaded (empty before the first), without waiting for one on its way."""
        return self._current

    def get(self) -> NodeCatalogue:
        """The catalogue; while one is loading, waits for it (ComfyUnavailable after `WAIT_S`)."""
        if not self._settled.wait(WAIT_S):
            raise ComfyUnavailable("ComfyUI's node catalogue is still loading; retry shortly")
        return self._current


def publish(store: Store, object_info: dict[str, Any]) -> None:
    """Called by a worker after each boot. A failure is logged: the worker serves all the same."""
    try:
        store.put_json(CATALOG_KEY, object_info)
        log.info("published the node catalogue (%d node classes) for the api role", len(object_info))
    except Exception as exc:
        log.warning("could not publish the node catalogue: %s", exc)


class StoreCatalog:
    """The api role's graph checks, against the catalogue a worker published."""

    def __init__(self, store: Store, *, allow_folder_nodes: tuple[str, ...] = ()):
        self.store = store
        self.allow_folder_nodes = allow_folder_nodes
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

    def preflight(self, workflow: dict[str, Any], *, confined: bool) -> None:
        """The graph checks. Whether a `confined` graph may run is for the worker that runs it
        to say: only it knows whether its ComfyUI runs the isolation extension."""
        info = self.object_info()
        policy.check(workflow, info, self.allow_folder_nodes)
        if info:
            graph.check(workflow, info).raise_for_errors()
