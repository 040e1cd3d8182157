"""One job through ComfyUI: stage inputs, submit, wait, collect every output, clean up.

The same `Pipeline.run` serves sync requests, async jobs and named templates.
"""

from __future__ import annotations

import base64
import copy
import functools
import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import orjson

from . import graph
from .comfy import Comfy
from .comfy_client import Interrupted, PromptWatch
from .errors import Cancelled, ServiceError, Timeout
from .inputs import rewrite_references
from .outputs import OutputFile, collect, file_refs
from .predict_request import PredictRequest, check_workflow

log = logging.getLogger("handler.pipeline")

# An undeclared input on output nodes: ComfyUI ignores it when running the node, but it is part
# of the node's cache key, so each request's output nodes run again (cheaply, upstream stays
# cached) and never hand back a file an earlier request owned and has deleted.
REQUEST_MARKER = "_request_id"
# Output nodes ComfyUI may not flag when its catalogue is unavailable.
KNOWN_OUTPUT_NODES = frozenset({"SaveImage", "PreviewImage", "SaveImageWebsocket", "PreviewAny",
                                "SaveAnimatedWEBP", "SaveAnimatedPNG", "SaveLatent"})
# How long an interrupted prompt gets to stop before its files are removed under it.
INTERRUPT_GRACE_S = 15.0


