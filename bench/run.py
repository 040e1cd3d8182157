#!/usr/bin/env python3
"""Benchmark: the service against driving ComfyUI directly, on one real ComfyUI.

Starts one ComfyUI (COMFYUI_PATH / COMFYUI_PYTHON) and one service (`python -m handler`)
attached to it by URL with its folders (so both read outputs from disk), then measures,
interleaved round by round (the order alternates each round, warmup rounds are discarded):

  (a) EmptyImage 512x512 -> SaveImage, sync: direct vs POST /predict
  (b) test_resources/workflows/batch4_noise_1024.json, sync: direct vs POST /predict
  (c) async /predict with a webhook -> the webhook at a local receiver (direct sync as reference)
  (d) 50 queued jobs, until the 50th webhook, vs 50 prompts queued at once straight to ComfyUI

"Direct" is the best a client can do: one websocket with a fixed client id, one keep-alive
requests.Session, POST /prompt, wait for `execution_success` of that prompt, read the output
files from disk and base64-encode them. Every prompt is unique (EmptyImage's colour changes),
so nothing is served from ComfyUI's cache, for both methods alike.

    python bench/run.py --comfyui-path PATH --comfyui-python PYTHON     # or COMFYUI_PATH / COMFYUI_PYTHON

Prints a table and writes it to bench/RESULTS.md (see --results). Run it with the project's
interpreter (the one that has the service's dependencies).
"""

from __future__ import annotations

import argparse
import base64
import copy
import datetime as dt
import http.server
import json
import os
import platform
import secrets
import select
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import websocket

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from handler.comfyui.supervisor import COMFY_ENV_DEFAULTS  # noqa: E402

BATCH4 = ROOT / "test_resources" / "workflows" / "batch4_noise_1024.json"

HEADER = "# Benchmark results\n\nWritten by `python bench/run.py` (see README.md beside it).\n\n"
TARGET_A_MS = 3.0  # service median <= direct median + 3 ms
TARGET_B_RATIO = 1.05  # service median <= 1.05 x direct median


def now() -> float:
    return time.perf_counter()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- workflows ---------------------------------------------------------------------------------


class Colours:
    """Unique EmptyImage colours for the whole run: no prompt is ever served from the cache."""

    def __init__(self) -> None:
        self.next = secrets.randbelow(0x7FFFFF)

    def __call__(self) -> int:
        self.next = (self.next + 7919) % 0x1000000
        return self.next


def trivial_graph(colour: int) -> dict[str, Any]:
    return {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 512, "height": 512, "batch_size": 1, "color": colour}},
        "2": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "bench/trivial"}},
    }


def batch4_graph(template: dict[str, Any], colour: int) -> dict[str, Any]:
    graph = copy.deepcopy(template)
    graph["1"]["inputs"]["color"] = colour
    return graph


