"""Cold start, measured: `python bench/cold_start.py` with COMFYUI_PATH / COMFYUI_PYTHON (a real ComfyUI).

Builds (or reuses) the tiny SD1.5 checkpoint (tests/fixtures/tiny_model.py), then boots the service
ROUNDS times without and with WARMUP_WORKFLOW (the first request's workflow, another seed) and
prints per boot:

* from the bench's clock, seconds from process start to ComfyUI listening (its log line, polled)
  and to ready (/healthz 200, polled every 10 ms);
* from the service's own log (JSON, millisecond timestamps, no polling): when it spawned ComfyUI,
  then, counted from ComfyUI's listening line, when it was ready ("service after listening") and
  when the node catalogue had loaded; "service own" is "service after listening" less the
  warmup's run, i.e. what the service itself adds to ComfyUI's boot;
* the first txt2img request, sent as soon as /healthz says ready, and a steady one (the median
  of the five after it), with how long the first one's POST /prompt took (ComfyUI answers nothing
  while it collects garbage after its first prompt: see bench/README.md).

ComfyUI's own boot is counted from its spawn to its listening line: from then on it accepts
connections and prompts, and every further step is the service's (or ComfyUI work the service
asks for). Prints one Markdown table; --json for machine-readable output. Run it with nothing
else busy: the numbers are wall-clock times.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.comfy import ComfyTarget, ServiceProcess  # noqa: E402
from tests.fixtures.tiny_model import build_tiny_checkpoint, txt2img  # noqa: E402

LISTENING = "To see the GUI go to:"
# The service's log lines that mark each step (handler/comfyui/supervisor.py, comfy.py, app.py).
MARKS = {
    "spawned": "starting ComfyUI:",
    "listening": LISTENING,
    "ready": "is ready (",
    "catalogue": "node catalogue loaded",
}
WARMUP_LINE = re.compile(r"warmup workflow .* ran in ([\d.]+) s(?:, then again in ([\d.]+) s)?")


def log_times(log: str) -> tuple[dict[str, float], tuple[float, float]]:
    """Wall-clock time of the first line of each mark, and the warmup's two runs in seconds."""
    times: dict[str, float] = {}
    warmup = (0.0, 0.0)
    for line in log.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        message = record.get("message", "")
        at = datetime.strptime(record["time"], "%Y-%m-%dT%H:%M:%S.%f%z").timestamp()
        for name, needle in MARKS.items():
            if needle in message and name not in times:
                times[name] = at
        if found := WARMUP_LINE.search(message):
            warmup = (float(found[1]), float(found[2] or 0))
    return times, warmup


def boot(target: ComfyTarget, models_dir: Path, warmup: Path | None, state: Path) -> dict[str, float]:
    env = {"MODELS_DIR": str(models_dir), "LOG_FORMAT": "json"}
    if warmup:
        env["WARMUP_WORKFLOW"] = str(warmup)
    service = ServiceProcess(target, state, env=env)
    started, started_wall = time.monotonic(), time.time()
    service.start()
    listening = None
    try:
        while True:  # the listening line is in the log as soon as ComfyUI prints it
            if listening is None and LISTENING in service.log():
                listening = time.monotonic() - started
            try:
                if service.get("/healthz", timeout=2).status_code == 200:
                    break
            except Exception:
                pass
            assert time.monotonic() - started < 600, service.log()[-3000:]
            time.sleep(0.01)
        ready = time.monotonic() - started
        listening = listening if listening is not None else ready

        def request(seed: int) -> tuple[float, float]:
            """Seconds for the answer, and ms its POST /prompt took inside the service's run."""
            t0 = time.monotonic()
            response = service.post("/predict", json={"workflow": txt2img(seed=seed)})
            assert response.status_code == 200, response.text[:500]
            return time.monotonic() - t0, float(response.json().get("timings", {}).get("submit_ms", "nan"))

        first, first_submit_ms = request(1)
        steadies = [request(seed) for seed in range(2, 7)]
    finally:
        service.stop()
    at, (warmup_first_s, warmup_again_s) = log_times(service.log())
    after_listening = at["ready"] - at["listening"]
    steady = statistics.median(s for s, _ in steadies)
    return {
        "spawned_s": at["spawned"] - started_wall,
        "listening_s": listening,
        "ready_s": ready,
        "service_after_listening_ms": after_listening * 1000,
        "warmup_s": warmup_first_s + warmup_again_s,
        "warmup_again_s": warmup_again_s,
        "service_own_ms": (after_listening - warmup_first_s - warmup_again_s) * 1000,
        # (a service from before the catalogue followed readiness logs no such line: it had it by ready)
        "catalogue_after_listening_ms": (at.get("catalogue", at["ready"]) - at["listening"]) * 1000,
        "first_request_s": first,
        "steady_request_s": steady,
        "first_over_steady": first / steady,
        "first_submit_ms": first_submit_ms,
        "steady_submit_ms": statistics.median(ms for _, ms in steadies),
    }


# The Markdown table's columns: (key, heading, format).
COLUMNS = [
    ("listening_s", "listening s", "{:.2f}"),
    ("ready_s", "ready s", "{:.2f}"),
    ("service_after_listening_ms", "after listening ms", "{:.0f}"),
    ("warmup_s", "of which warmup s", "{:.2f}"),
    ("service_own_ms", "service own ms", "{:.0f}"),
    ("catalogue_after_listening_ms", "catalogue ms", "{:.0f}"),
    ("first_request_s", "first s", "{:.2f}"),
    ("steady_request_s", "steady s", "{:.2f}"),
    ("first_over_steady", "first / steady", "{:.2f}"),
    ("first_submit_ms", "first submit ms", "{:.0f}"),
]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--args",
        default=os.environ.get("COMFYUI_TEST_ARGS", "--cpu --disable-api-nodes"),
        help="ComfyUI's arguments (default: --cpu --disable-api-nodes; '' on a GPU)",
    )
    parser.add_argument("--json", action="store_true")
    options = parser.parse_args()
    path, python = os.environ.get("COMFYUI_PATH"), os.environ.get("COMFYUI_PYTHON", "python3")
    if not path:
        parser.error("set COMFYUI_PATH (and COMFYUI_PYTHON) to a real ComfyUI")
    tiny = build_tiny_checkpoint(Path(path).resolve(), python)
    target = ComfyTarget("real", Path(path).resolve(), python, options.args)
    results: dict[str, list[dict[str, float]]] = {"no warmup": [], "warmup": []}
    with tempfile.TemporaryDirectory() as tmp:
        warmup = Path(tmp) / "warmup.json"
        warmup.write_text(json.dumps(txt2img(seed=0, prefix="warmup")))
        for round_ in range(options.rounds):
            for name, workflow in (("no warmup", None), ("warmup", warmup)):
                results[name].append(boot(target, tiny.models_dir, workflow, Path(tmp) / f"{name}-{round_}"))
                print(f"{name}, round {round_ + 1}: {results[name][-1]}", file=sys.stderr, flush=True)
    if options.json:
        print(json.dumps(results, indent=2))
        return 0
    print("| boot | " + " | ".join(heading for _, heading, _ in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for name, runs in results.items():
        for run in runs:
            print(f"| {name} | " + " | ".join(form.format(run[key]) for key, _, form in COLUMNS) + " |")
        medians = {key: statistics.median(run[key] for run in runs) for key, _, _ in COLUMNS}
        print(f"| {name}, median | " + " | ".join(form.format(medians[key]) for key, _, form in COLUMNS) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
