"""Cold start of the worker container: `docker run` -> ready, and the service's share of it.

    python bench/image_cold_start.py [--image comfyrun-test-worker:latest] [--rounds 3] [--args --cpu]

Needs a Docker engine (COMFYRUN_DOCKER_HOST, as `eval $(scripts/image-env.sh start)` prints) and a
worker image that holds a real ComfyUI and the tiny SD1.5 checkpoint: the image tier builds one
(`COMFYUI_SOURCE=<ComfyUI tree> ./scripts/test.sh tests/image`, tag comfyrun-test-worker:latest).
Each round runs the container as Cloud Run would (user 1000, PORT, host network), polls /healthz
every 10 ms, sends one txt2img, and stops it. Per round, in seconds from `docker run`:

* `started`: the container's process started (`docker inspect`'s StartedAt): the engine's share;
* `spawned`: the service spawned ComfyUI (its "starting ComfyUI:" log line): what the service does
  before ComfyUI can begin, importing its libraries and building its app;
* `listening`: ComfyUI printed its listening line: ComfyUI's own boot, from the spawn;
* `ready`: /healthz answered 200 (polled); after listening, that is the service's again
  (connecting, the node catalogue);
* `first`: the first txt2img (64 px, 2 steps), sent as soon as it was ready.

The service's share is (spawned - started) + (ready - listening). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.cold_start import log_times  # noqa: E402
from tests.fixtures.comfy import free_port  # noqa: E402
from tests.fixtures.tiny_model import txt2img  # noqa: E402
from tests.image.harness import Docker  # noqa: E402

CHECKPOINT = "tiny-sd15.safetensors"


def started_at(docker: Docker, name: str) -> float:
    """The container's StartedAt (RFC 3339 with nanoseconds) as a Unix time."""
    raw = docker.run("inspect", "-f", "{{.State.StartedAt}}", name).stdout.strip()
    head, _, frac = raw.rstrip("Z").partition(".")
    return datetime.strptime(head + "+0000", "%Y-%m-%dT%H:%M:%S%z").timestamp() + float("0." + (frac or "0"))


def boot(docker: Docker, image: str, comfyui_args: str) -> dict[str, float]:
    port, name = free_port(), f"comfyrun-bench-{uuid.uuid4().hex[:8]}"
    env = {
        "PORT": str(port),
        "COMFYUI_PORT": str(free_port()),
        "COMFYUI_ARGS": comfyui_args,
        "REQUIRE_GPU": "false" if "--cpu" in comfyui_args else "true",
        "LOG_FORMAT": "json",
    }
    args: list[object] = ["run", "-d", "--name", name, "--network", "host", "--user", "1000:1000"]
    if "--cpu" not in comfyui_args:
        args += ["--gpus", "all"]
    for key, value in env.items():
        args += ["-e", f"{key}={value}"]
    wall = time.time()
    t0 = time.monotonic()
    docker.run(*args, image, timeout=60)
    url = f"http://127.0.0.1:{port}"
    try:
        while True:
            try:
                if requests.get(url + "/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() - t0 < 300, docker.run("logs", name, check=False).stderr[-3000:]
            time.sleep(0.01)
        ready = time.monotonic() - t0
        t1 = time.monotonic()
        workflow = txt2img(seed=1)
        workflow["1"]["inputs"]["ckpt_name"] = CHECKPOINT
        response = requests.post(url + "/predict", json={"workflow": workflow}, timeout=300)
        assert response.status_code == 200, response.text[:500]
        first = time.monotonic() - t1
        logs = docker.run("logs", name).stdout + docker.run("logs", name).stderr
        started = started_at(docker, name) - wall
    finally:
        docker.run("rm", "-f", name, check=False)
    at, _ = log_times(logs)
    spawned, listening = at["spawned"] - wall, at["listening"] - wall
    return {
        "started": started,
        "spawned": spawned,
        "listening": listening,
        "ready": ready,
        "first": first,
        "service_share": (spawned - started) + (ready - listening),
    }


COLUMNS = ["started", "spawned", "listening", "ready", "service_share", "first"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="comfyrun-test-worker:latest")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--args", default="--cpu", help="COMFYUI_ARGS (default --cpu; '' with a GPU)")
    options = parser.parse_args()
    host = os.environ.get("COMFYRUN_DOCKER_HOST")
    if not host:
        parser.error("set COMFYRUN_DOCKER_HOST: eval $(scripts/image-env.sh start)")
    docker = Docker(host)
    runs = []
    for round_ in range(options.rounds):
        runs.append(boot(docker, options.image, options.args))
        print(f"round {round_ + 1}: {runs[-1]}", file=sys.stderr, flush=True)
    print("| round | " + " | ".join(f"{c} s" for c in COLUMNS) + " |")
    print("|---|" + "---|" * len(COLUMNS))
    for i, run in enumerate(runs, 1):
        print(f"| {i} | " + " | ".join(f"{run[c]:.2f}" for c in COLUMNS) + " |")
    print("| median | " + " | ".join(f"{statistics.median(r[c] for r in runs):.2f}" for c in COLUMNS) + " |")
    print(json.dumps({"image": options.image, "args": options.args}), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