# --- processes ---------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads), from /proc (Linux)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Process:
    def __init__(self, name: str, cmd: list[str], cwd: Path, env: dict[str, str], log_path: Path):
        self.name = name
        self.log_path = log_path
        with open(log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_http(self, url: str, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            try:
                if requests.get(url, timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready within {timeout_s:.0f} s:\n{self.tail()}")

    def cpu_s(self) -> float:
        """CPU seconds (user + system, all threads) the process has used so far."""
        return cpu_seconds(self.proc.pid)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class ComfyDirs:
    input: Path
    output: Path
    temp_arg: Path  # what --temp-directory gets; ComfyUI writes into <it>/temp
    user: Path

    @property
    def temp(self) -> Path:
        return self.temp_arg / "temp"


def start_comfyui(args: argparse.Namespace, work: Path) -> tuple[Process, str, ComfyDirs]:
    dirs = ComfyDirs(work / "comfy-input", work / "comfy-output", work / "comfy-temp", work / "comfy-user")
    for folder in (dirs.input, dirs.output, dirs.temp_arg, dirs.user):
        folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cmd = [
        args.comfyui_python,
        "main.py",
        "--listen",
        "127.0.0.1",
        "--port",
        str(port),
        "--input-directory",
        str(dirs.input),
        "--output-directory",
        str(dirs.output),
        "--temp-directory",
        str(dirs.temp_arg),
        "--user-directory",
        str(dirs.user),
        "--database-url",
        "sqlite:///:memory:",
        "--disable-auto-launch",
        *args.comfyui_args.split(),
    ]
    # As the service starts its own ComfyUI: its defaults (OMP_WAIT_POLICY=PASSIVE) unless set here.
    env = {**COMFY_ENV_DEFAULTS, **os.environ}
    proc = Process("ComfyUI", cmd, Path(args.comfyui_path), env, work / "comfyui.log")
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/system_stats", args.startup_timeout)
    return proc, url, dirs


def start_service(
    args: argparse.Namespace,
    work: Path,
    comfy_url: str,
    dirs: ComfyDirs,
    webhook_secret: str,
    extra_env: dict[str, str] | None = None,
) -> tuple[Process, str]:
    """The service attached to `comfy_url`; `extra_env` last (bench/observe_cost.py: its settings)."""
    port = free_port()
    drop = ("COMFYUI_", "GCS_", "TASKS_", "QUEUE_", "STORAGE_", "CLOUD_", "WEBHOOK_", "URL_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop) and k not in ("K_SERVICE", "PORT")}
    env.update(
        {
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "COMFYUI_URL": comfy_url,
            "COMFYUI_INPUT_DIR": str(dirs.input),
            "COMFYUI_OUTPUT_DIR": str(dirs.output),
            "COMFYUI_TEMP_DIR": str(dirs.temp),
            "STATE_DIR": str(work / "service-state"),
            "WEBHOOK_SECRET": webhook_secret,
            "URL_ALLOWLIST": "127.0.0.1",
            "LOG_LEVEL": args.service_log_level,
            "PYTHONUNBUFFERED": "1",
        }
    )
    env.update(extra_env or {})
    python = args.service_command.split() if args.service_command else [sys.executable]
    cmd = [*python, "-m", "handler"]
    if args.trace:
        env["TRACE_OUT"] = str(work / "trace.jsonl")  # the service's own tracing hook (handler/benchtrace.py)
    proc = Process("service", cmd, ROOT, env, work / "service.log")
    url = f"http://127.0.0.1:{port}"
    proc.wait_http(url + "/healthz", args.startup_timeout)
    return proc, url


# --- driving ComfyUI directly --------------------------------------------------------------------


class WorkflowFailed(RuntimeError):
    pass


class Direct:
    """One websocket with a fixed client id and one keep-alive session, messages read inline."""

    def __init__(self, base_url: str, dirs: ComfyDirs):
        self.base_url = base_url
        self.dirs = dirs
        self.client_id = uuid.uuid4().hex
        self.http = requests.Session()
        ws_url = "ws" + base_url[len("http") :] + f"/ws?clientId={self.client_id}"
        self.ws = websocket.create_connection(ws_url, timeout=600)
        self.queue_remaining: int | None = None

    def close(self) -> None:
        self.ws.close()
        self.http.close()

    def _message(self) -> dict[str, Any] | None:
        opcode, payload = self.ws.recv_data()
        if opcode != websocket.ABNF.OPCODE_TEXT:
            return None
        message = json.loads(payload)
        if message.get("type") == "status":
            info = ((message.get("data") or {}).get("status") or {}).get("exec_info") or {}
            self.queue_remaining = info.get("queue_remaining")
        return message

    def submit(self, graph: dict[str, Any]) -> str:
        prompt_id = str(uuid.uuid4())
        body = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        response = self.http.post(self.base_url + "/prompt", json=body, timeout=60)
        if response.status_code != 200:
            raise WorkflowFailed(f"POST /prompt answered {response.status_code}: {response.text[:500]}")
        return prompt_id

    def _path(self, ref: dict[str, Any]) -> Path:
        base = self.dirs.temp if ref.get("type") == "temp" else self.dirs.output
        return base / (ref.get("subfolder") or "") / ref["filename"]

    def read_outputs(self, outputs: dict[str, dict[str, Any]]) -> tuple[list[str], list[Path]]:
        encoded, paths = [], []
        for output in outputs.values():
            for ref in output.get("images") or []:
                path = self._path(ref)
                encoded.append(base64.b64encode(path.read_bytes()).decode("ascii"))
                paths.append(path)
        return encoded, paths

    def run_one(self, graph: dict[str, Any], expect_files: int) -> dict[str, float]:
        started = now()
        prompt_id = self.submit(graph)
        submitted = now()
        outputs: dict[str, dict[str, Any]] = {}
        while True:
            message = self._message()
            if message is None:
                continue
            data = message.get("data") or {}
            if data.get("prompt_id") != prompt_id:
                continue
            kind = message.get("type")
            if kind == "executed":
                outputs[str(data.get("node"))] = data.get("output") or {}
            elif kind == "execution_success":
                break
            elif kind in ("execution_error", "execution_interrupted"):
                raise WorkflowFailed(f"{kind}: {json.dumps(data)[:500]}")
        finished = now()
        encoded, paths = self.read_outputs(outputs)
        done = now()
        if len(encoded) != expect_files:
            raise WorkflowFailed(f"direct run produced {len(encoded)} files, expected {expect_files}")
        for path in paths:  # cleanup is not part of what a client waits for
            path.unlink(missing_ok=True)
        return {
            "total_ms": (done - started) * 1000,
            "post_ms": (submitted - started) * 1000,
            "wait_ms": (finished - submitted) * 1000,
            "read_ms": (done - finished) * 1000,
        }

    def run_many(self, graphs: list[dict[str, Any]], expect_files: int) -> float:
        """All prompts queued at once; seconds until the last one's files are read and encoded."""
        started = now()
        pending = {self.submit(graph) for graph in graphs}
        outputs: dict[str, dict[str, dict[str, Any]]] = {pid: {} for pid in pending}
        files: list[Path] = []
        count = 0
        while pending:
            message = self._message()
            if message is None:
                continue
            data = message.get("data") or {}
            prompt_id = data.get("prompt_id")
            if prompt_id not in pending:
                continue
            kind = message.get("type")
            if kind == "executed":
                outputs[prompt_id][str(data.get("node"))] = data.get("output") or {}
            elif kind == "execution_success":
                pending.discard(prompt_id)
                encoded, paths = self.read_outputs(outputs.pop(prompt_id))
                count += len(encoded)
                files += paths
            elif kind in ("execution_error", "execution_interrupted"):
                raise WorkflowFailed(f"{kind}: {json.dumps(data)[:500]}")
        elapsed = now() - started
        if count != expect_files * len(graphs):
            raise WorkflowFailed(f"direct batch produced {count} files, expected {expect_files * len(graphs)}")
        for path in files:
            path.unlink(missing_ok=True)
        return elapsed

    def settle(self, pause_s: float, timeout_s: float = 60.0) -> None:
        """Wait until ComfyUI's queue is empty (status broadcasts on this websocket), then pause,
        so one sample's leftovers (history, logging, gc) do not land in the next one."""
        while select.select([self.ws.sock], [], [], 0)[0]:
            self._message()
        deadline = time.monotonic() + timeout_s
        while self.queue_remaining not in (0, None) and time.monotonic() < deadline:
            ready = select.select([self.ws.sock], [], [], max(0.0, deadline - time.monotonic()))[0]
            if ready:
                self._message()
        time.sleep(pause_s)
        while select.select([self.ws.sock], [], [], 0)[0]:
            self._message()


# --- the service ---------------------------------------------------------------------------------


class HookReceiver:
    """A loopback webhook receiver: records when each job's webhook was in hand."""

    def __init__(self) -> None:
        self.arrivals: dict[str, tuple[float, dict[str, str], bytes]] = {}
        self.cond = threading.Condition()
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("content-length") or 0))
                arrived = now()
                self.send_response(204)
                self.send_header("Content-Length", "0")
                self.end_headers()
                try:
                    job_id = json.loads(body)["data"]["job_id"]
                except (ValueError, KeyError, TypeError):
                    return
                with receiver.cond:
                    receiver.arrivals[job_id] = (arrived, {k.lower(): v for k, v in self.headers.items()}, body)
                    receiver.cond.notify_all()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, name="webhooks", daemon=True).start()

    def wait(self, job_ids: list[str], timeout_s: float) -> list[tuple[float, dict[str, str], bytes]]:
        deadline = time.monotonic() + timeout_s
        with self.cond:
            while not all(job_id in self.arrivals for job_id in job_ids):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = [j for j in job_ids if j not in self.arrivals]
                    raise TimeoutError(f"no webhook for {len(missing)} job(s), e.g. {missing[0]}")
                self.cond.wait(left)
            return [self.arrivals.pop(job_id) for job_id in job_ids]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Service:
    def __init__(self, base_url: str, hooks: HookReceiver | None, secret: str | None, trace: bool = False):
        self.base_url = base_url
        self.http = requests.Session()
        self.trace = trace
        self.marks: dict[str, dict[str, float]] = {}  # trace id -> the client's timestamps
        self.hooks = hooks
        self.secret = secret
        self.verified = 0

    def predict(self, graph: dict[str, Any], expect_files: int, trace_id: str = "") -> tuple[float, dict[str, float]]:
        headers = {"x-bench-trace": trace_id} if self.trace and trace_id else None
        started = now()
        response = self.http.post(
            self.base_url + "/predict", json={"workflow": graph}, timeout=600, stream=True, headers=headers
        )
        headers_at = now()  # the service has built the whole response and started sending it
        content = response.content
        read_at = now()
        body = json.loads(content)
        elapsed = now() - started
        if response.status_code != 200 or body.get("status") != "success":
            raise WorkflowFailed(f"/predict answered {response.status_code}: {json.dumps(body)[:500]}")
        images = body.get("images") or []
        if len(images) != expect_files or not all(image.get("image") for image in images):
            raise WorkflowFailed(f"/predict returned {len(images)} images, expected {expect_files}")
        client = {
            "client_headers_ms": (headers_at - started) * 1000,
            "client_read_ms": (read_at - headers_at) * 1000,
            "client_decode_ms": (started + elapsed - read_at) * 1000,
        }
        if headers:
            self.marks[trace_id] = {"client_start": started, "client_end": started + elapsed}
        return elapsed * 1000, {**(body.get("timings") or {}), **client}

    def submit(self, graph: dict[str, Any]) -> str:
        body = {"workflow": graph, "async": True, "webhook": {"url": self.hooks.url}}
        response = self.http.post(self.base_url + "/predict", json=body, timeout=60)
        if response.status_code != 202:
            raise WorkflowFailed(f"async /predict answered {response.status_code}: {response.text[:500]}")
        return response.json()["job_id"]

    def check_hooks(self, hooks: list[tuple[float, dict[str, str], bytes]], expect_files: int) -> list[dict]:
        """Verify signatures and outcomes (outside the timed part)."""
        from standardwebhooks import Webhook

        verifier = Webhook(self.secret)
        events = []
        for _, headers, body in hooks:
            event = verifier.verify(body, headers)
            if event.get("type") != "job.succeeded":
                raise WorkflowFailed(f"webhook says {event.get('type')}: {json.dumps(event.get('data'))[:500]}")
            files = ((event.get("data") or {}).get("result") or {}).get("files") or []
            if len(files) != expect_files:
                raise WorkflowFailed(f"job stored {len(files)} files, expected {expect_files}")
            self.verified += 1
            events.append(event)
        return events

    def run_async(self, graph: dict[str, Any], expect_files: int) -> tuple[float, float, dict[str, float]]:
        started = now()
        job_id = self.submit(graph)
        accepted = now()
        (hook,) = self.hooks.wait([job_id], 120)
        (event,) = self.check_hooks([hook], expect_files)
        timings = event["data"]["result"].get("timings") or {}
        return (hook[0] - started) * 1000, (accepted - started) * 1000, timings

    def run_many(self, graphs: list[dict[str, Any]], expect_files: int) -> tuple[float, float]:
        started = now()
        job_ids = [self.submit(graph) for graph in graphs]
        accepted = now()
        hooks = self.hooks.wait(job_ids, 600)
        last = max(hook[0] for hook in hooks)
        self.check_hooks(hooks, expect_files)
        return last - started, accepted - started


# --- statistics and the report -------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def p90(xs: list[float]) -> float:
    if len(xs) < 2:
        return xs[0]
    return statistics.quantiles(xs, n=10, method="inclusive")[8]


@dataclass
class Case:
    name: str
    direct: list[float] = field(default_factory=list)
    service: list[float] = field(default_factory=list)
    direct_parts: list[dict[str, float]] = field(default_factory=list)
    service_parts: list[dict[str, float]] = field(default_factory=list)
    extra: list[float] = field(default_factory=list)  # (c): time to the 202; (d): time to accept all
    traces: list[dict[str, float]] = field(default_factory=list)  # --trace: phases of each measured request


def interleave(
    rounds: int,
    warmup: int,
    first: Callable[[], None],
    second: Callable[[], None],
    settle: Callable[[], None],
    label: str,
) -> None:
    """ABBA…: each round runs both methods, the order alternating, ComfyUI settled before each
    sample. The callbacks themselves drop the warmup rounds (see `measured`)."""
    for i in range(warmup + rounds):
        order = (first, second) if i % 2 == 0 else (second, first)
        for run in order:
            run()
            settle()
        if (i + 1) % 10 == 0 or i + 1 == warmup + rounds:
            print(f"  {label}: round {i + 1}/{warmup + rounds}", file=sys.stderr, flush=True)


TRACE_PHASES = [
    # (label, from, to): timestamps of the service (handler/benchtrace.py) and of the client
    ("request in (client → endpoint)", "client_start", "predict"),
    ("body, worker thread, parsing", "predict", "pipeline"),
    ("submit + ComfyUI (≈ direct POST + wait)", "pipeline", "waited"),
    ("collect files + cleanup", "waited", "pipeline_end"),
    ("base64 (response dict)", "pipeline_end", "response_dict"),
    ("back on the event loop + JSON encoding", "response_dict", "response_built"),
    ("send, transfer, client decoding", "response_built", "client_end"),
]


def attach_traces(path: Path, marks: dict[str, dict[str, float]], traced: dict[str, Case]) -> None:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return
    for line in lines:
        rec = json.loads(line)
        case = traced.get(rec.get("id"))
        if case is None or rec["id"] not in marks:
            continue
        rec.update(marks[rec["id"]])
        if all(key in rec for _, a, b in TRACE_PHASES for key in (a, b)):
            case.traces.append({label: (rec[b] - rec[a]) * 1000 for label, a, b in TRACE_PHASES})


def paired(case: Case) -> float:
    return median([s - d for s, d in zip(case.service, case.direct)])


def fmt_ms(x: float) -> str:
    return f"{x:.1f} ms" if x < 1000 else f"{x / 1000:.3f} s"


def parts_median(parts: list[dict[str, float]], key: str) -> float | None:
    values = [p[key] for p in parts if key in p]
    return median(values) if values else None


def machine_info() -> dict[str, str]:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": str(os.cpu_count()),
        "cpu": cpu,
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
    }


