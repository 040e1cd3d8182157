"""The model cache's default budget: on Cloud Run the disk is memory, so the cache's bytes are
taken from the instance's memory, after what ComfyUI and the service need."""

from __future__ import annotations

from pathlib import Path


def memory_limit_bytes() -> int | None:
    """This instance's memory: the cgroup's limit where there is one, else the machine's."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            text = Path(path).read_text().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < 1 << 60:
            return int(text)
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def default_budget(memory: int | None, comfyui_reserve: int) -> int:
    """Half of what memory leaves once ComfyUI's reserve is set aside: on Cloud Run the disk is
    memory, and a model loaded from the cache is in memory a second time while it is loaded."""
    if memory is None:
        return 10 * 1024**3
    return max(0, (memory - comfyui_reserve) // 2)
