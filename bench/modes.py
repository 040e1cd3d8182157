"""Benchmark of the sync answer forms (handler/routes/delivery.py, handler/routes/sse.py) against driving
ComfyUI directly, with the same processes and method as bench/run.py (one real ComfyUI, the
service attached to it, methods interleaved round by round, ComfyUI idle before every sample).

    COMFYUI_PATH=… COMFYUI_PYTHON=… python bench/modes.py [--rounds 8] [--rounds-sse 40] [--results FILE]

Cases:

* (e) `batch4_noise_1024.json` (4 noisy 1024² PNGs) answered inline (base64 JSON), and with
  `output.delivery: "url"` (files stored in the local store, links answered);
* (f) one noisy 1024² PNG answered raw (`Accept: image/png`: the body is the file);
* (g) EmptyImage 512² with `Accept: text/event-stream` against the same as a plain JSON call:
  the cost of streaming events on time-to-result;
* (h) `test_resources/comfy/workflows/long_running.json` with events: time to the first event
  (`queued`), to `started`, and against the direct client's time to ComfyUI's `execution_start`.

Direct is bench/run.py's client: POST /prompt, wait on its own websocket, read the files and
base64-encode them. Numbers are appended to bench/RESULTS.md (or --results).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import shutil
import signal
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402  (bench/run.py: processes, the direct client)

ROOT = base.ROOT
BATCH4 = json.loads((ROOT / "test_resources" / "workflows" / "batch4_noise_1024.json").read_text())
LONG = json.loads((ROOT / "test_resources" / "comfy" / "workflows" / "long_running.json").read_text())


def single_noise(colour: int) -> dict[str, Any]:
    graph = base.batch4_graph(BATCH4, colour)
    graph["1"]["inputs"]["batch_size"] = 1
    return graph


def long_graph(colour: int) -> dict[str, Any]:
    graph = json.loads(json.dumps(LONG))
    graph["1"]["inputs"]["color"] = colour
    return graph


class Client:
    def __init__(self, url: str):
        self.url = url
        self.http = requests.Session()

    def json(self, graph: dict[str, Any], files: int, delivery: str = "inline") -> tuple[float, float]:
        started = base.now()
        body = {"workflow": graph, "output": {"delivery": delivery}}
        response = self.http.post(self.url + "/predict", json=body, timeout=600)
        answer = json.loads(response.content)
        elapsed = base.now() - started
        images = answer.get("images") or []
        key = "image" if delivery == "inline" else "url"
        if response.status_code != 200 or len(images) != files or not all(i.get(key) for i in images):
            raise base.WorkflowFailed(f"/predict ({delivery}) answered {response.status_code}: {response.text[:300]}")
        return elapsed * 1000, answer["timings"]["comfyui_ms"]

    def raw(self, graph: dict[str, Any]) -> tuple[float, float]:
        started = base.now()
        response = self.http.post(
            self.url + "/predict", json={"workflow": graph}, headers={"Accept": "image/png"}, timeout=600
        )
        data = response.content
        elapsed = base.now() - started
        if response.status_code != 200 or not data.startswith(b"\x89PNG"):
            raise base.WorkflowFailed(f"raw /predict answered {response.status_code}: {response.text[:300]}")
        timing = dict(part.strip().split(";dur=") for part in response.headers["Server-Timing"].split(","))
        return elapsed * 1000, float(timing["comfyui"])

    def events(self, graph: dict[str, Any]) -> dict[str, float]:
        """Milliseconds from the request to each event's first arrival, and to the decoded result."""
        started = base.now()
        seen: dict[str, float] = {}
        response = self.http.post(
            self.url + "/predict",
            json={"workflow": graph},
            headers={"Accept": "text/event-stream"},
            timeout=600,
            stream=True,
        )
        kind = None
        for line in response.iter_lines(chunk_size=None):
            if line.startswith(b"event: "):
                kind = line[7:].decode()
                seen.setdefault(kind, (base.now() - started) * 1000)
            elif line.startswith(b"data: ") and kind == "result":
                answer = json.loads(line[6:])
                if answer.get("status") != "success":
                    raise base.WorkflowFailed(f"events ended with {line[:300]!r}")
                seen["result_decoded"] = (base.now() - started) * 1000
                seen["comfyui_ms"] = answer["timings"]["comfyui_ms"]
                break
            elif kind == "error":
                raise base.WorkflowFailed(f"events ended with {line[:300]!r}")
        response.close()
        return seen


def direct_until_start(direct: base.Direct, graph: dict[str, Any], files: int) -> dict[str, float]:
    """The direct client's time to ComfyUI's execution_start, then to the files read."""
    started = base.now()
    prompt_id = direct.submit(graph)
    start_ms = None
    outputs: dict[str, dict[str, Any]] = {}
    while True:
        message = direct._message()
        if message is None:
            continue
        data = message.get("data") or {}
        if data.get("prompt_id") != prompt_id:
            continue
        if message.get("type") == "execution_start" and start_ms is None:
            start_ms = (base.now() - started) * 1000
        elif message.get("type") == "executed":
            outputs[str(data.get("node"))] = data.get("output") or {}
        elif message.get("type") == "execution_success":
            break
    encoded, paths = direct.read_outputs(outputs)
    for path in paths:
        path.unlink(missing_ok=True)
    if len(encoded) != files:
        raise base.WorkflowFailed(f"direct run produced {len(encoded)} files, expected {files}")
    return {"started": start_ms or 0.0, "total": (base.now() - started) * 1000}


