"""The GPU as the worker sees it at boot, without PyTorch: NVIDIA's own libraries through ctypes.

`probe()` reads the device name and the driver version from NVML (libnvidia-ml.so.1) and the CUDA
version the driver supports from libcuda.so.1, in milliseconds, before ComfyUI starts. It returns
None when there is no NVIDIA driver or no device. PyTorch's side (its version and the CUDA it was
built for) comes later from ComfyUI's /system_stats (`torch_summary`).

A worker that must have a GPU (REQUIRE_GPU) and finds none stops at boot with a message that says
so (`GpuUnavailable`), instead of booting a ComfyUI that fails or hangs at its first prompt.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from typing import Any


class GpuUnavailable(RuntimeError):
    """REQUIRE_GPU is set and no usable NVIDIA GPU is there: the message says what is missing."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    driver: str  # e.g. 535.216.03
    cuda: str  # the newest CUDA the driver runs, e.g. 12.2
    count: int

    def summary(self) -> str:
        return f"{self.name} (x{self.count}), driver {self.driver}, driver CUDA {self.cuda}"


def _load(name: str) -> Any:
    try:
        return ctypes.CDLL(name)
    except OSError:
        return None


def probe() -> GpuInfo | None:
    nvml = _load("libnvidia-ml.so.1")
    if nvml is None or nvml.nvmlInit_v2() != 0:
        return None
    try:
        count = ctypes.c_uint(0)
        if nvml.nvmlDeviceGetCount_v2(ctypes.byref(count)) != 0 or count.value == 0:
            return None
        handle = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(0, ctypes.byref(handle)) != 0:
            return None
        name = ctypes.create_string_buffer(96)
        driver = ctypes.create_string_buffer(80)
        nvml.nvmlDeviceGetName(handle, name, 96)
        nvml.nvmlSystemGetDriverVersion(driver, 80)
    finally:
        nvml.nvmlShutdown()
    cuda = "?"
    libcuda = _load("libcuda.so.1")
    version = ctypes.c_int(0)
    if libcuda is not None and libcuda.cuDriverGetVersion(ctypes.byref(version)) == 0:
        cuda = f"{version.value // 1000}.{version.value % 1000 // 10}"
    return GpuInfo(name.value.decode(errors="replace"), driver.value.decode(errors="replace"), cuda, count.value)


def torch_summary(system_stats: dict[str, Any]) -> tuple[str, list[str]]:
    """PyTorch's version and ComfyUI's devices ("cuda", "cpu", ...) from /system_stats."""
    system = system_stats.get("system") or {}
    devices = [str(d.get("type")) + ":" + str(d.get("name")) for d in system_stats.get("devices") or []]
    return str(system.get("pytorch_version") or "?"), devices


def require(info: GpuInfo | None) -> None:
    if info is None:
        raise GpuUnavailable(
            "REQUIRE_GPU is set but no NVIDIA GPU is usable here (no driver library libnvidia-ml.so.1, "
            "or no device): deploy with a GPU (--gpu=1 on Cloud Run), or set COMFYUI_ARGS=--cpu to run on CPU"
        )
