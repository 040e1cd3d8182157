"""Models by URL, measured: `python bench/model_cache.py [--mib 256] [--rounds 5] [--hits 2000]`.

Two numbers (targets from issue 21):

* **cache-hit overhead**: what a request whose checkpoint is a URL already in the cache costs more
  than one naming a local file, in the service's own steps: the body's check of the reference
  (`check_model_urls`: forms and URL rules; the URL's host is an IP literal here, so no DNS) and
  the run's staging (`ondemand.stage`: find the inputs, acquire and pin, rewrite the graph's copy,
  release), against the same steps for a plain file name. Interleaved, medians. Target ≤ 1 ms.
* **download throughput**: a file of `--mib` MiB from an HTTP server on loopback (the same
  server for both, from a memory-mapped file), fetched by `curl -o` into the same folder and by
  the cache (into a part file, with the sha256 computed on the way, renamed into place).
  Interleaved rounds, medians. Target ≥ 0.9 × curl.

Run it with nothing else busy: the numbers are wall-clock times. Prints one Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from handler.config import Settings  # noqa: E402
from handler.models import ondemand  # noqa: E402
from handler.models.cache import ModelCache  # noqa: E402
from handler.models.refs import check_model_urls, find_uses  # noqa: E402
from tests.fixtures.modelserver import serve  # noqa: E402

SETTINGS = Settings(url_allowlist=("127.0.0.1",))


def workflow(ckpt: object) -> dict:
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["1", 1]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "x"}},
    }


def request_steps(cache: ModelCache, graph: dict, info: dict) -> None:
    """The service's steps for a request's models, from its body to the end of its run."""
    check_model_urls(graph, SETTINGS)
    staged = ondemand.stage(cache, graph, info, time.monotonic() + 60)
    copy = {node_id: {**node, "inputs": dict(node["inputs"])} for node_id, node in graph.items()}
    staged.rewrite(copy)
    staged.release()


def hit_overhead(cache: ModelCache, url: str, hits: int) -> tuple[float, float]:
    info = json.loads((ROOT / "test_resources" / "comfy" / "object_info.json").read_text())
    by_url, by_name = workflow(url), workflow("local.safetensors")
    request_steps(cache, by_url, info)  # fetched once, then hits only
    url_s, name_s = [], []
    for _ in range(hits):
        for graph, samples in ((by_url, url_s), (by_name, name_s)):
            started = time.perf_counter()
            request_steps(cache, graph, info)
            samples.append(time.perf_counter() - started)
    return statistics.median(url_s), statistics.median(name_s)


def throughput(server_url: str, folder: Path, size: int, rounds: int) -> tuple[list[float], list[float]]:
    curl_s, cache_s = [], []
    for _ in range(rounds):
        target = folder / "curl.bin"
        started = time.perf_counter()
        subprocess.run(["curl", "-sSf", "-o", str(target), server_url], check=True)
        curl_s.append(time.perf_counter() - started)
        assert target.stat().st_size == size
        target.unlink()
        root = folder / "cache"
        cache = ModelCache(root=root, budget_bytes=4 * size, settings=SETTINGS)
        ref = find_uses(workflow(server_url), None)[0].ref
        started = time.perf_counter()
        got = cache.acquire(ref, deadline=time.monotonic() + 600)
        cache_s.append(time.perf_counter() - started)
        assert got.entry.size == size
        shutil.rmtree(root)
    return curl_s, cache_s


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--hits", type=int, default=2000)
    args = parser.parse_args()
    size = args.mib * 1024 * 1024
    with tempfile.TemporaryDirectory(prefix="model-cache-bench-", dir=os.environ.get("BENCH_DIR")) as tmp:
        folder = Path(tmp)
        source = folder / "model.safetensors"
        with open(source, "wb") as out:
            block = os.urandom(1024 * 1024)
            for _ in range(args.mib):
                out.write(block)
        with serve({"model.safetensors": source}) as server:
            url = server.url("plain", "model.safetensors")
            hit_cache = ModelCache(root=folder / "hits", budget_bytes=4 * size, settings=SETTINGS)
            by_url, by_name = hit_overhead(hit_cache, url, args.hits)
            curl_s, cache_s = throughput(url, folder, size, args.rounds)
        started = time.perf_counter()
        hashlib.file_digest(open(source, "rb"), "sha256")  # noqa: SIM115
        hash_s = time.perf_counter() - started
    mib = size / 1024 / 1024
    curl_rate, cache_rate = mib / statistics.median(curl_s), mib / statistics.median(cache_s)
    print(
        f"`python bench/model_cache.py --mib {args.mib} --rounds {args.rounds} --hits {args.hits}` on "
        f"{platform.processor() or platform.machine()} (nproc {os.cpu_count()}), Python {platform.python_version()}, "
        f"curl {subprocess.run(['curl', '--version'], capture_output=True, text=True).stdout.split()[1]}\n"
    )
    print("| measure | value | target |")
    print("|---|---:|---|")
    overhead_ms = (by_url - by_name) * 1000
    print(f"| request steps, checkpoint by URL (cache hit), median of {args.hits} | {by_url * 1e6:.0f} µs | – |")
    print(f"| request steps, checkpoint by file name, median of {args.hits} | {by_name * 1e6:.0f} µs | – |")
    verdict = "met" if overhead_ms <= 1.0 else "**missed**"
    print(f"| cache-hit overhead | {overhead_ms:.3f} ms | ≤ 1 ms: {verdict} |")
    print(f"| curl -o, {args.mib} MiB, median of {args.rounds} | {curl_rate:.0f} MiB/s | – |")
    print(f"| model cache (download + sha256 + rename), median of {args.rounds} | {cache_rate:.0f} MiB/s | – |")
    ratio = cache_rate / curl_rate
    print(f"| cache / curl | {ratio:.2f}× | ≥ 0.9×: {'met' if ratio >= 0.9 else '**missed**'} |")
    print(f"| sha256 of the file alone (for scale) | {mib / hash_s:.0f} MiB/s | – |")


if __name__ == "__main__":
    main()
