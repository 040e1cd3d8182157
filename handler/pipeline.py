"""One job through ComfyUI: stage inputs, submit, wait, collect every output, clean up.

The same `Pipeline.run` serves sync requests, async jobs and named templates, each in a private
request folder, after the node policy (`comfyui/policy.py`; docs/security.md). While a run's
models named by URL download, its progress sink hears `download` events and `downloading()`
lists those runs for the dashboard (their ids, the latest progress, since when).
"""

from __future__ import annotations

import base64
import functools
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from handler import benchtrace, logs
from handler.comfyui import graph, policy, refusals
from handler.comfyui.client import BinaryImage, Interrupted, PromptWatch
from handler.comfyui.inputs import rewrite_references
from handler.comfyui.instance import Comfy
from handler.comfyui.outputs import (
    OutputFile,
    collect,
    drop_foreign_files,
    file_refs,
    in_request_folder,
    is_own_file,
    without_folder_name,
)
from handler.comfyui.prepare import KNOWN_OUTPUT_NODES, prepare_graph, preview_nodes
from handler.comfyui.progress import ProgressSink, Reporter, download_event
from handler.comfyui.supervisor import private_paths
from handler.errors import (
    Cancelled,
    ComfyUnavailable,
    QueueTimeout,
    ServiceError,
    Timeout,
    WorkflowInvalid,
    register_private_path,
    scrub_text,
)
from handler.models import ondemand
from handler.models.cache import ModelCache
from handler.models.progress import DownloadProgress
from handler.predict_request import PredictRequest, check_workflow, is_folder_name, new_folder_name
from handler.runtime import Runtime, Trigger, link
from handler.taskqueue.base import PRIORITIES

log = logging.getLogger("handler.pipeline")

# How long an interrupted prompt gets to stop before its files are removed under it.
INTERRUPT_GRACE_S = 15.0
# The same while the service stops: the answer must leave well inside Cloud Run's 10 s.
STOP_INTERRUPT_GRACE_S = 2.0
# ComfyUI runs the lowest `number` first. Ours: priority rank, then arrival order, so a later
# high prompt overtakes an earlier low one still pending in ComfyUI's queue.
_RANKS = {name: rank for rank, name in enumerate(PRIORITIES)}
_RANK_SPAN = 10**12  # arrivals per rank; exact in a float (ComfyUI parses `number` as one)


def queue_number(priority: str, arrival: int) -> float:
    return float(_RANKS[priority] * _RANK_SPAN + arrival % _RANK_SPAN)


