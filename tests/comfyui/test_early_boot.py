"""`python -m handler` spawns ComfyUI before it imports the web stack and builds the app: on a
cold start ComfyUI's own boot (seconds) then overlaps the service's (1.5 s of imports and wiring
measured in the worker image, bench/RESULTS.md), instead of following it.

The ComfyUI here is a shim that records which of the service's heavy native modules its parent
had loaded when it was spawned, then becomes the stand-in."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess

# Native modules the service loads only for its web stack, cloud clients and images.
HEAVY = ("uvloop", "httptools", "PIL/_imaging", "cygrpc", "google/_upb")

SHIM = f"""
import os, sys
with open(f"/proc/{{os.getppid()}}/maps") as maps:
    loaded = maps.read()
with open(os.environ["EARLY_BOOT_REPORT"], "w") as report:
    report.write("\\n".join(name for name in {HEAVY!r} if name in loaded))
stand_in = {str(STANDIN / "main.py")!r}
os.execv(sys.executable, [sys.executable, stand_in, *sys.argv[1:]])
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc to see the parent's modules")
def test_comfyui_is_spawned_before_the_web_stack_is_loaded(tmp_path: Path) -> None:
    shim = tmp_path / "comfyui"
    shim.mkdir()
    (shim / "main.py").write_text(SHIM)
    report = tmp_path / "loaded-at-spawn.txt"
    env = {"EARLY_BOOT_REPORT": str(report), "COMFYUI_ENV_PASSTHROUGH": "EARLY_BOOT_REPORT"}
    svc = ServiceProcess(ComfyTarget("standin", shim, sys.executable, ""), tmp_path / "state", env=env)
    svc.start()
    try:
        svc.wait_ready()
        assert svc.get("/healthz").json() == {"status": "ready"}
        assert report.read_text() == "", f"loaded before ComfyUI was spawned: {report.read_text()}"
        assert "starting ComfyUI" in svc.log()
    finally:
        svc.stop()