def report(cases: dict[str, Case], meta: dict[str, str], args: argparse.Namespace) -> str:
    threads = meta["omp"] or "unset (PyTorch's default: one per core)"
    lines = [
        f"## {meta['date']}: ComfyUI {meta['comfyui']}, OMP_NUM_THREADS {threads}"
        + (", service traced (`--trace`)" if args.trace else ""),
        "",
        f"`python bench/run.py` on {meta['nproc']} × {meta['cpu']} (nproc {meta['nproc']}, {meta['os']}), "
        f"shared with other work; ComfyUI {meta['comfyui']} (PyTorch {meta['pytorch']}, `{args.comfyui_args}`), "
        f"OMP_NUM_THREADS {threads}, OMP_WAIT_POLICY {meta['omp_wait']}; service and client on Python {meta['python']}. Both methods run against the "
        "same ComfyUI, interleaved round by round (the order alternates each round, warmup rounds discarded, "
        "ComfyUI idle before every sample); every prompt is unique.",
        "",
        "| case | rounds | direct median | direct p90 | service median | service p90 | service − direct "
        "| paired Δ | service / direct | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    a, b, c, d = (cases.get(k) for k in "abcd")
    if a and a.direct:
        diff = median(a.service) - median(a.direct)
        met = "met" if diff <= TARGET_A_MS else "**missed**"
        lines.append(
            f"| (a) EmptyImage 512² → SaveImage, sync | {len(a.direct)} | {fmt_ms(median(a.direct))} | "
            f"{fmt_ms(p90(a.direct))} | {fmt_ms(median(a.service))} | {fmt_ms(p90(a.service))} | "
            f"{diff:+.1f} ms | {paired(a):+.1f} ms | {median(a.service) / median(a.direct):.2f}× | "
            f"≤ +{TARGET_A_MS:g} ms: {met} |"
        )
    if b and b.direct:
        ratio = median(b.service) / median(b.direct)
        met = "met" if ratio <= TARGET_B_RATIO else "**missed**"
        lines.append(
            f"| (b) batch4_noise_1024 (4 PNGs, 10.6 MB), sync | {len(b.direct)} | "
            f"{fmt_ms(median(b.direct))} | {fmt_ms(p90(b.direct))} | {fmt_ms(median(b.service))} | "
            f"{fmt_ms(p90(b.service))} | {median(b.service) - median(b.direct):+.1f} ms | {paired(b):+.1f} ms | "
            f"{ratio:.3f}× | ≤ {TARGET_B_RATIO:g}×: {met} |"
        )
    if c and c.direct:
        lines.append(
            f"| (c) async + webhook: submit → webhook received (direct: case (a) sync) | {len(c.direct)} | "
            f"{fmt_ms(median(c.direct))} | {fmt_ms(p90(c.direct))} | {fmt_ms(median(c.service))} | "
            f"{fmt_ms(p90(c.service))} | {median(c.service) - median(c.direct):+.1f} ms | {paired(c):+.1f} ms | "
            f"{median(c.service) / median(c.direct):.2f}× | – |"
        )
    if d and d.direct:
        n = args.jobs
        lines.append(
            f"| (d) {n} jobs at once → {n}th webhook (direct: {n} prompts queued on one websocket, files read) | "
            f"{len(d.direct)} | {fmt_ms(median(d.direct) * 1000)} | {fmt_ms(max(d.direct) * 1000)} (max) | "
            f"{fmt_ms(median(d.service) * 1000)} | {fmt_ms(max(d.service) * 1000)} (max) | "
            f"{(median(d.service) - median(d.direct)) * 1000 / n:+.1f} ms/job | {paired(d) * 1000 / n:+.1f} ms/job | "
            f"{median(d.service) / median(d.direct):.2f}× | – |"
        )
    lines += [
        "",
        "*service − direct*: difference of the medians; *paired Δ*: median of the per-round differences "
        "(robust to slow phases of the shared machine). Peers measured elsewhere for case (a): direct ~8 ms, "
        "runpod worker-comfyui 15–17 ms, comfyui-api 16–19 ms.",
        "",
    ]

    rows = []
    for key, case in (("a", a), ("b", b)):
        if not case or not case.direct:
            continue
        sp = case.service_parts
        to_headers = median([p["client_headers_ms"] - p["total_ms"] for p in sp])
        rows.append(
            f"| ({key}) | {fmt_ms(parts_median(case.direct_parts, 'post_ms'))} | "
            f"{fmt_ms(parts_median(case.direct_parts, 'wait_ms'))} | "
            f"{fmt_ms(parts_median(case.direct_parts, 'read_ms'))} | "
            f"{fmt_ms(parts_median(sp, 'submit_ms'))} | {fmt_ms(parts_median(sp, 'comfyui_ms'))} | "
            f"{fmt_ms(parts_median(sp, 'outputs_ms'))} | {fmt_ms(parts_median(sp, 'total_ms'))} | "
            f"{fmt_ms(to_headers)} | {fmt_ms(parts_median(sp, 'client_read_ms'))} | "
            f"{fmt_ms(parts_median(sp, 'client_decode_ms'))} |"
        )
    if rows:
        lines += [
            "Where the time goes (medians of each part). Direct: `POST /prompt`, then until "
            "`execution_success`, then reading and base64-encoding the files. Service: its `timings` "
            "(`submit_ms`, `comfyui_ms`, `outputs_ms` = reading the files, `total_ms`), then, seen by the "
            "client, the time from `total_ms` to the response's headers (cleanup of the request's files, "
            "base64, JSON encoding, the client's request and the server's framework on both ends), "
            "reading the body, and decoding the JSON.",
            "",
            "| case | direct POST | direct wait | direct read+b64 | submit_ms | comfyui_ms | outputs_ms | "
            "total_ms | → headers | body read | JSON decode |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
        ]
    traced_cases = [(key, case) for key, case in (("a", a), ("b", b)) if case and case.traces]
    if traced_cases:
        lines += [
            "Traced sync requests (`--trace`; medians, the service's own timestamps joined with the client's):",
            "",
            "| phase | " + " | ".join(f"({key})" for key, _ in traced_cases) + " |",
            "|---|" + "---:|" * len(traced_cases),
        ]
        for label, _, _ in TRACE_PHASES:
            lines.append(
                f"| {label} | "
                + " | ".join(fmt_ms(median([t[label] for t in case.traces])) for _, case in traced_cases)
                + " |"
            )
        lines += [
            "| direct: read + base64 | "
            + " | ".join(fmt_ms(parts_median(case.direct_parts, "read_ms")) for _, case in traced_cases)
            + " |",
            "",
        ]
    if meta.get("healthz"):
        lines += [f"HTTP floor: a `GET /healthz` round trip to the service takes {meta['healthz']} (median).", ""]
    if c and c.service:
        lines += [
            f"(c): `POST /predict` answered 202 after {fmt_ms(median(c.extra))} (median); the job's pipeline "
            f"`total_ms` was {fmt_ms(parts_median(c.service_parts, 'total_ms'))}, of which `comfyui_ms` "
            f"{fmt_ms(parts_median(c.service_parts, 'comfyui_ms'))}; the rest is queueing, the job's state "
            "changes in the store, storing the outputs and the signed webhook's delivery.",
            "",
        ]
    if d and d.service:
        lines += [
            f"(d): the {args.jobs} submissions were all accepted after {fmt_ms(median(d.extra) * 1000)} (median); "
            f"{args.jobs / median(d.service):.0f} jobs/s through the service against "
            f"{args.jobs / median(d.direct):.0f} prompts/s direct. CPU per job (medians over the rounds, "
            "from /proc; the client is this benchmark's process, with the webhook receiver for the service): "
            + "; ".join(
                f"{who} ComfyUI {fmt_ms(parts_median(parts, 'comfyui_cpu_ms'))}, "
                f"service {fmt_ms(parts_median(parts, 'service_cpu_ms'))}, "
                f"client {fmt_ms(parts_median(parts, 'client_cpu_ms'))}"
                for who, parts in (("direct:", d.direct_parts), ("through the service:", d.service_parts))
            )
            + ".",
            "",
        ]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--comfyui-path",
        default=os.environ.get("COMFYUI_PATH"),
        help="ComfyUI's source folder (default: $COMFYUI_PATH)",
    )
    parser.add_argument(
        "--comfyui-python",
        default=os.environ.get("COMFYUI_PYTHON") or sys.executable,
        help="ComfyUI's interpreter (default: $COMFYUI_PYTHON, else this one)",
    )
    parser.add_argument(
        "--comfyui-args",
        default=os.environ.get("COMFYUI_BENCH_ARGS", "--cpu --disable-api-nodes"),
        help="extra ComfyUI arguments (default: %(default)s)",
    )
    parser.add_argument(
        "--service-command",
        default="",
        help="run the service as '<this> -m handler' (e.g. a profiler wrapper); default: this interpreter",
    )
    parser.add_argument("--service-log-level", default="INFO", help="the service's LOG_LEVEL (default: %(default)s)")
    parser.add_argument("--cases", default="abcd", help="which cases to run (default: %(default)s)")
    parser.add_argument("--rounds-a", type=int, default=150)
    parser.add_argument("--rounds-b", type=int, default=16)
    parser.add_argument("--rounds-c", type=int, default=40)
    parser.add_argument("--rounds-d", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=5, help="warmup rounds of (a) and (c) (default: %(default)s)")
    parser.add_argument("--warmup-b", type=int, default=2, help="warmup rounds of (b) (default: %(default)s)")
    parser.add_argument("--jobs", type=int, default=50, help="jobs per round of (d) (default: %(default)s)")
    parser.add_argument(
        "--settle",
        type=float,
        default=0.1,
        help="pause after ComfyUI's queue is empty, between samples (s, default: %(default)s)",
    )
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument(
        "--results",
        default=str(ROOT / "bench" / "RESULTS.md"),
        help="where to write the table ('-' for nowhere; default: bench/RESULTS.md)",
    )
    parser.add_argument(
        "--trace",
        action="store_true",
        help="have the service trace (TRACE_OUT, handler/benchtrace.py) and report where the sync requests' time goes",
    )
    parser.add_argument(
        "--append", action="store_true", help="add this run to the results file instead of replacing it"
    )
    parser.add_argument("--raw", default="", help="also write every sample as JSON to this file")
    parser.add_argument("--workdir", default="", help="folders and logs (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if not args.comfyui_path:
        parser.error("give ComfyUI's source folder: --comfyui-path or COMFYUI_PATH")
    if not (Path(args.comfyui_path) / "main.py").is_file():
        parser.error(f"no main.py in {args.comfyui_path}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="comfyrun-bench-")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    processes: list[Process] = []
    hooks: HookReceiver | None = None
    direct: Direct | None = None

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    try:
        print(f"starting ComfyUI (logs in {work})", file=sys.stderr, flush=True)
        comfy, comfy_url, dirs = start_comfyui(args, work)
        processes.append(comfy)
        stats = requests.get(comfy_url + "/system_stats", timeout=10).json().get("system") or {}
        secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
        print("starting the service", file=sys.stderr, flush=True)
        service_proc, service_url = start_service(args, work, comfy_url, dirs, secret)
        processes.append(service_proc)

        hooks = HookReceiver()
        direct = Direct(comfy_url, dirs)
        service = Service(service_url, hooks, secret, trace=args.trace)
        traced: dict[str, Case] = {}
        colour = Colours()
        settle = lambda: direct.settle(args.settle)  # noqa: E731
        cases: dict[str, Case] = {}

        def measured(warmup: int) -> Callable[[], bool]:
            """Whether this sample counts: two calls per round (one per method), warmup first."""
            calls = {"n": 0}

            def keep() -> bool:
                calls["n"] += 1
                return (calls["n"] - 1) // 2 >= warmup

            return keep

        if "a" in args.cases:
            case = cases.setdefault("a", Case("a"))
            keep = measured(args.warmup)

            def direct_a() -> None:
                parts = direct.run_one(trivial_graph(colour()), 1)
                if keep():
                    case.direct.append(parts["total_ms"])
                    case.direct_parts.append(parts)

            def service_a() -> None:
                trace_id = uuid.uuid4().hex
                elapsed, timings = service.predict(trivial_graph(colour()), 1, trace_id)
                if keep():
                    case.service.append(elapsed)
                    case.service_parts.append(timings)
                    traced[trace_id] = case

            print("(a) EmptyImage 512² → SaveImage, sync", file=sys.stderr, flush=True)
            interleave(args.rounds_a, args.warmup, direct_a, service_a, settle, "(a)")

        healthz = ""
        if "a" in args.cases:
            floor = []
            for _ in range(200):
                started = now()
                service.http.get(service_url + "/healthz", timeout=10).raise_for_status()
                floor.append((now() - started) * 1000)
            healthz = fmt_ms(median(floor))

        if "b" in args.cases:
            case_b = cases.setdefault("b", Case("b"))
            template = json.loads(BATCH4.read_text())
            keep_b = measured(args.warmup_b)

            def direct_b() -> None:
                parts = direct.run_one(batch4_graph(template, colour()), 4)
                if keep_b():
                    case_b.direct.append(parts["total_ms"])
                    case_b.direct_parts.append(parts)

            def service_b() -> None:
                trace_id = uuid.uuid4().hex
                elapsed, timings = service.predict(batch4_graph(template, colour()), 4, trace_id)
                if keep_b():
                    case_b.service.append(elapsed)
                    case_b.service_parts.append(timings)
                    traced[trace_id] = case_b

            print("(b) batch4_noise_1024, sync", file=sys.stderr, flush=True)
            interleave(args.rounds_b, args.warmup_b, direct_b, service_b, settle, "(b)")

        if "c" in args.cases:
            case_c = cases.setdefault("c", Case("c"))
            keep_c = measured(args.warmup)

            def direct_c() -> None:
                parts = direct.run_one(trivial_graph(colour()), 1)
                if keep_c():
                    case_c.direct.append(parts["total_ms"])
                    case_c.direct_parts.append(parts)

            def service_c() -> None:
                latency, accepted, timings = service.run_async(trivial_graph(colour()), 1)
                if keep_c():
                    case_c.service.append(latency)
                    case_c.extra.append(accepted)
                    case_c.service_parts.append(timings)

            print("(c) async + webhook", file=sys.stderr, flush=True)
            interleave(args.rounds_c, args.warmup, direct_c, service_c, settle, "(c)")

        if "d" in args.cases:
            case_d = cases.setdefault("d", Case("d"))
            keep_d = measured(1)

            def cpu_now() -> dict[str, float]:
                return {"comfyui": comfy.cpu_s(), "service": service_proc.cpu_s(), "client": cpu_seconds(os.getpid())}

            def cpu_used(before: dict[str, float]) -> dict[str, float]:
                after = cpu_now()
                return {f"{k}_cpu_ms": (after[k] - v) * 1000 / args.jobs for k, v in before.items()}

            def direct_d() -> None:
                before = cpu_now()
                elapsed = direct.run_many([trivial_graph(colour()) for _ in range(args.jobs)], 1)
                if keep_d():
                    case_d.direct.append(elapsed)
                    case_d.direct_parts.append(cpu_used(before))

            def service_d() -> None:
                before = cpu_now()
                elapsed, accepted = service.run_many([trivial_graph(colour()) for _ in range(args.jobs)], 1)
                if keep_d():
                    case_d.service.append(elapsed)
                    case_d.extra.append(accepted)
                    case_d.service_parts.append(cpu_used(before))

            print(f"(d) {args.jobs} queued jobs", file=sys.stderr, flush=True)
            interleave(args.rounds_d, 1, direct_d, service_d, lambda: direct.settle(max(args.settle, 0.5)), "(d)")

        if args.trace:
            attach_traces(work / "trace.jsonl", service.marks, traced)
        meta = {
            "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "comfyui": str(stats.get("comfyui_version") or "?"),
            "pytorch": str(stats.get("pytorch_version") or "?"),
            "omp": os.environ.get("OMP_NUM_THREADS", ""),
            "omp_wait": os.environ.get("OMP_WAIT_POLICY", COMFY_ENV_DEFAULTS["OMP_WAIT_POLICY"]),
            "healthz": healthz,
            **machine_info(),
        }
        text = report(cases, meta, args)
        print()
        print(text)
        if args.results and args.results != "-":
            results = Path(args.results)
            if args.append and results.exists():
                results.write_text(results.read_text().rstrip("\n") + "\n\n" + text + "\n")
            else:
                results.write_text(HEADER + text + "\n")
            print(f"written to {args.results}", file=sys.stderr)
        if args.raw:
            raw = {
                k: {
                    "direct": v.direct,
                    "service": v.service,
                    "direct_parts": v.direct_parts,
                    "service_parts": v.service_parts,
                    "extra": v.extra,
                }
                for k, v in cases.items()
            }
            Path(args.raw).write_text(json.dumps({"meta": meta, "cases": raw}, indent=1))
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        if direct is not None:
            direct.close()
        if hooks is not None:
            hooks.close()
        for proc in reversed(processes):
            proc.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