@dataclass
class PredictResult:
    prompt_id: str
    files: list[OutputFile]
    outputs: dict[str, dict[str, Any]]
    timings: dict[str, float] = field(default_factory=dict)
    models: list[dict[str, Any]] = field(default_factory=list)  # fetched by URL (models/ondemand.py)

    # Set when the caller asked to remove the job's files itself, after it has answered.
    cleanup: Callable[[], None] | None = None

    def _document(self, image: Callable[[OutputFile], str]) -> dict[str, Any]:
        return {
            "status": "success",
            "prompt_id": self.prompt_id,
            "images": [{**file.describe(), "image": image(file)} for file in self.files],
            "outputs": self.outputs,
            "timings": self.timings,
            **({"models": self.models} if self.models else {}),
        }

    def to_response(self) -> dict[str, Any]:
        return self._document(lambda file: base64.b64encode(file.data).decode("ascii"))

    def json_parts(self) -> tuple[int, Iterator[bytes]]:
        """`to_response()` as JSON, in parts, with its length known up front.

        Base64 needs no JSON escaping, so it is spliced in rather than escaped and copied, and
        each file is encoded only when its turn comes: the client reads one while the next is
        encoded. Megabytes of base64 dominate the cost of a response."""
        marker = uuid.uuid4().hex
        head, *tails = orjson.dumps(self._document(lambda file: marker)).split(f'"{marker}"'.encode())
        length = len(head) + sum(
            len(tail) + 2 + 4 * ((len(file.data) + 2) // 3) for file, tail in zip(self.files, tails)
        )

        def parts() -> Iterator[bytes]:
            yield head
            for file, tail in zip(self.files, tails):
                yield b'"'
                yield base64.b64encode(file.data)
                yield b'"' + tail

        return length, parts()


def _public_subfolder(subfolder: str, request_id: str) -> str:
    """Callers see the folders they named, not the private per-request one we added."""
    if subfolder == request_id:
        return ""
    return subfolder[len(request_id) + 1 :] if subfolder.startswith(request_id + "/") else scrub_text(subfolder)


def public_outputs(
    outputs: dict[str, dict[str, Any]], request_id: str, previews: frozenset[str] = frozenset()
) -> dict[str, dict[str, Any]]:
    """ComfyUI's outputs as the caller may see them: our folder names taken out, previews shown
    as the temp files they stand for (a copy)."""
    public = {
        node_id: {
            key: [dict(item) if isinstance(item, dict) else item for item in value]
            if isinstance(value, list)
            else value
            for key, value in output.items()
        }
        for node_id, output in outputs.items()
    }
    for node_id, _, ref, _ in file_refs(public):
        ref["subfolder"] = _public_subfolder(ref.get("subfolder") or "", request_id)
        if node_id in previews and ref.get("type") == "output":
            ref["type"] = "temp"
    for output in public.values():  # text outputs (PreviewAny) are ComfyUI's words too
        for key, value in output.items():
            if isinstance(value, list):
                output[key] = [scrub_text(item) if isinstance(item, str) else item for item in value]
    return public


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


class Pipeline:
    def __init__(self, comfy: Comfy, runtime: Runtime, *, models: ModelCache | None = None):
        self.comfy = comfy
        self.models = models  # the cache of models named by URL; None: such workflows are refused
        self.client = comfy.client
        # Error bodies name these folders by placeholder, never by path (errors.scrub).
        for path, placeholder in private_paths(
            comfy.folders, comfyui=comfy.comfyui, models=comfy.model_settings, http=comfy.http
        ).items():
            register_private_path(path, placeholder)
        self.runtime = runtime
        self._arrivals = itertools.count()
        self._downloads: dict[str, dict[str, Any]] = {}  # by prompt id: runs whose models download
        self._downloads_lock = threading.Lock()

    def downloading(self) -> list[dict[str, Any]]:
        """Runs whose models download now: {labels, progress (DownloadProgress.to_dict()), since}."""
        with self._downloads_lock:
            return [dict(row) for row in self._downloads.values() if row["progress"] is not None]

    def run(
        self,
        request: PredictRequest,
        cancel: threading.Event | None = None,
        *,
        defer_cleanup: bool = False,
        progress: ProgressSink | None = None,
    ) -> PredictResult:
        """Run one job. With `defer_cleanup`, a successful result's files stay until the caller
        calls `result.cleanup()` (the sync route does so after it has answered). `progress`, if
        given, gets the run's events (handler/comfyui/progress.py) on ComfyUI's listener thread.

        `request.timeout_s` bounds fetching input URLs and then the run inside ComfyUI, counted
        from its `execution_start`; the wait in ComfyUI's queue before that is bounded by
        QUEUE_WAIT_TIMEOUT_S. A `cancel` that is a `runtime.Trigger` wakes the wait at once
        (a plain Event is polled)."""
        if self.runtime.stopping.is_set():
            raise ComfyUnavailable("the service is shutting down; retry", retry_after_s=1)
        self.admit(request)
        # Before anything is staged: a graph the node policy refuses never reaches ComfyUI.
        policy.check(request.workflow, self.comfy.object_info, self._folder_nodes())
        benchtrace.mark("pipeline")
        result = self._run(request, cancel, defer_cleanup, progress)
        benchtrace.mark("pipeline_end", timings=result.timings)  # after the cleanup in its `finally`
        return result

    def admit(self, request: PredictRequest) -> None:
        """Refuse what this instance cannot run now: anything while ComfyUI is not ready (503),
        a confined request where ComfyUI does not keep each prompt in its own folders (403;
        known once it is ready)."""
        self.comfy.require_ready()
        policy.check_confinement(request.confined, self.comfy.isolated)

    def preflight(self, workflow: dict[str, Any], *, confined: bool) -> None:
        """Refuse now what ComfyUI would refuse later: async jobs are accepted only if they can run."""
        object_info = self.comfy.object_info  # waits while the catalogue is loading
        if self.comfy.ready:  # otherwise the run decides, once ComfyUI has said what it runs
            policy.check_confinement(confined, self.comfy.isolated)
        policy.check(workflow, object_info, self._folder_nodes())
        if object_info:
            graph.check(workflow, object_info).raise_for_errors()

    def _folder_nodes(self) -> frozenset[str]:  # ALLOW_FOLDER_NODES, only where prompts see their own folders
        return frozenset(self.comfy.comfyui.allow_folder_nodes) if self.comfy.isolated else frozenset()

    def warmup(self, workflow: dict[str, Any]) -> None:
        self._run(PredictRequest(workflow=check_workflow(workflow)), None, False)

    def _run(
        self,
        request: PredictRequest,
        cancel: threading.Event | None,
        defer_cleanup: bool,
        progress: ProgressSink | None = None,
    ) -> PredictResult:
        started = time.monotonic()
        number = queue_number(request.priority, next(self._arrivals))
        # The private folder name is a secret of this run: never a job id or another caller's value.
        rid = request.request_id if is_folder_name(request.request_id) else new_folder_name()
        prompt_id = str(uuid.uuid4())
        logs.bind(prompt_id=prompt_id, workflow_id=request.workflow_id)  # the request's log lines, access included
        watch: PromptWatch | None = None
        reporter: Reporter | None = None
        deferred = False
        models = ondemand.Staged()
        try:
            info = self.comfy.object_info if self.models is not None else None
            with self._downloads_lock:
                self._downloads[prompt_id] = {"labels": logs.labels(), "progress": None, "since": time.monotonic()}
            models = ondemand.stage(
                self.models,
                request.workflow,
                info,
                started + request.timeout_s,
                cancel,
                functools.partial(self._downloaded, prompt_id, progress),
            )
            with self._downloads_lock:
                self._downloads.pop(prompt_id, None)
            fetched = time.monotonic()
            isolated = self.comfy.isolated  # the prompt sees only input/<rid>, output/<rid>, temp/<rid>
            renames = self.comfy.inputs.stage(rid, request.images, deadline=started + request.timeout_s)
            # Nodes whose cached output could be another request's files run again too.
            marked = self.comfy.output_classes | policy.fresh_each_run(request.workflow, self.comfy.object_info)
            graph = prepare_graph(request.workflow, rid, marked, marker=prompt_id, isolated=isolated)
            models.rewrite(graph)
            previews = preview_nodes(request.workflow)
            if not isolated:  # the names as sent are already the request's own files
                rewrite_references(graph, renames)
            staged = time.monotonic()
            watch = self.client.watch(prompt_id)  # before submitting: no event can be missed
            watch.number = number
            if progress is not None:
                reporter = Reporter(
                    progress,
                    request.workflow,  # the caller's node classes, not our rewrite of previews
                    frozenset(self.comfy.output_classes) | KNOWN_OUTPUT_NODES,
                    functools.partial(public_outputs, request_id=rid, previews=previews),
                    prompt_id=prompt_id,
                    previews=request.previews,
                )
                watch.listener = reporter.on_message
            try:
                self.client.submit(graph, prompt_id, number, folder=rid if isolated else None)
            except WorkflowInvalid as refusal:
                raise refusals.with_installed(
                    refusal, request.workflow, self.comfy.catalogue.latest().object_info
                ) from None
            submitted = time.monotonic()
            if reporter is not None:
                reporter.queued(self.client.ahead_of(prompt_id))
            self._wait(watch, submitted, cancel, request)
            benchtrace.mark("waited")
            if watch.missed_events:
                # The websocket dropped during the run: outputs may only be in the history.
                entry = self.client.history(prompt_id)
                if entry:
                    watch.apply_history(entry)
            finished = time.monotonic()
            if isolated:
                in_request_folder(watch.outputs, rid)
            if drop_foreign_files(watch.outputs, rid):
                log.warning("file references that name no file of this run were left out of its outputs")
            files = collect(watch.outputs, self._output_images(watch, graph), self.comfy.outputs, request.output)
            for file in files:
                # ComfyUI writes the graph, our rewritten prefixes included, into each PNG.
                file.data = without_folder_name(file, rid)
                file.subfolder = _public_subfolder(file.subfolder, rid)
                if file.node_id in previews and file.type == "output":
                    file.type = "temp"
            collected = time.monotonic()
            timings = {
                "total_ms": _ms(collected - started),
                "models_ms": _ms(fetched - started),
                "inputs_ms": _ms(staged - fetched),
                "submit_ms": _ms(submitted - staged),
                "comfyui_ms": _ms(finished - submitted),
                "outputs_ms": _ms(collected - finished),
            }
            if watch.started_at:
                timings["queued_ms"] = _ms(max(0.0, watch.started_at - submitted))
            result = PredictResult(
                prompt_id, files, public_outputs(watch.outputs, rid, previews), timings, models.report()
            )
            if defer_cleanup:
                result.cleanup = functools.partial(self._discard, rid, watch)
                deferred = True
            return result
        finally:
            with self._downloads_lock:
                self._downloads.pop(prompt_id, None)
            models.release()  # the prompt is over: its models may be evicted again
            if reporter is not None:
                reporter.close()
            if watch is not None:
                self.client.forget(prompt_id)
            if not deferred:
                self._discard(rid, watch)

    def _downloaded(self, prompt_id: str, sink: ProgressSink | None, value: DownloadProgress) -> None:
        """Heard on the download's thread (or the watchdog's), throttled: for the dashboard and the sink."""
        with self._downloads_lock:
            row = self._downloads.get(prompt_id)
            if row is None:
                return  # the run is past its downloads
            row["progress"] = value.to_dict()
        if sink is not None:
            sink(download_event(value))

    def _discard(self, request_id: str, watch: PromptWatch | None) -> None:
        """Cloud Run's disk is memory: a job's inputs and outputs go as soon as it is answered."""
        self.comfy.inputs.discard(request_id)
        # Only the run's own files: a ref a node echoed from the caller, or one not yet made
        # relative to the request's folder (a run that failed), may name another's file.
        refs = [ref for _, _, ref, _ in file_refs(watch.outputs)] if watch else []
        refs = [ref for ref in refs if is_own_file(ref, request_id)]
        self.comfy.outputs.discard(request_id, refs)

    def _wait(
        self, watch: PromptWatch, submitted: float, cancel: threading.Event | None, request: PredictRequest
    ) -> None:
        """Wait on one event (`watch.changed`) set on start, end, cancel and shutdown."""
        stopping = self.runtime.stopping
        changed = watch.changed
        queue_wait_s = self.comfy.http.queue_wait_timeout_s
        step = 0.25 if cancel is not None and not isinstance(cancel, Trigger) else None
        with link(stopping, changed), link(cancel, changed):
            while True:
                changed.clear()  # cleared before the checks: a change after them ends the wait below
                if watch.done:
                    break
                if stopping.is_set():
                    self._interrupt(watch, STOP_INTERRUPT_GRACE_S)
                    raise ComfyUnavailable(
                        "the service is shutting down; the job was interrupted, retry it", retry_after_s=1
                    )
                if cancel is not None and cancel.is_set():
                    self._interrupt(watch)
                    raise Cancelled("the job was cancelled")
                now = time.monotonic()
                if watch.started_at is None:
                    limit = submitted + queue_wait_s
                    if now >= limit:
                        self._interrupt(watch)
                        raise QueueTimeout(
                            f"ComfyUI did not start the job within {queue_wait_s:g} s (QUEUE_WAIT_TIMEOUT_S): "
                            "it is busy with other jobs; it was dropped from the queue, retry later"
                        )
                else:
                    limit = watch.started_at + request.timeout_s
                    if now >= limit:
                        self._interrupt(watch)
                        raise Timeout(
                            f"the job did not finish within {request.timeout_s:g} s of starting; it was interrupted"
                        )
                changed.wait(limit - now if step is None else min(step, limit - now))
        if isinstance(watch.error, Interrupted) and stopping.is_set():
            raise ComfyUnavailable("the service is shutting down; the job was interrupted, retry it", retry_after_s=1)
        if isinstance(watch.error, Interrupted) and cancel is not None and cancel.is_set():
            raise Cancelled("the job was cancelled")
        if watch.error is not None:
            raise watch.error

    def _interrupt(self, watch: PromptWatch, grace_s: float = INTERRUPT_GRACE_S) -> None:
        # The HTTP calls get no more than the grace either: ComfyUI may be the thing that hangs.
        try:
            self.client.interrupt(watch.prompt_id, timeout_s=min(30.0, grace_s))
            if not self.client.queued(watch.prompt_id, timeout_s=min(30.0, grace_s)):
                return  # dropped from the queue before it started: ComfyUI sends no event for that
        except ServiceError as exc:
            log.warning("could not interrupt %s: %s", watch.prompt_id, exc.message)
            return
        if not watch.wait(grace_s):
            log.warning("prompt %s did not stop within %.0f s of the interrupt", watch.prompt_id, grace_s)

    def _output_images(self, watch: PromptWatch, graph: dict[str, Any]) -> list[BinaryImage]:
        """Images pushed over the websocket by output nodes (not samplers' previews)."""
        kept = []
        for image in watch.binary_images:
            node = graph.get(image.node_id or "")
            class_type = node.get("class_type") if node else None
            if class_type in self.comfy.output_classes or class_type in KNOWN_OUTPUT_NODES:
                kept.append(image)
        return kept