def interleave(
    rounds: int, warmup: int, runs: list[Callable[[], None]], settle: Callable[[], None], label: str
) -> None:
    for i in range(warmup + rounds):
        order = runs if i % 2 == 0 else list(reversed(runs))
        for one in order:
            one()
            settle()
        print(f"  {label}: round {i + 1}/{warmup + rounds}", file=sys.stderr, flush=True)


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui-path", default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--comfyui-python", default=os.environ.get("COMFYUI_PYTHON") or sys.executable)
    parser.add_argument("--comfyui-args", default="--cpu --disable-api-nodes")
    parser.add_argument("--rounds", type=int, default=8, help="rounds of (e) and (f)")
    parser.add_argument("--rounds-sse", type=int, default=40, help="rounds of (g)")
    parser.add_argument("--rounds-long", type=int, default=1, help="rounds of (h)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--cases", default="efgh", help="which cases to run (default: %(default)s)")
    parser.add_argument("--settle", type=float, default=0.1)
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="appended to; '-' for none")
    args = parser.parse_args(argv)
    if not args.comfyui_path:
        parser.error("give ComfyUI's source folder: --comfyui-path or COMFYUI_PATH")
    # bench/run.py's process helpers read these.
    args.startup_timeout, args.service_command, args.service_log_level, args.trace = 300.0, "", "WARNING", False
    work = Path(tempfile.mkdtemp(prefix="comfyrun-bench-modes-"))

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # the `finally` below stops ComfyUI and the service

    signal.signal(signal.SIGTERM, on_signal)
    processes: list[base.Process] = []
    try:
        comfy, comfy_url, dirs = base.start_comfyui(args, work)
        processes.append(comfy)
        service_proc, service_url = base.start_service(
            args, work, comfy_url, dirs, "whsec_" + base64.b64encode(os.urandom(32)).decode()
        )
        processes.append(service_proc)
        direct = base.Direct(comfy_url, dirs)
        client = Client(service_url)
        colour = base.Colours()
        settle = lambda: direct.settle(args.settle)  # noqa: E731
        samples: dict[str, list[float]] = {}

        def keep(name: str, pair: tuple[float, float], counter: dict[str, int] = {}) -> None:  # noqa: B006
            """(the client's total, ComfyUI's part of it): the rest is the method's own cost."""
            counter[name] = counter.get(name, 0) + 1
            if counter[name] > args.warmup:
                samples.setdefault(name, []).append(pair[0])
                samples.setdefault(name + "_out", []).append(pair[0] - pair[1])

        def direct_pair(graph: dict[str, Any], files: int) -> tuple[float, float]:
            parts = direct.run_one(graph, files)
            return parts["total_ms"], parts["wait_ms"]

        def chosen(case: str, rounds: int) -> tuple[int, int]:
            return (rounds, args.warmup) if case in args.cases else (0, 0)

        def events_pair(graph: dict[str, Any]) -> tuple[float, float]:
            seen = client.events(graph)
            return seen["result_decoded"], seen["comfyui_ms"]

        print("(e) batch4 noisy 1024²: direct, inline, url", file=sys.stderr, flush=True)
        interleave(
            *chosen("e", args.rounds),
            [
                lambda: keep("e_direct", direct_pair(base.batch4_graph(BATCH4, colour()), 4)),
                lambda: keep("e_inline", client.json(base.batch4_graph(BATCH4, colour()), 4)),
                lambda: keep("e_url", client.json(base.batch4_graph(BATCH4, colour()), 4, "url")),
            ],
            settle,
            "(e)",
        )
        print("(f) one noisy 1024²: direct, raw", file=sys.stderr, flush=True)
        interleave(
            *chosen("f", args.rounds),
            [
                lambda: keep("f_direct", direct_pair(single_noise(colour()), 1)),
                lambda: keep("f_raw", client.raw(single_noise(colour()))),
            ],
            settle,
            "(f)",
        )
        print("(g) 512²: plain JSON against events", file=sys.stderr, flush=True)
        interleave(
            *chosen("g", args.rounds_sse),
            [
                lambda: keep("g_direct", direct_pair(base.trivial_graph(colour()), 1)),
                lambda: keep("g_plain", client.json(base.trivial_graph(colour()), 1)),
                lambda: keep("g_events", events_pair(base.trivial_graph(colour()))),
            ],
            settle,
            "(g)",
        )
        print("(h) long_running.json with events", file=sys.stderr, flush=True)
        long_events: list[dict[str, float]] = []
        long_direct: list[dict[str, float]] = []
        interleave(
            args.rounds_long if "h" in args.cases else 0,
            0,
            [
                lambda: long_events.append(client.events(long_graph(colour()))),
                lambda: long_direct.append(direct_until_start(direct, long_graph(colour()), 4)),
            ],
            settle,
            "(h)",
        )
        direct.close()
        text = report(samples, long_events, long_direct, args)
        print(text)
        if args.results != "-":
            with open(args.results, "a") as out:
                out.write("\n" + text)
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        shutil.rmtree(work, ignore_errors=True)


