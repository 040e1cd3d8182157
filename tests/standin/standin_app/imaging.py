"""Image helpers on ComfyUI's data layout: float32 in [0, 1], batches as [B, H, W, C] (NHWC).

Masks are [B, H, W]; latents are {"samples": [B, C, h, w]}.
"""

from __future__ import annotations

import json
import os
import struct
import time

import numpy as np
from PIL import Image

RESAMPLE = {
    "nearest-exact": Image.Resampling.NEAREST,
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "area": Image.Resampling.BOX,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "bislerp": Image.Resampling.BILINEAR,
}


def to_pil(image: np.ndarray) -> Image.Image:
    """One [H, W, C] float image to an 8-bit Pillow image (values truncated, as ComfyUI does)."""
    array = np.clip(255.0 * image, 0, 255).astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(array)


def center_crop_box(old_w: int, old_h: int, width: int, height: int) -> tuple[int, int]:
    old_aspect = old_w / old_h
    new_aspect = width / height
    x = y = 0
    if old_aspect > new_aspect:
        x = round((old_w - old_w * (new_aspect / old_aspect)) / 2)
    elif old_aspect < new_aspect:
        y = round((old_h - old_h * (old_aspect / new_aspect)) / 2)
    return x, y


def resize_planes(planes: np.ndarray, width: int, height: int, method: str, crop: str) -> np.ndarray:
    """Resize [N, H, W] float planes to [N, height, width]."""
    if crop == "center":
        x, y = center_crop_box(planes.shape[2], planes.shape[1], width, height)
        planes = planes[:, y : planes.shape[1] - y, x : planes.shape[2] - x]
    resample = RESAMPLE.get(method, Image.Resampling.BILINEAR)
    out = np.empty((planes.shape[0], height, width), dtype=np.float32)
    for index, plane in enumerate(planes):
        image = Image.fromarray(np.ascontiguousarray(plane, dtype=np.float32), mode="F")
        out[index] = np.asarray(image.resize((width, height), resample), dtype=np.float32)
    return out


def resize_images(images: np.ndarray, width: int, height: int, method: str, crop: str = "disabled") -> np.ndarray:
    """[B, H, W, C] -> [B, height, width, C]."""
    b, h, w, c = images.shape
    planes = np.moveaxis(images, -1, 1).reshape(b * c, h, w)
    out = resize_planes(planes, width, height, method, crop)
    return np.moveaxis(out.reshape(b, c, height, width), 1, -1).copy()


def resize_latent(samples: np.ndarray, width: int, height: int, method: str, crop: str = "disabled") -> np.ndarray:
    """[B, C, h, w] -> [B, C, height, width]."""
    b, c, h, w = samples.shape
    out = resize_planes(samples.reshape(b * c, h, w), width, height, method, crop)
    return out.reshape(b, c, height, width)


def gaussian_kernel_1d(size: int, sigma: float) -> np.ndarray:
    t = np.linspace(-1.0, 1.0, size, dtype=np.float64)
    g = np.exp(-(t * t) / (2.0 * sigma * sigma))
    return (g / g.sum()).astype(np.float32)


def blur(images: np.ndarray, radius: int, sigma: float, check=None) -> np.ndarray:
    """A gaussian blur over [-1, 1] with reflected borders (the 2-D kernel, applied separably)."""
    if radius == 0:
        return images
    b, h, w, c = images.shape
    if radius >= h or radius >= w:
        raise RuntimeError(
            f"Argument #4: Padding size should be less than the corresponding input dimension, "
            f"but got: padding ({radius}, {radius}) at dimension {3 if radius >= w else 2} of input [{b}, {c}, {h}, {w}]"
        )
    kernel = gaussian_kernel_1d(2 * radius + 1, sigma)
    out = np.empty_like(images, dtype=np.float32)
    for index in range(b):
        image = images[index].astype(np.float32, copy=False)
        for axis, length in ((0, h), (1, w)):
            pad = [(0, 0)] * 3
            pad[axis] = (radius, radius)
            padded = np.pad(image, pad, mode="reflect")
            acc = np.zeros_like(image)
            tmp = np.empty_like(image)
            for k, weight in enumerate(kernel):
                window = padded[k : k + length] if axis == 0 else padded[:, k : k + length]
                np.multiply(window, weight, out=tmp)
                acc += tmp
            image = acc
            if check is not None:
                check()
        out[index] = image
    return out


def next_save_path(prefix: str, output_dir: str, width: int = 0, height: int = 0) -> tuple[str, str, int, str]:
    """(folder, file stem, next counter, subfolder) for `<prefix>_<counter>_.<ext>` files.

    A `/` in the prefix makes a subfolder; the counter continues after the files already there.
    """
    if "%" in prefix:
        now = time.localtime()
        for key, value in (
            ("%width%", str(width)),
            ("%height%", str(height)),
            ("%year%", str(now.tm_year)),
            ("%month%", f"{now.tm_mon:02}"),
            ("%day%", f"{now.tm_mday:02}"),
            ("%hour%", f"{now.tm_hour:02}"),
            ("%minute%", f"{now.tm_min:02}"),
            ("%second%", f"{now.tm_sec:02}"),
        ):
            prefix = prefix.replace(key, value)
    normalized = os.path.normpath(prefix)
    subfolder = os.path.dirname(normalized)
    stem = os.path.basename(normalized)
    folder = os.path.join(output_dir, subfolder)
    base = os.path.abspath(output_dir)
    if os.path.commonpath((base, os.path.abspath(folder))) != base:
        message = (
            "**** ERROR: Saving image outside the output folder is not allowed."
            f"\n full_output_folder: {os.path.abspath(folder)}\n         output_dir: {output_dir}"
        )
        raise Exception(message)
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return folder, stem, 1, subfolder
    best = 0
    length = len(os.path.basename(prefix))
    for name in names:
        head = name[: length + 1]
        if os.path.normcase(head[:-1]) != os.path.normcase(stem) or head[-1:] != "_":
            continue
        try:
            best = max(best, int(name[length + 1 :].split(".")[0].split("_")[0]))
        except ValueError:
            pass
    return folder, stem, best + 1, subfolder


def write_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None) -> None:
    """A safetensors file: u64 header length, JSON header, raw little-endian data."""
    dtypes = {np.dtype("float32"): "F32", np.dtype("float16"): "F16", np.dtype("int64"): "I64"}
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    blobs = []
    for name in sorted(tensors):
        array = np.ascontiguousarray(tensors[name])
        data = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes()
        header[name] = {
            "dtype": dtypes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        blobs.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for blob in blobs:
            f.write(blob)


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    kinds = {"F32": np.float32, "F16": np.float16, "I64": np.int64, "BF16": None}
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
        data = f.read()
    out = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        start, end = entry["data_offsets"]
        dtype = kinds.get(entry["dtype"]) or np.float32
        out[name] = np.frombuffer(data[start:end], dtype=dtype).reshape(entry["shape"]).astype(np.float32)
    return out
