"""The prompt queue and the executor: ordering, caching, progress and the messages they send.

One worker thread takes prompts from the queue in `number` order and runs their nodes. Results
are cached by input signature (class, constant inputs, is-changed value and the signatures of
the ancestors), so a resubmitted prompt re-runs only what changed.
"""

from __future__ import annotations

import copy
import heapq
import logging
import struct
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from .catalog import Catalog
from .validation import expand_inputs, full_type_name, is_link

log = logging.getLogger("standin")

MAXIMUM_HISTORY_SIZE = 10000

# binary WebSocket event types
PREVIEW_IMAGE = 1
UNENCODED_PREVIEW_IMAGE = 2
TEXT = 3
PREVIEW_IMAGE_WITH_METADATA = 4


class InterruptProcessingException(Exception):
    pass


class DependencyCycleError(Exception):
    pass


DependencyCycleError.__module__ = "graph"


class InterruptFlag:
    def __init__(self):
        self._lock = threading.Lock()
        self._set = False

    def set(self, value: bool = True) -> None:
        with self._lock:
            self._set = value

    def check(self) -> None:
        """Raise (and clear the flag) if an interrupt was asked for."""
        with self._lock:
            if self._set:
                self._set = False
                raise InterruptProcessingException()


# --- cache ------------------------------------------------------------------------------------
class _Never:
    """A signature part that equals nothing else: the node can never be a cache hit."""

    __slots__ = ()


