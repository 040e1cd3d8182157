"""Cold start, measured: `python bench/cold_start.py` with COMFYUI_PATH / COMFYUI_PYTHON (a real ComfyUI).

Builds (or reuses) the tiny SD1.5 checkpoint (tests/fixtures/tiny_model.py), then boots the service
ROUNDS times without and with WARMUP_WORKFLOW, and prints, per boot, seconds from process start to:
ComfyUI listening (its own log line), ready (/healthz 200), then the first txt2img request's time
and a steady one's (the median of three after it). "service after listening" is what the service
adds to ComfyUI's own boot: websocket connect, catalogue, warmup (when set). Prints one Markdown
table; --json for machine-readable output. Run it with nothing else busy.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fixtures.comfy import ComfyTarget, ServiceProcess  # noqa: E402
from tests.fixtures.tiny_model import build_tiny_checkpoint  # noqa: E402
from tests.test_real_model import txt2img  # noqa: E402

LISTENING = "To see the GUI go to:"


def boot(target: ComfyTarget, models_dir: Path, warmup: Path | None, state: Path) -> dict[str, float]:
    env = {"MODELS_DIR": str(models_dir)}
    if warmup:
        env["WARMUP_WORKFLOW"] = str(warmup)
    service = ServiceProcess(target, state, env=env)
    started = time.monotonic()
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

        def request(seed: int) -> float:
            t0 = time.monotonic()
            response = service.post("/predict", json={"workflow": txt2img(seed=seed)})
            assert response.status_code == 200, response.text[:500]
            return time.monotonic() - t0

        first = request(1)
        steady = statistics.median(request(seed) for seed in (2, 3, 4))
        return {
            "listening_s": listening,
            "ready_s": ready,
            "service_after_listening_s": ready - listening,
            "first_request_s": first,
            "steady_request_s": steady,
            "first_over_steady": first / steady,
        }
    finally:
        service.stop()


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
    if options.json:
        print(json.dumps(results, indent=2))
        return 0
    keys = [
        "listening_s",
        "ready_s",
        "service_after_listening_s",
        "first_request_s",
        "steady_request_s",
        "first_over_steady",
    ]
    print("| boot | " + " | ".join(keys) + " |")
    print("|---|" + "---|" * len(keys))
    for name, runs in results.items():
        for run in runs:
            print(f"| {name} | " + " | ".join(f"{run[k]:.3f}" for k in keys) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
