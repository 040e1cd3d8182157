"""Which CUDA each shared object under a folder was built for: run inside the worker image (standard
library only), prints one JSON object, {"files": N, "objects": [{"path", "needs", "built_with"}]}.

Two kinds of evidence, both read from the file itself, nothing loaded:

* `needs`: the CUDA libraries it links dynamically (DT_NEEDED), with their soname's major version,
  e.g. `libcudart.so.12` -> 12. The loader must find exactly that major, so it is the CUDA the
  object runs against.
* `built_with`: the toolkit releases named in its embedded GPU code, e.g. nvcc's
  "Cuda compilation tools, release 13.0, V13.0.88" note in each uncompressed cubin of a fat binary.
  An object that links the CUDA runtime statically (no libcudart in DT_NEEDED) shows its CUDA here.

CUDA 13 needs driver 580 or later; Cloud Run's L4 has 535 (CUDA 12.2): an object with 13 in
either list would not run there.
"""

from __future__ import annotations

import json
import mmap
import os
import re
import struct
import sys

CUDA_LIBS = re.compile(
    rb"^lib(cudart|cublas|cublasLt|cudnn|cufft|curand|cusolver|cusparse|nvrtc|nvJitLink|nccl|cupti)"
    rb"[A-Za-z0-9_]*\.so\.(\d+)"
)
TOOLKIT = re.compile(rb"Cuda compilation tools, release (\d+)\.(\d+)")


def needed(data: mmap.mmap) -> list[str]:
    """DT_NEEDED names of a 64-bit little-endian ELF file (what the dynamic loader opens)."""
    if data[:4] != b"\x7fELF" or data[4] != 2 or data[5] != 1:
        return []
    (shoff,) = struct.unpack_from("<Q", data, 0x28)
    shentsize, shnum = struct.unpack_from("<HH", data, 0x3A)
    sections = [struct.unpack_from("<IIQQQQIIQQ", data, shoff + i * shentsize) for i in range(shnum)]
    names = []
    for _name, kind, _flags, _addr, offset, size, link, _info, _align, entsize in sections:
        if kind != 6 or not entsize:  # SHT_DYNAMIC
            continue
        strtab_offset = sections[link][4]
        for pos in range(offset, offset + size, entsize):
            tag, value = struct.unpack_from("<qQ", data, pos)
            if tag == 0:
                break
            if tag == 1:  # DT_NEEDED
                end = data.find(b"\0", strtab_offset + value)
                names.append(data[strtab_offset + value : end].decode(errors="replace"))
    return names


def scan(root: str) -> dict[str, object]:
    objects = []
    files = 0
    for folder, _dirs, names in os.walk(root):
        for name in names:
            if ".so" not in name:
                continue
            path = os.path.join(folder, name)
            if os.path.islink(path) or not os.path.isfile(path) or os.path.getsize(path) == 0:
                continue
            files += 1
            with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
                try:
                    libs = needed(data)
                except (struct.error, IndexError):
                    libs = []
                needs = sorted({f"{m.group(0).decode()}" for lib in libs if (m := CUDA_LIBS.match(lib.encode()))})
                built = sorted({f"{m.group(1).decode()}.{m.group(2).decode()}" for m in TOOLKIT.finditer(data)})
            if needs or built:
                objects.append({"path": path, "needs": needs, "built_with": built})
    return {"files": files, "objects": objects}


if __name__ == "__main__":
    print(json.dumps(scan(sys.argv[1] if len(sys.argv) > 1 else "/opt/comfy")))