@dataclass
class PredictResult:
    prompt_id: str
    files: list[OutputFile]
    outputs: dict[str, dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)

    # Set when the caller asked to remove the job's files itself, after it has answered.
    cleanup: Callable[[], None] | None = None

    def _document(self, image: Callable[[OutputFile], str]) -> dict[str, Any]:
        return {
            "status": "success",
            "prompt_id": self.prompt_id,
            "images": [{**file.describe(), "image": image(file)} for file in self.files],
            "outputs": self.outputs,
            "timings": self.timings,
        }

    def to_response(self) -> dict[str, Any]:
        return self._document(lambda file: base64.b64encode(file.data).decode("ascii"))

    def to_json(self) -> bytes:
        return b"".join(self.json_parts()[1])

    def json_parts(self) -> tuple[int, Iterator[bytes]]:
        """`to_response()` as JSON, in parts, with its length known up front.

        Base64 needs no JSON escaping, so it is spliced in rather than escaped and copied, and
        each file is encoded only when its turn comes: the client reads one while the next is
        encoded. Megabytes of base64 dominate the cost of a response."""
        marker = uuid.uuid4().hex
        head, *tails = orjson.dumps(self._document(lambda file: marker)).split(f'"{marker}"'.encode())
        length = len(head) + sum(len(tail) + 2 + 4 * ((len(file.data) + 2) // 3)
                                 for file, tail in zip(self.files, tails))

        def parts() -> Iterator[bytes]:
            yield head
            for file, tail in zip(self.files, tails):
                yield b'"'
                yield base64.b64encode(file.data)
                yield b'"' + tail

        return length, parts()


def prepare_graph(workflow: dict[str, Any], request_id: str, output_classes: frozenset[str]) -> dict[str, Any]:
    """A private copy of the graph whose outputs land in the request's own subfolder."""
    graph = copy.deepcopy(workflow)
    for node in graph.values():
        class_type = node.get("class_type")
        inputs = node.setdefault("inputs", {})
        is_output = class_type in output_classes or class_type in KNOWN_OUTPUT_NODES
        prefix = inputs.get("filename_prefix")
        if isinstance(prefix, str):
            # A "/" in the prefix makes a subfolder: outputs go under output/<request id>/.
            inputs["filename_prefix"] = f"{request_id}/{prefix.lstrip('/')}"
            is_output = True
        if is_output:
            inputs[REQUEST_MARKER] = request_id
    return graph


def _public_subfolder(subfolder: str, request_id: str) -> str:
    """Callers see the folders they named, not the private per-request one we added."""
    if subfolder == request_id:
        return ""
    return subfolder[len(request_id) + 1:] if subfolder.startswith(request_id + "/") else subfolder


def public_outputs(outputs: dict[str, dict[str, Any]], request_id: str) -> dict[str, dict[str, Any]]:
    public = copy.deepcopy(outputs)
    for _, _, ref, _ in file_refs(public):
        ref["subfolder"] = _public_subfolder(ref.get("subfolder") or "", request_id)
    return public


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class Pipeline:
    def __init__(self, comfy: Comfy):
        self.comfy = comfy
        self.client = comfy.client

    def run(self, request: PredictRequest, cancel: threading.Event | None = None, *,
            defer_cleanup: bool = False) -> PredictResult:
        """Run one job. With `defer_cleanup`, a successful result's files stay until the caller
        calls `result.cleanup()` (the sync route does so after it has answered)."""
        self.comfy.require_ready()
        return self._run(request, cancel, defer_cleanup)

    def preflight(self, workflow: dict[str, Any]) -> None:
        """Refuse now what ComfyUI would refuse later: async jobs are accepted only if they can run."""
        if self.comfy.object_info:
            graph.check(workflow, self.comfy.object_info).raise_for_errors()

    def warmup(self, workflow: dict[str, Any]) -> None:
        self._run(PredictRequest(workflow=check_workflow(workflow)), None, False)

    def _run(self, request: PredictRequest, cancel: threading.Event | None, defer_cleanup: bool) -> PredictResult:
        started = time.monotonic()
        rid = request.request_id
        prompt_id = str(uuid.uuid4())
        watch: PromptWatch | None = None
        deferred = False
        try:
            renames = self.comfy.inputs.stage(rid, request.images)
            graph = prepare_graph(request.workflow, rid, self.comfy.output_classes)
            rewrite_references(graph, renames)
            staged = time.monotonic()
            watch = self.client.watch(prompt_id)  # before submitting: no event can be missed
            self.client.submit(graph, prompt_id)
            submitted = time.monotonic()
            self._wait(watch, started + request.timeout_s, cancel, request)
            if watch.missed_events:
                # The websocket dropped during the run: outputs may only be in the history.
                entry = self.client.history(prompt_id)
                if entry:
                    watch.apply_history(entry)
            finished = time.monotonic()
            files = collect(watch.outputs, self._output_images(watch, graph), self.comfy.outputs, request.output)
            for file in files:
                file.subfolder = _public_subfolder(file.subfolder, rid)
            collected = time.monotonic()
            timings = {
                "total_ms": _ms(collected - started),
                "inputs_ms": _ms(staged - started),
                "submit_ms": _ms(submitted - staged),
                "comfyui_ms": _ms(finished - submitted),
                "outputs_ms": _ms(collected - finished),
            }
            if watch.started_at:
                timings["queued_ms"] = _ms(max(0.0, watch.started_at - submitted))
            result = PredictResult(prompt_id, files, public_outputs(watch.outputs, rid), timings)
            if defer_cleanup:
                result.cleanup = functools.partial(self._discard, rid, watch)
                deferred = True
            return result
        finally:
            if watch is not None:
                self.client.forget(prompt_id)
            if not deferred:
                self._discard(rid, watch)

    def _discard(self, request_id: str, watch: PromptWatch | None) -> None:
        """Cloud Run's disk is memory: a job's inputs and outputs go as soon as it is answered."""
        self.comfy.inputs.discard(request_id)
        refs = [ref for _, _, ref, _ in file_refs(watch.outputs)] if watch else []
        self.comfy.outputs.discard(request_id, refs)

    def _wait(self, watch: PromptWatch, deadline: float, cancel: threading.Event | None,
              request: PredictRequest) -> None:
        step = 0.25 if cancel is not None else None
        while not watch.done:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or (cancel is not None and cancel.is_set()):
                break
            watch.wait(remaining if step is None else min(step, remaining))
        if not watch.done:
            self._interrupt(watch)
            if cancel is not None and cancel.is_set():
                raise Cancelled("the job was cancelled")
            raise Timeout(f"the job did not finish within {request.timeout_s:g} s; it was interrupted")
        if isinstance(watch.error, Interrupted) and cancel is not None and cancel.is_set():
            raise Cancelled("the job was cancelled")
        if watch.error is not None:
            raise watch.error

    def _interrupt(self, watch: PromptWatch) -> None:
        try:
            self.client.interrupt(watch.prompt_id)
            if not self.client.queued(watch.prompt_id):
                return  # dropped from the queue before it started: ComfyUI sends no event for that
        except ServiceError as exc:
            log.warning("could not interrupt %s: %s", watch.prompt_id, exc.message)
            return
        if not watch.wait(INTERRUPT_GRACE_S):
            log.warning("prompt %s did not stop within %.0f s of the interrupt", watch.prompt_id, INTERRUPT_GRACE_S)

    def _output_images(self, watch: PromptWatch, graph: dict[str, Any]):
        """Images pushed over the websocket by output nodes (not samplers' previews)."""
        kept = []
        for image in watch.binary_images:
            node = graph.get(image.node_id or "")
            class_type = node.get("class_type") if node else None
            if class_type in self.comfy.output_classes or class_type in KNOWN_OUTPUT_NODES:
                kept.append(image)
        return kept
