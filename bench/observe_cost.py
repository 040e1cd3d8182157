"""Benchmark: what metrics and structured logging add to a sync `/predict` (issue #13: at most
0.3 ms on the 512² median).

One real ComfyUI and **two** services attached to it (bench/run.py's processes), identical but for:

* *on*: `LOG_FORMAT=json`, `ACCESS_LOG=true`, `METRICS=true`: what Cloud Run runs by default;
* *off*: `LOG_FORMAT=text`, `ACCESS_LOG=false`, `METRICS=false`: nothing counted, no access line.

Both run at `LOG_LEVEL=INFO` (Cloud Run's default), with request ids and log context (not metrics).
The workflow is case (a) of bench/run.py: EmptyImage 512² → SaveImage, a unique colour per
request. Each round runs the direct client (bench/run.py's, the reference), then the two services,
their order alternating round by round (ABBA); ComfyUI is idle before every sample and warmup
rounds are discarded.

Reported: per method the median and p90 of the client's total; on − off as the difference of the
medians and paired (the median of the per-round differences, with a bootstrap 95% interval); the
same for each service's own time at equal ComfyUI time (the client's total minus the answer's
`timings.comfyui_ms`), which holds up better on shared cores; and per service the process CPU
time per request (utime + stime from /proc/<pid>/stat over the measured rounds, read every
`--cpu-block` rounds for an interval), which does not depend on other load.

    COMFYUI_PATH=… COMFYUI_PYTHON=… python bench/observe_cost.py [--rounds 300] [--results FILE]

`--aa` runs both services *off* (an A/A run): what the comparison shows when there is nothing to
find, i.e. its noise floor on this machine.

Appends its section to bench/RESULTS.md (`--results -` for none).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import json
import os
import random
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as base  # noqa: E402  (bench/run.py: processes, the direct client)

ROOT = base.ROOT
TARGET_MS = 0.3
# The two services differ only in these; both get run.py's environment (LOG_LEVEL from args).
SETTINGS = {
    "on": {"LOG_FORMAT": "json", "ACCESS_LOG": "true", "METRICS": "true"},
    "off": {"LOG_FORMAT": "text", "ACCESS_LOG": "false", "METRICS": "false"},
}
TICK_S = 1 / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads (ended ones too), in seconds."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) ": fields 3, 4, …
    return (int(fields[11]) + int(fields[12])) * TICK_S  # fields 14 and 15: utime, stime


def med(xs: list[float]) -> float:
    return statistics.median(xs)


def bootstrap(items: list[Any], statistic: Any, resamples: int = 2000) -> tuple[float, float]:
    """A bootstrap 95% interval of `statistic(items)` (fixed seed: the same data, the same interval)."""
    rng = random.Random(13)
    values = sorted(statistic(rng.choices(items, k=len(items))) for _ in range(resamples))
    return values[int(0.025 * resamples)], values[int(0.975 * resamples) - 1]


def cpu_per_request(blocks: list[tuple[int, float, float]]) -> float:
    """ms of on − off CPU per request over (requests, on s, off s) blocks."""
    return sum(on - off for _, on, off in blocks) / sum(n for n, _, _ in blocks) * 1000


def check_settings(settings: dict[str, dict[str, str]], urls: dict[str, str], logs: dict[str, Path]) -> None:
    """Each service ran as configured: /metrics answers or is 404; JSON access lines or none."""
    for name, url in urls.items():
        on = settings[name]["METRICS"] == "true"
        status = requests.get(url + "/metrics", timeout=10).status_code
        if status != (200 if on else 404):
            raise RuntimeError(f"service {name!r}: GET /metrics answered {status}")
        if ('"httpRequest"' in logs[name].read_text(errors="replace")) != on:
            raise RuntimeError(f"service {name!r}: JSON access lines {'missing' if on else 'written'}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--comfyui-path", default=os.environ.get("COMFYUI_PATH"))
    parser.add_argument("--comfyui-python", default=os.environ.get("COMFYUI_PYTHON") or sys.executable)
    parser.add_argument("--comfyui-args", default=os.environ.get("COMFYUI_BENCH_ARGS", "--cpu --disable-api-nodes"))
    parser.add_argument("--rounds", type=int, default=300, help="measured rounds (default: %(default)s)")
    parser.add_argument("--warmup", type=int, default=10, help="rounds discarded first (default: %(default)s)")
    parser.add_argument("--cpu-block", type=int, default=30, help="rounds per CPU reading (default: %(default)s)")
    parser.add_argument("--aa", action="store_true", help="both services off: the comparison's noise floor")
    parser.add_argument("--settle", type=float, default=0.1, help="pause once ComfyUI is idle (s)")
    parser.add_argument("--service-log-level", default="INFO", help="both services' LOG_LEVEL")
    parser.add_argument("--startup-timeout", type=float, default=300.0)
    parser.add_argument("--results", default=str(ROOT / "bench" / "RESULTS.md"), help="appended to; '-' for none")
    parser.add_argument("--raw", default="", help="also write every sample as JSON to this file")
    parser.add_argument("--workdir", default="", help="folders and logs (default: a temporary folder, removed)")
    args = parser.parse_args(argv)
    if not args.comfyui_path:
        parser.error("give ComfyUI's source folder: --comfyui-path or COMFYUI_PATH")
    args.service_command, args.trace = "", False  # what bench/run.py's start_service also reads
    settings = {"on": SETTINGS["off"] if args.aa else SETTINGS["on"], "off": SETTINGS["off"]}
    work = Path(args.workdir or tempfile.mkdtemp(prefix="comfyrun-bench-observe-")).resolve()

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt  # the `finally` below stops ComfyUI and the services

    signal.signal(signal.SIGTERM, on_signal)
    processes: list[base.Process] = []
    try:
        comfy, comfy_url, dirs = base.start_comfyui(args, work)
        processes.append(comfy)
        stats = requests.get(comfy_url + "/system_stats", timeout=10).json().get("system") or {}
        services: dict[str, base.Service] = {}
        pids: dict[str, int] = {}
        for name, env in settings.items():
            own = work / name  # its own STATE_DIR and log: two services may not share a state folder
            own.mkdir(parents=True, exist_ok=True)
            secret = "whsec_" + base64.b64encode(os.urandom(32)).decode()
            proc, url = base.start_service(args, own, comfy_url, dirs, secret, extra_env=env)
            processes.append(proc)
            services[name], pids[name] = base.Service(url, None, None), proc.proc.pid
        direct = base.Direct(comfy_url, dirs)
        colour = base.Colours()
        # Per method, per measured round: (the client's total, ComfyUI's part of it) in ms.
        samples: dict[str, list[tuple[float, float]]] = {"direct": [], "on": [], "off": []}
        # Per block of measured rounds: (requests per service, on's CPU s, off's CPU s).
        blocks: list[tuple[int, float, float]] = []
        mark: tuple[int, float, float] = (0, 0.0, 0.0)

        def read_cpu() -> None:
            nonlocal mark
            now = (len(samples["on"]), cpu_seconds(pids["on"]), cpu_seconds(pids["off"]))
            if now[0] > mark[0]:
                blocks.append((now[0] - mark[0], now[1] - mark[1], now[2] - mark[2]))
            mark = now

        def sample(method: str, keep: bool) -> None:
            graph = base.trivial_graph(colour())
            if method == "direct":
                parts = direct.run_one(graph, 1)
                pair = (parts["total_ms"], parts["wait_ms"])
            else:
                elapsed, timings = services[method].predict(graph, 1)
                pair = (elapsed, timings["comfyui_ms"])
            if keep:
                samples[method].append(pair)
            direct.settle(args.settle)

        print(f"512²: direct, then on/off alternating; {args.warmup} + {args.rounds} rounds", file=sys.stderr)
        direct.settle(args.settle)
        for i in range(args.warmup + args.rounds):
            keep = i >= args.warmup
            if keep and (i - args.warmup) % args.cpu_block == 0:
                read_cpu()  # at the start of each block: the last block ends after the loop
            for method in ("direct", *(("on", "off") if i % 2 == 0 else ("off", "on"))):
                sample(method, keep)
            if (i + 1) % 20 == 0 or i + 1 == args.warmup + args.rounds:
                print(f"  round {i + 1}/{args.warmup + args.rounds}", file=sys.stderr, flush=True)
        read_cpu()
        direct.close()
        logs = {name: work / name / "service.log" for name in settings}
        check_settings(settings, {name: service.base_url for name, service in services.items()}, logs)
        meta = {
            **base.machine_info(),
            "comfyui": str(stats.get("comfyui_version") or "?"),
            "pytorch": str(stats.get("pytorch_version") or "?"),
            "omp": os.environ.get("OMP_NUM_THREADS", ""),
        }
        if args.raw:
            Path(args.raw).write_text(json.dumps({"samples": samples, "cpu_blocks": blocks, "meta": meta}, indent=1))
        text = report(samples, blocks, meta, args)
        print(text)
        if args.results != "-":
            with open(args.results, "a") as out:
                out.write("\n" + text)
        return 0
    finally:
        for process in reversed(processes):
            process.stop()
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)


def verdict(value: float, ci: tuple[float, float] | None = None) -> str:
    if ci is not None and ci[1] <= TARGET_MS:
        return f"≤ {TARGET_MS} ms: **met** (the interval too)"
    if value <= TARGET_MS:
        return f"≤ {TARGET_MS} ms: met" + (" (not the whole interval)" if ci is not None else "")
    return f"≤ {TARGET_MS} ms: **missed**"


def report(
    samples: dict[str, list[tuple[float, float]]],
    blocks: list[tuple[int, float, float]],
    meta: dict[str, str],
    args: argparse.Namespace,
) -> str:
    total = {name: [t for t, _ in pairs] for name, pairs in samples.items()}
    own = {name: [t - c for t, c in pairs] for name, pairs in samples.items()}
    n = sum(count for count, _, _ in blocks)
    cpu_ms = {
        "on": sum(on for _, on, _ in blocks) / n * 1000,
        "off": sum(off for _, _, off in blocks) / n * 1000,
    }
    resolution = TICK_S / n * 1000  # a reading is whole clock ticks: one tick spread over the requests
    judge = not args.aa  # an A/A run has nothing to meet: it shows the noise floor

    def row(label: str, name: str) -> str:
        per_request = f"{cpu_ms[name]:.2f} ms" if name in cpu_ms else "–"
        return (
            f"| {label} | {len(total[name])} | {med(total[name]):.2f} ms | {base.p90(total[name]):.2f} ms | "
            f"{med(own[name]):.2f} ms | {per_request} |"
        )

    def diff(label: str, value: float, ci: tuple[float, float] | None = None) -> str:
        interval = f"[{ci[0]:+.2f}, {ci[1]:+.2f}] ms" if ci else "–"
        return f"| {label} | {value:+.2f} ms | {interval} | {verdict(value, ci) if judge else '–'} |"

    paired_total = [on - off for on, off in zip(total["on"], total["off"])]
    paired_own = [on - off for on, off in zip(own["on"], own["off"])]
    threads = meta["omp"] or "unset"
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    on_env = " ".join(f"{k}={v}" for k, v in (SETTINGS["off"] if args.aa else SETTINGS["on"]).items())
    off_env = " ".join(f"{k}={v}" for k, v in SETTINGS["off"].items())
    a, b = ("off (A)", "off (B)") if args.aa else ("on", "off")
    lines = [
        f"## {stamp}: the cost of metrics and structured logging (`python bench/observe_cost.py"
        + (" --aa`: A/A, the noise floor)" if args.aa else "`)"),
        "",
        f"`python bench/observe_cost.py --rounds {args.rounds} --warmup {args.warmup}"
        + (" --aa" if args.aa else "")
        + f"` on {meta['nproc']} × {meta['cpu']} ({meta['os']}), shared with other work; ComfyUI {meta['comfyui']} "
        f"(PyTorch {meta['pytorch']}, `{args.comfyui_args}`), OMP_NUM_THREADS {threads}; Python {meta['python']}. "
        f"Two services on the same ComfyUI, identical but for *{a}* (`{on_env}`"
        + ("" if args.aa else ", Cloud Run's default")
        + f") and *{b}* (`{off_env}`), both `LOG_LEVEL={args.service_log_level}`. EmptyImage 512² → SaveImage, a "
        "unique colour per request; each round the direct client, then the two services in alternating order "
        "(ABBA), ComfyUI idle before every sample.",
        "",
        "| method | rounds | median | p90 | own median (total − ComfyUI) | process CPU per request |",
        "|---|---:|---:|---:|---:|---:|",
        row("direct client (reference)", "direct"),
        row(f"service, {b}", "off"),
        row(f"service, {a}", "on"),
        "",
        f"| {a} − {b} | value | 95% interval (bootstrap) | target |",
        "|---|---:|---:|---|",
        diff("client total: difference of the medians", med(total["on"]) - med(total["off"])),
        diff("client total: paired (median of per-round differences)", med(paired_total), bootstrap(paired_total, med)),
        diff("own time at equal ComfyUI time: difference of the medians", med(own["on"]) - med(own["off"])),
        diff("own time at equal ComfyUI time: paired", med(paired_own), bootstrap(paired_own, med)),
        diff(
            f"process CPU per request (readings ±{resolution:.2f} ms)",
            cpu_per_request(blocks),
            bootstrap(blocks, cpu_per_request) if len(blocks) > 1 else None,
        ),
        "",
        "*Own*: the client's total minus ComfyUI's part of it (the direct client's wait for `execution_success`, "
        "the service's `timings.comfyui_ms`). *Process CPU*: the service process's utime + stime over the measured "
        f"rounds divided by its requests; the interval resamples its {len(blocks)} blocks of {args.cpu_block} rounds. "
        "It includes what each service does while the others run (websocket status messages, idle threads), "
        "the same for both.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