def to_hashable(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool, bytes, type(None))):
        if isinstance(value, float) and value != value:
            return _Never()
        return value
    if isinstance(value, dict):
        return ("dict", frozenset((to_hashable(k), to_hashable(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return ("seq", tuple(to_hashable(v) for v in value))
    return _Never()


def nbytes_of(value: Any) -> int:
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, dict):
        return sum(nbytes_of(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(nbytes_of(v) for v in value)
    nbytes = getattr(value, "nbytes", None)
    return nbytes if isinstance(nbytes, int) else 64


@dataclass
class CacheEntry:
    ui: dict | None
    outputs: list
    nbytes: int = 0
    generation: int = 0


class OutputCache:
    """Node outputs by signature.

    Modes, after ComfyUI's: "ram" (default: entries outlive prompts, oldest evicted past a byte
    budget), "classic" (only the current prompt's entries survive), "lru" (at most N entries),
    "none" (nothing is cached).
    """

    def __init__(self, mode: str = "ram", lru_size: int = 0, budget_bytes: int = 1 << 30):
        self.mode = mode
        self.lru_size = lru_size
        self.budget_bytes = budget_bytes
        self.entries: dict[Any, CacheEntry] = {}
        self.generation = 0
        self.keys: dict[str, Any] = {}

    def begin_prompt(self, keys: dict[str, Any]) -> None:
        self.keys = keys
        self.generation += 1
        live = set(keys.values())
        for key in live:
            entry = self.entries.get(key)
            if entry is not None:
                entry.generation = self.generation
        if self.mode == "classic":
            self.entries = {k: v for k, v in self.entries.items() if k in live}
        elif self.mode == "lru":
            self._evict(lambda: len(self.entries) > self.lru_size)
        elif self.mode == "ram":
            self._evict(lambda: sum(e.nbytes for e in self.entries.values()) > self.budget_bytes)

    def _evict(self, too_big: Callable[[], bool]) -> None:
        for key in sorted(self.entries, key=lambda k: self.entries[k].generation):
            if not too_big() or self.entries[key].generation >= self.generation:
                break
            del self.entries[key]

    def get(self, node_id: str) -> CacheEntry | None:
        if self.mode == "none":
            return None
        key = self.keys.get(node_id)
        if key is None:
            return None
        try:
            return self.entries.get(key)
        except TypeError:
            return None

    def set(self, node_id: str, entry: CacheEntry) -> None:
        if self.mode == "none":
            return
        key = self.keys.get(node_id)
        if key is None:
            return
        entry.generation = self.generation
        entry.nbytes = nbytes_of(entry.outputs)
        self.entries[key] = entry

    def clear(self) -> None:
        self.entries.clear()


# --- progress ---------------------------------------------------------------------------------
class ProgressRegistry:
    def __init__(self, prompt_id: str, server, client_id: str | None):
        self.prompt_id = prompt_id
        self.server = server
        self.client_id = client_id
        self.nodes: dict[str, dict] = {}

    def _entry(self, node_id: str) -> dict:
        return self.nodes.setdefault(node_id, {"state": "pending", "value": 0, "max": 1})

    def _send_state(self) -> None:
        active = {
            node_id: {
                "value": state["value"],
                "max": state["max"],
                "state": state["state"],
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            for node_id, state in self.nodes.items()
            if state["state"] != "pending"
        }
        self.server.send_sync("progress_state", {"prompt_id": self.prompt_id, "nodes": active}, self.client_id)

    def start(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry.update(state="running", value=0.0, max=1.0)
        self._send_state()

    def update(self, node_id: str, value, max_value, image=None) -> None:
        entry = self._entry(node_id)
        entry.update(state="running", value=value, max=max_value)
        self._send_state()
        if image is not None and self.server.supports_preview_metadata(self.client_id):
            metadata = {
                "node_id": node_id,
                "prompt_id": self.prompt_id,
                "display_node_id": node_id,
                "parent_node_id": None,
                "real_node_id": node_id,
            }
            self.server.send_sync(PREVIEW_IMAGE_WITH_METADATA, (image, metadata), self.client_id)

    def finish(self, node_id: str) -> None:
        entry = self._entry(node_id)
        entry["state"] = "finished"
        entry["value"] = entry["max"]
        self._send_state()


# --- what a node sees -------------------------------------------------------------------------
class NodeContext:
    def __init__(
        self,
        executor: Executor,
        node_id: str,
        prompt_id: str = "",
        prompt: dict | None = None,
        extra_data: dict | None = None,
        progress: ProgressRegistry | None = None,
    ):
        self.executor = executor
        self.node_id = node_id
        self.unique_id = node_id
        self.prompt_id = prompt_id
        self.prompt = prompt if prompt is not None else {}
        self.extra_data = extra_data or {}
        self.extra_pnginfo = self.extra_data.get("extra_pnginfo")
        self._progress = progress
        self.paths = executor.paths.scoped(self.extra_data)  # the request's folders, with isolation
        self.disable_metadata = executor.disable_metadata

    def check_interrupt(self) -> None:
        self.executor.interrupt.check()

    def progress(self, value, total, preview=None) -> None:
        """A progress-bar tick: an interrupt point, a `progress` message, maybe a preview frame."""
        self.executor.progress_hook(self, value, total, preview)

    def send_text(self, text: str) -> None:
        """Text shown on the node (a TEXT binary frame, sent to every client)."""
        node = str(self.node_id).encode("utf-8")
        message = struct.pack(">I", len(node)) + node + text.encode("utf-8")
        self.executor.server.send_sync(TEXT, message, None)


class ProgressBar:
    """A node's progress bar: first, final and preview ticks always go out, the rest throttled."""

    def __init__(self, ctx: NodeContext, total: int):
        self.ctx = ctx
        self.total = total
        self.last_sent = -1
        self.last_time = 0.0

    def update_absolute(self, value, total=None, preview=None) -> None:
        if total is not None:
            self.total = total
        value = min(value, self.total)
        now = time.perf_counter()
        urgent = preview is not None or self.last_sent < 0 or value >= self.total
        if not urgent:
            changed = ((value - max(0, self.last_sent)) / self.total * 100) if self.total > 0 else 100
            if now - self.last_time < 0.1 or changed < 1.0:
                return
        self.ctx.progress(value, self.total, preview)
        self.last_sent = value
        self.last_time = now


# --- scheduling -------------------------------------------------------------------------------
class Scheduler:
    """Which node runs next: a topological dissolve that prefers output nodes and their feeders."""

    def __init__(self, prompt: dict, is_cached: Callable[[str], bool], is_output: Callable[[str], bool]):
        self.prompt = prompt
        self.is_cached = is_cached
        self.is_output = is_output
        self.pending: dict[str, bool] = {}
        self.block_count: dict[str, int] = {}
        self.blocking: dict[str, dict[str, dict]] = {}

    def add_node(self, node_id: str) -> None:
        stack = [node_id]
        links = []
        while stack:
            current = stack.pop()
            if current in self.pending:
                continue
            self.pending[current] = True
            self.block_count[current] = 0
            self.blocking[current] = {}
            for value in self.prompt[current]["inputs"].values():
                if is_link(value):
                    source, socket = value
                    if not self.is_cached(source):
                        stack.append(source)
                    links.append((source, socket, current))
        for source, socket, target in links:
            if not self.is_cached(source):
                self.add_node(source)
                if target not in self.blocking[source]:
                    self.blocking[source][target] = {}
                    self.block_count[target] += 1
                self.blocking[source][target][socket] = True

    def empty(self) -> bool:
        return not self.pending

    def next(self) -> str | None:
        ready = [n for n in self.pending if self.block_count[n] == 0]
        if not ready:
            return None
        for node_id in ready:
            if self.is_output(node_id):
                return node_id
        for node_id in ready:
            if any(self.is_output(t) for t in self.blocking[node_id]):
                return node_id
        for node_id in ready:
            for target in self.blocking[node_id]:
                if any(self.is_output(t) for t in self.blocking[target]):
                    return node_id
        return ready[0]

    def complete(self, node_id: str) -> None:
        del self.pending[node_id]
        for target in self.blocking.pop(node_id):
            self.block_count[target] -= 1


def format_value(value: Any) -> Any:
    if value is None or isinstance(value, (int, float, bool, str)):
        return value
    return str(value)


# --- the queue --------------------------------------------------------------------------------
class PromptQueue:
    def __init__(self, server):
        self.server = server
        self.mutex = threading.RLock()
        self.not_empty = threading.Condition(self.mutex)
        self.heap: list[tuple] = []
        self.seq = 0
        self.task_counter = 0
        self.running: dict[int, tuple] = {}
        self.history: dict[str, dict] = {}
        self.flags: dict[str, Any] = {}

    def put(self, item: tuple) -> None:
        with self.mutex:
            self.seq += 1
            heapq.heappush(self.heap, (item[0], item[1], self.seq, item))
            self.server.queue_updated()
            self.not_empty.notify()

    def get(self, timeout: float | None = None):
        with self.not_empty:
            while not self.heap:
                self.not_empty.wait(timeout=timeout)
                if timeout is not None and not self.heap:
                    return None
            item = heapq.heappop(self.heap)[3]
            task_id = self.task_counter
            self.running[task_id] = copy.deepcopy(item)
            self.task_counter += 1
            self.server.queue_updated()
            return item, task_id

    def task_done(self, task_id: int, history_result: dict, status: dict | None) -> None:
        with self.mutex:
            item = self.running.pop(task_id)
            if len(self.history) > MAXIMUM_HISTORY_SIZE:
                self.history.pop(next(iter(self.history)))
            prompt_id = item[1]
            self.history[prompt_id] = {"prompt": item[:5], "outputs": {}, "status": copy.deepcopy(status)}
            self.history[prompt_id].update(history_result)
            self.server.queue_updated()

    def snapshot(self) -> tuple[list, list]:
        with self.mutex:
            return [x[:5] for x in self.running.values()], [entry[3][:5] for entry in self.heap]

    def remaining(self) -> int:
        with self.mutex:
            return len(self.heap) + len(self.running)

    def is_running(self, prompt_id: str) -> bool:
        with self.mutex:
            return any(item[1] == prompt_id for item in self.running.values())

    def interrupt_if_running(self, prompt_id: str, interrupt: InterruptFlag) -> bool:
        with self.mutex:
            if self.is_running(prompt_id):
                interrupt.set()
                return True
            return False

    def wipe(self) -> None:
        with self.mutex:
            self.heap = []
            self.server.queue_updated()

    def delete(self, prompt_id: str) -> bool:
        with self.mutex:
            for index, entry in enumerate(self.heap):
                if entry[1] == prompt_id:
                    if len(self.heap) == 1:
                        self.wipe()
                    else:
                        self.heap.pop(index)
                        heapq.heapify(self.heap)
                    self.server.queue_updated()
                    return True
            return False

    def get_history(self, prompt_id: str | None = None, max_items: int | None = None, offset: int = -1) -> dict:
        with self.mutex:
            if prompt_id is None:
                out = {}
                if offset < 0 and max_items is not None:
                    offset = len(self.history) - max_items
                for index, key in enumerate(self.history):
                    if index >= offset:
                        out[key] = self.history[key]
                        if max_items is not None and len(out) >= max_items:
                            break
                return copy.deepcopy(out)
            if prompt_id in self.history:
                return {prompt_id: copy.deepcopy(self.history[prompt_id])}
            return {}

    def wipe_history(self) -> None:
        with self.mutex:
            self.history = {}

    def delete_history(self, prompt_id: str) -> None:
        with self.mutex:
            self.history.pop(prompt_id, None)

    def set_flag(self, name: str, value: Any) -> None:
        with self.mutex:
            self.flags[name] = value
            self.not_empty.notify()

    def take_flags(self) -> dict:
        with self.mutex:
            flags, self.flags = self.flags, {}
            return flags


# --- the executor -----------------------------------------------------------------------------
class Executor:
    def __init__(
        self, server, catalog: Catalog, registry: dict, paths, cache: OutputCache, disable_metadata: bool = False
    ):
        self.server = server
        self.catalog = catalog
        self.registry = registry
        self.paths = paths
        self.cache = cache
        self.disable_metadata = disable_metadata
        self.interrupt = InterruptFlag()
        self.objects: dict[tuple[str, str], Any] = {}
        self.status_messages: list = []
        self.success = True
        self.history_result: dict = {}
        self._client_id: str | None = None
        self._progress: ProgressRegistry | None = None

    def reset(self) -> None:
        self.cache.clear()
        self.objects.clear()

    # messages
    def add_message(self, event: str, data: dict, broadcast: bool) -> None:
        data = {**data, "timestamp": int(time.time() * 1000)}
        self.status_messages.append((event, data))
        if self._client_id is not None or broadcast:
            self.server.send_sync(event, data, self._client_id)

    def progress_hook(self, ctx: NodeContext, value, total, preview) -> None:
        self.interrupt.check()
        node_id = ctx.node_id
        if self._progress is not None:
            self._progress.update(node_id, value, total, preview)
        self.server.send_sync(
            "progress", {"value": value, "max": total, "prompt_id": ctx.prompt_id, "node": node_id}, self._client_id
        )
        if preview is not None and not self.server.supports_preview_metadata(self._client_id):
            self.server.send_sync(UNENCODED_PREVIEW_IMAGE, preview, self._client_id)

    # signatures
    def _is_changed(self, prompt: dict, node_id: str, memo: dict) -> Any:
        if node_id in memo:
            return memo[node_id]
        node = prompt[node_id]
        impl = self.registry.get(node["class_type"])
        check = getattr(impl, "is_changed", None) if impl else None
        value: Any = False
        if check is not None:
            info = self.catalog.info(node["class_type"])
            required, optional = expand_inputs(info.get("input", {}), node["inputs"])
            given = {
                k: (None if is_link(v) else v) for k, v in node["inputs"].items() if k in required or k in optional
            }
            try:
                value = check(NodeContext(self, node_id), **given)
            except Exception as ex:
                log.warning("WARNING: %s", ex)
                value = float("nan")
        memo[node_id] = value
        return value

    def _immediate_signature(self, prompt: dict, node_id: str, order: dict, memo: dict) -> list:
        if node_id not in prompt:
            return [_Never()]
        node = prompt[node_id]
        class_type = node["class_type"]
        signature: list = [class_type, to_hashable(self._is_changed(prompt, node_id, memo))]
        if self.catalog.unique_id_in_signature(class_type):
            signature.append(node_id)
        inputs = node["inputs"]
        for key in sorted(inputs):
            value = inputs[key]
            if is_link(value):
                signature.append((key, ("ANCESTOR", order[value[0]], value[1])))
            else:
                signature.append((key, to_hashable(value)))
        return signature

    def signature(self, prompt: dict, node_id: str, memo: dict) -> Any:
        ancestors: list[str] = []
        order: dict[str, int] = {}

        def walk(current: str) -> None:
            if current not in prompt:
                return
            inputs = prompt[current]["inputs"]
            for key in sorted(inputs):
                if is_link(inputs[key]):
                    source = inputs[key][0]
                    if source not in order:
                        ancestors.append(source)
                        order[source] = len(ancestors) - 1
                        walk(source)

        walk(node_id)
        parts = [self._immediate_signature(prompt, node_id, order, memo)]
        parts += [self._immediate_signature(prompt, a, order, memo) for a in ancestors]
        return tuple(tuple(p) for p in parts)

    # execution
    def execute(self, prompt: dict, prompt_id: str, extra_data: dict, outputs: list[str]) -> None:
        self.interrupt.set(False)
        self._client_id = extra_data.get("client_id")
        self.server.client_id = self._client_id
        self.status_messages = []
        self.add_message("execution_start", {"prompt_id": prompt_id}, broadcast=False)

        progress = ProgressRegistry(prompt_id, self.server, self._client_id)
        self._progress = progress
        memo: dict = {}
        keys = {}
        for node_id in prompt:
            try:
                keys[node_id] = self.signature(prompt, node_id, memo)
            except Exception as ex:  # a malformed graph cannot be cached
                log.warning("WARNING: %s", ex)
        self.cache.begin_prompt(keys)
        live_objects = {(n, prompt[n]["class_type"]) for n in prompt}
        self.objects = {k: v for k, v in self.objects.items() if k in live_objects}

        cached_nodes = [n for n in prompt if self.cache.get(n) is not None]
        self.add_message("execution_cached", {"nodes": cached_nodes, "prompt_id": prompt_id}, broadcast=False)

        ui_outputs: dict[str, dict] = {}
        executed: set[str] = set()
        results: dict[str, list] = {}
        scheduler = Scheduler(
            prompt,
            is_cached=lambda n: self.cache.get(n) is not None,
            is_output=lambda n: self.catalog.is_output_node(prompt[n]["class_type"]),
        )
        for node_id in outputs:
            scheduler.add_node(node_id)

        failed = False
        while not scheduler.empty():
            node_id = scheduler.next()
            if node_id is None:
                ex = DependencyCycleError("Dependency cycle detected")
                error = {
                    "node_id": next(iter(scheduler.pending)),
                    "exception_message": str(ex),
                    "exception_type": "graph.DependencyCycleError",
                    "traceback": [],
                    "current_inputs": [],
                }
                self._report_error(prompt_id, prompt, executed, error, ex)
                failed = True
                break
            ok, error, ex = self._execute_node(
                prompt, prompt_id, node_id, extra_data, executed, results, ui_outputs, progress
            )
            if not ok:
                self._report_error(prompt_id, prompt, executed, error, ex)
                failed = True
                break
            scheduler.complete(node_id)
        self.success = not failed
        if not failed:
            self.add_message("execution_success", {"prompt_id": prompt_id}, broadcast=False)

        self.history_result = {
            "outputs": {n: ui["output"] for n, ui in ui_outputs.items()},
            "meta": {n: ui["meta"] for n, ui in ui_outputs.items()},
        }
        self.server.last_node_id = None
        self._progress = None

    def _inputs_for(self, prompt: dict, node_id: str, results: dict, extra_data: dict) -> tuple[dict, dict]:
        """(declared inputs as lists, hidden inputs as lists) for one node."""
        node = prompt[node_id]
        info = self.catalog.info(node["class_type"])
        required, optional = expand_inputs(info.get("input", {}), node["inputs"])
        data: dict[str, list] = {}
        for name, value in node["inputs"].items():
            if is_link(value):
                source, socket = value[0], int(value[1])
                outputs = results.get(source)
                if outputs is None:
                    entry = self.cache.get(source)
                    outputs = entry.outputs if entry is not None else None
                if outputs is None or socket >= len(outputs):
                    data[name] = [None]
                else:
                    data[name] = outputs[socket]
            elif name in required or name in optional:
                data[name] = [value]
        hidden: dict[str, list] = {}
        for name, kind in self.catalog.hidden_inputs(node["class_type"]).items():
            if kind == "PROMPT":
                hidden[name] = [prompt]
            elif kind == "EXTRA_PNGINFO":
                hidden[name] = [extra_data.get("extra_pnginfo")]
            elif kind == "UNIQUE_ID":
                hidden[name] = [node_id]
        return data, hidden

    def _run(self, impl, ctx: NodeContext, class_type: str, data: dict) -> tuple[list, dict]:
        calls: list[dict]
        if self.catalog.is_input_list(class_type):
            calls = [data]
        elif not data:
            calls = [{}]
        else:
            count = max(len(v) for v in data.values())
            calls = [{k: v[i] if len(v) > i else v[-1] for k, v in data.items()} for i in range(count)]
        returns = []
        for kwargs in calls:
            self.interrupt.check()
            returns.append(impl.run(ctx, **kwargs))

        results, uis = [], []
        for value in returns:
            if isinstance(value, dict):
                if value.get("ui"):
                    uis.append(value["ui"])
                if "result" in value:
                    results.append(tuple(value["result"]))
            elif value is not None:
                results.append(tuple(value))
        outputs: list = []
        if results:
            is_list = self.catalog.output_is_list(class_type) or [False] * len(results[0])
            for slot in range(len(results[0])):
                if slot < len(is_list) and is_list[slot]:
                    merged = []
                    for r in results:
                        merged.extend(r[slot])
                    outputs.append(merged)
                else:
                    outputs.append([r[slot] for r in results])
        ui: dict = {}
        if uis:
            ui = {k: [y for x in uis for y in x[k]] for k in uis[0].keys()}
        return outputs, ui

    def _execute_node(self, prompt, prompt_id, node_id, extra_data, executed, results, ui_outputs, progress):
        class_type = prompt[node_id]["class_type"]
        cached = self.cache.get(node_id)
        if cached is not None:
            if cached.ui is not None:
                ui_outputs[node_id] = cached.ui
            if self._client_id is not None:
                self.server.send_sync(
                    "executed",
                    {
                        "node": node_id,
                        "display_node": node_id,
                        "output": (cached.ui or {}).get("output"),
                        "prompt_id": prompt_id,
                    },
                    self._client_id,
                )
            progress.finish(node_id)
            results[node_id] = cached.outputs
            return True, None, None

        data = hidden = None
        try:
            progress.start(node_id)
            data, hidden = self._inputs_for(prompt, node_id, results, extra_data)
            if self._client_id is not None:
                self.server.last_node_id = node_id
                self.server.send_sync(
                    "executing", {"node": node_id, "display_node": node_id, "prompt_id": prompt_id}, self._client_id
                )
            key = (node_id, class_type)
            impl = self.objects.get(key)
            if impl is None:
                factory = self.registry.get(class_type)
                if factory is None:
                    self.interrupt.check()
                    raise NotImplementedError(f"The ComfyUI stand-in does not implement the node '{class_type}'")
                impl = factory()
                self.objects[key] = impl
            ctx = NodeContext(self, node_id, prompt_id, prompt, extra_data, progress)
            outputs, ui = self._run(impl, ctx, class_type, data)
            if ui:
                ui_outputs[node_id] = {
                    "meta": {"node_id": node_id, "display_node": node_id, "parent_node": None, "real_node_id": node_id},
                    "output": ui,
                }
                if self._client_id is not None:
                    self.server.send_sync(
                        "executed",
                        {"node": node_id, "display_node": node_id, "output": ui, "prompt_id": prompt_id},
                        self._client_id,
                    )
            results[node_id] = outputs
            self.cache.set(node_id, CacheEntry(ui=ui_outputs.get(node_id), outputs=outputs))
        except InterruptProcessingException as ex:
            log.info("Processing interrupted")
            return False, {"node_id": node_id}, ex
        except Exception as ex:
            formatted = {}
            if data is not None:
                for name, values in {**data, **(hidden or {})}.items():
                    formatted[name] = [format_value(v) for v in values]
            log.error("!!! Exception during processing !!! %s", ex)
            log.error(traceback.format_exc())
            return (
                False,
                {
                    "node_id": node_id,
                    "exception_message": f"{ex}\n",
                    "exception_type": full_type_name(type(ex)),
                    "traceback": traceback.format_tb(ex.__traceback__),
                    "current_inputs": formatted,
                },
                ex,
            )
        progress.finish(node_id)
        executed.add(node_id)
        return True, None, None

    def _report_error(self, prompt_id, prompt, executed, error, ex) -> None:
        node_id = error["node_id"]
        message = {
            "prompt_id": prompt_id,
            "node_id": node_id,
            "node_type": prompt[node_id]["class_type"],
            "executed": list(executed),
        }
        if isinstance(ex, InterruptProcessingException):
            self.add_message("execution_interrupted", message, broadcast=True)
        else:
            message.update(
                {
                    "exception_message": error["exception_message"],
                    "exception_type": error["exception_type"],
                    "traceback": error["traceback"],
                    "current_inputs": error["current_inputs"],
                    "current_outputs": list(prompt.keys()),
                }
            )
            self.add_message("execution_error", message, broadcast=False)


def prompt_worker(queue: PromptQueue, executor: Executor, server, stop: threading.Event) -> None:
    while not stop.is_set():
        got = queue.get(timeout=0.5)
        if got is not None:
            item, task_id = got
            started = time.perf_counter()
            prompt_id = item[1]
            server.last_prompt_id = prompt_id
            extra_data = dict(item[3])
            extra_data.update(item[5] if len(item) > 5 else {})
            try:
                executor.execute(item[2], prompt_id, extra_data, item[4])
            except Exception:  # the worker must survive anything a prompt does
                log.exception("stand-in executor failure")
                executor.success = False
                executor.history_result = {"outputs": {}, "meta": {}}
            queue.task_done(
                task_id,
                executor.history_result,
                {
                    "status_str": "success" if executor.success else "error",
                    "completed": executor.success,
                    "messages": executor.status_messages,
                },
            )
            if server.client_id is not None:
                server.send_sync("executing", {"node": None, "prompt_id": prompt_id}, server.client_id)
            log.info("Prompt executed in %.2f seconds", time.perf_counter() - started)
        flags = queue.take_flags()
        if flags.get("free_memory", False):
            executor.reset()