def report(
    samples: dict[str, list[float]],
    long_events: list[dict[str, float]],
    long_direct: list[dict[str, float]],
    args: argparse.Namespace,
) -> str:
    def row(case: str, direct: str, service: str, target: str) -> str | None:
        if not samples.get(service):
            return None
        d, s = med(samples[direct]), med(samples[service])
        # Samples of one round sit at the same index: the paired difference holds up on a shared machine.
        pairs = [b - a for a, b in zip(samples[direct], samples[service])]
        return (
            f"| {case} | {len(samples[service])} | {base.fmt_ms(d)} | {base.fmt_ms(s)} | {s - d:+.1f} ms | "
            f"{med(pairs):+.1f} ms | {s / d:.3f}× | {(d + med(pairs)) / d:.3f}× | {target} |"
        )

    def own(case: str, direct: str, service: str, target: str) -> str | None:
        if not samples.get(service):
            return None
        # At equal ComfyUI time: ComfyUI's own variance (shared cores) dominates the totals above.
        wait = med([t - o for t, o in zip(samples[direct], samples[direct + "_out"])])
        d_out, s_out = med(samples[direct + "_out"]), med(samples[service + "_out"])
        return (
            f"| {case} | {base.fmt_ms(wait)} | {base.fmt_ms(d_out)} | {base.fmt_ms(s_out)} | {s_out - d_out:+.1f} ms | "
            f"{(wait + s_out) / (wait + d_out):.3f}× | {target} |"
        )

    g_events, g_plain = samples.get("g_events", []), samples.get("g_plain", [])
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"## {stamp}: answer forms (`python bench/modes.py`)",
        "",
        f"`python bench/modes.py --rounds {args.rounds} --rounds-sse {args.rounds_sse}` on {os.cpu_count()} cores, "
        "shared with other work; same method as above (interleaved, ComfyUI idle before each sample, unique prompts). "
        "Service times are the client's, until the answer is decoded (url: the links, not the downloads).",
        "",
        "| case | rounds | direct median | service median | service − direct | paired Δ | service / direct "
        "| paired ratio | target |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        row("(e) batch4 noisy 1024², inline (base64 JSON)", "e_direct", "e_inline", "≤ 1.05×"),
        row("(e) batch4 noisy 1024², `delivery: url`", "e_direct", "e_url", "≤ 1.02×"),
        row("(f) one noisy 1024², raw (`Accept: image/png`)", "f_direct", "f_raw", "≤ 1.02×"),
        row("(g) 512², plain JSON", "g_direct", "g_plain", "–"),
        row("(g) 512², events (`text/event-stream`) to the decoded `result`", "g_direct", "g_events", "–"),
        "",
        "The same at equal ComfyUI time: each method's own cost (the client's total minus ComfyUI's part: the "
        "direct client's wait for `execution_success`, the service's `comfyui_ms`), added to the direct median wait.",
        "",
        "| case | ComfyUI (direct median wait) | direct's own | service's own | difference | ratio | target |",
        "|---|---:|---:|---:|---:|---:|---|",
        own("(e) inline", "e_direct", "e_inline", "≤ 1.05×"),
        own("(e) `delivery: url`", "e_direct", "e_url", "≤ 1.02×"),
        own("(f) raw", "f_direct", "f_raw", "≤ 1.02×"),
        own("(g) 512², plain JSON", "g_direct", "g_plain", "–"),
        own("(g) 512², events", "g_direct", "g_events", "–"),
        "",
    ]
    if g_events:
        lines += [
            f"(g): events add {med(g_events) - med(g_plain):+.2f} ms to time-to-result against a plain call "
            f"(medians; paired: {med([e - p for p, e in zip(g_plain, g_events)]):+.2f} ms; {len(g_events)} rounds; "
            "target ≤ 1 ms). *paired Δ*: median of the per-round differences; *paired ratio*: (direct + paired Δ) / "
            "direct.",
        ]
    lines = [line for line in lines if line is not None]
    if long_events:
        lines.append("")
        lines.append(
            f"(h) long_running.json (4 blurs of 4×2048², {len(long_events)} rounds): first event (`queued`) after "
            f"{base.fmt_ms(med([e['queued'] for e in long_events]))}, `started` after "
            f"{base.fmt_ms(med([e['started'] for e in long_events]))} (direct client: ComfyUI's `execution_start` after "
            f"{base.fmt_ms(med([d['started'] for d in long_direct]))}); result after "
            f"{base.fmt_ms(med([e['result_decoded'] for e in long_events]))} (direct "
            f"{base.fmt_ms(med([d['total'] for d in long_direct]))}). ImageBlur reports no progress ticks in "
            "ComfyUI, so these are the first events a caller sees."
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
