"""The GPU at boot (handler/comfyui/gpu.py): what is logged, and a worker that must have a GPU and has
none stopping at once with a message that says so, instead of hanging at its first prompt."""

from __future__ import annotations

import time

from handler.comfyui import gpu
from handler.config import Settings
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess


def test_torch_summary_reads_comfyuis_system_stats():
    stats = {
        "system": {"pytorch_version": "2.10.0+cu128"},
        "devices": [{"type": "cuda", "name": "cuda:0 NVIDIA L4 : cudaMallocAsync"}],
    }
    assert gpu.torch_summary(stats) == ("2.10.0+cu128", ["cuda:cuda:0 NVIDIA L4 : cudaMallocAsync"])
    assert gpu.torch_summary({}) == ("?", [])


def test_require_gpu_is_off_for_an_explicit_cpu_run():
    assert Settings.from_env({"REQUIRE_GPU": "true"}).require_gpu
    assert not Settings.from_env({"REQUIRE_GPU": "true", "COMFYUI_ARGS": "--cpu --disable-api-nodes"}).require_gpu
    assert not Settings.from_env({}).require_gpu


def test_a_worker_without_its_gpu_exits_at_boot_saying_why(tmp_path):
    if gpu.probe() is not None:
        import pytest

        pytest.skip("this machine has an NVIDIA GPU")
    target = ComfyTarget("standin", STANDIN, __import__("sys").executable, "")
    service = ServiceProcess(target, tmp_path, env={"REQUIRE_GPU": "true"}).start()
    try:
        assert service.process is not None
        started = time.monotonic()
        code = service.process.wait(60)
        assert code != 0 and time.monotonic() - started < 30
        log = service.log()
        assert "REQUIRE_GPU is set but no NVIDIA GPU is usable here" in log, log[-2000:]
        assert "starting ComfyUI" not in log  # nothing was booted on the way
    finally:
        service.stop()
    # the same service without REQUIRE_GPU boots and logs that it has no GPU
    service = ServiceProcess(target, tmp_path / "cpu").start().wait_ready(60)
    try:
        assert "GPU: none (ComfyUI runs on CPU)" in service.log()
    finally:
        service.stop()
