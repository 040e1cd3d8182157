"""The core no-model nodes, really executed with numpy and Pillow.

A node is a class registered under its ComfyUI class name. `run(ctx, **inputs)` returns a tuple
of outputs, or {"ui": {...}, "result": (...)} for nodes that show something. Optional classmethods:
`is_changed(ctx, **constants)` (part of the cache key) and `validate_inputs(ctx, **constants)`
(True, or a message for a `custom_validation_failed` error).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import time

import numpy as np
from PIL import Image, ImageOps, ImageSequence
from PIL.PngImagePlugin import PngInfo

from . import imaging
from .engine import ProgressBar

REGISTRY: dict[str, type] = {}

TEMP_LETTERS = "abcdefghijklmnopqrstupvxyz"


def node(name: str):
    def register(cls):
        REGISTRY[name] = cls
        return cls

    return register


class InvalidDataError(OSError):
    """What the real loader raises for a file that is not media it can decode."""


InvalidDataError.__module__ = "av.error"
InvalidDataError.__qualname__ = "InvalidDataError"


class MediaFileNotFoundError(FileNotFoundError):
    """What the real loader raises for a file that is gone."""


MediaFileNotFoundError.__module__ = "av.error"
MediaFileNotFoundError.__qualname__ = "FileNotFoundError"


def annotated_path(ctx, name: str, default: str | None = None) -> str:
    base = None
    for suffix, kind in (("[output]", "output"), ("[input]", "input"), ("[temp]", "temp")):
        if name.endswith(suffix):
            name, base = name[: -len(suffix) - 1], ctx.paths.by_type(kind)
            break
    if base is None:
        base = default or ctx.paths.input
    path = os.path.abspath(os.path.join(base, name))
    if os.path.commonpath((os.path.abspath(base), path)) != os.path.abspath(base):
        raise ValueError(f"Invalid file path: {name!r}")
    return path


def annotated_exists(ctx, name: str) -> bool:
    try:
        return os.path.exists(annotated_path(ctx, name))
    except ValueError:
        return False


def png_metadata(ctx) -> PngInfo | None:
    if ctx.disable_metadata:
        return None
    info = PngInfo()
    if ctx.prompt is not None:
        info.add_text("prompt", json.dumps(ctx.prompt))
    if ctx.extra_pnginfo is not None:
        for key in ctx.extra_pnginfo:
            info.add_text(key, json.dumps(ctx.extra_pnginfo[key]))
    return info


def save_png_batch(ctx, images: np.ndarray, prefix: str, folder_type: str, compress_level: int) -> list[dict]:
    base = ctx.paths.by_type(folder_type)
    folder, stem, counter, subfolder = imaging.next_save_path(prefix, base, images[0].shape[1], images[0].shape[0])
    metadata = png_metadata(ctx)
    results = []
    for batch_number, image in enumerate(images):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}_.png"
        imaging.to_pil(image).save(os.path.join(folder, name), pnginfo=metadata, compress_level=compress_level)
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        counter += 1
    return results


def load_image_file(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images [B, H, W, 3], masks [B, H, W]) from an image file; frames of another size are skipped."""
    if not os.path.isfile(path):
        raise MediaFileNotFoundError(2, "No such file or directory", path)
    try:
        img = Image.open(path)
        img.load()
    except (OSError, Image.DecompressionBombError, SyntaxError, ValueError):
        raise InvalidDataError(1094995529, "Invalid data found when processing input", path) from None
    images, masks = [], []
    size = None
    for frame in ImageSequence.Iterator(img):
        frame = ImageOps.exif_transpose(frame)
        if frame.mode == "I":
            frame = frame.point(lambda v: v * (1 / 255))
        rgb = frame.convert("RGB")
        if size is None:
            size = rgb.size
        if rgb.size != size:
            continue
        images.append(np.asarray(rgb, dtype=np.float32) / 255.0)
        if "A" in frame.getbands():
            masks.append(1.0 - np.asarray(frame.getchannel("A"), dtype=np.float32) / 255.0)
        elif frame.mode == "P" and "transparency" in frame.info:
            masks.append(1.0 - np.asarray(frame.convert("RGBA").getchannel("A"), dtype=np.float32) / 255.0)
        else:
            masks.append(np.zeros((64, 64), dtype=np.float32))
    return np.stack(images), np.stack(masks)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read())
    return digest.digest().hex()


# --- images -----------------------------------------------------------------------------------
@node("EmptyImage")
class EmptyImage:
    def run(self, ctx, width, height, batch_size=1, color=0):
        planes = [
            np.full((batch_size, height, width, 1), ((color >> shift) & 0xFF) / 0xFF, dtype=np.float32)
            for shift in (16, 8, 0)
        ]
        return (np.concatenate(planes, axis=-1),)


@node("ImageBlur")
class ImageBlur:
    def run(self, ctx, image, blur_radius, sigma):
        return (imaging.blur(image, blur_radius, sigma),)


@node("ImageSharpen")
class ImageSharpen:
    def run(self, ctx, image, sharpen_radius, sigma, alpha):
        if sharpen_radius == 0:
            return (image,)
        blurred = imaging.blur(image, sharpen_radius, sigma)
        return (np.clip(image + alpha * (image - blurred), 0.0, 1.0).astype(np.float32),)


@node("ImageInvert")
class ImageInvert:
    def run(self, ctx, image):
        return (1.0 - image,)


@node("ImageScale")
class ImageScale:
    def run(self, ctx, image, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (image,)
        if width == 0:
            width = max(1, round(image.shape[2] * height / image.shape[1]))
        elif height == 0:
            height = max(1, round(image.shape[1] * width / image.shape[2]))
        return (imaging.resize_images(image, width, height, upscale_method, crop),)


@node("ImageScaleBy")
class ImageScaleBy:
    def run(self, ctx, image, upscale_method, scale_by):
        width = round(image.shape[2] * scale_by)
        height = round(image.shape[1] * scale_by)
        return (imaging.resize_images(image, width, height, upscale_method, "disabled"),)


@node("ImageBatch")
class ImageBatch:
    def run(self, ctx, image1, image2):
        if image1.shape[-1] != image2.shape[-1]:
            pad = lambda x: np.concatenate([x, np.ones(x.shape[:-1] + (1,), dtype=x.dtype)], axis=-1)  # noqa: E731
            if image1.shape[-1] > image2.shape[-1]:
                image2 = pad(image2)
            else:
                image1 = pad(image1)
        if image1.shape[1:] != image2.shape[1:]:
            image2 = imaging.resize_images(image2, image1.shape[2], image1.shape[1], "bilinear", "center")
        return (np.concatenate([image1, image2], axis=0),)


@node("RepeatImageBatch")
class RepeatImageBatch:
    def run(self, ctx, image, amount):
        return (np.tile(image, (amount, 1, 1, 1)),)


@node("ImageFromBatch")
class ImageFromBatch:
    def run(self, ctx, image, batch_index, length):
        if batch_index < 0:
            batch_index += image.shape[0]
        batch_index = max(0, min(image.shape[0] - 1, batch_index))
        length = min(image.shape[0] - batch_index, length)
        return (image[batch_index : batch_index + length].copy(),)


@node("ImageCrop")
class ImageCrop:
    def run(self, ctx, image, width, height, x, y):
        x = min(x, image.shape[2] - 1)
        y = min(y, image.shape[1] - 1)
        return (image[:, y : y + height, x : x + width, :].copy(),)


@node("ImageFlip")
class ImageFlip:
    def run(self, ctx, image, flip_method):
        axis = 1 if flip_method.startswith("x") else 2
        return (np.flip(image, axis=axis).copy(),)


@node("ImageRotate")
class ImageRotate:
    def run(self, ctx, image, rotation):
        turns = {"none": 0, "90 degrees": 3, "180 degrees": 2, "270 degrees": 1}[rotation]
        return (np.rot90(image, k=turns, axes=(1, 2)).copy(),)


@node("GetImageSize")
class GetImageSize:
    def run(self, ctx, image):
        batch, height, width = image.shape[0], image.shape[1], image.shape[2]
        ctx.send_text(f"width: {width}, height: {height}\n batch size: {batch}")
        return (width, height, batch)


# --- masks ------------------------------------------------------------------------------------
@node("MaskToImage")
class MaskToImage:
    def run(self, ctx, mask):
        planes = mask.reshape((-1, mask.shape[-2], mask.shape[-1]))
        return (np.repeat(planes[..., None], 3, axis=-1),)


@node("ImageToMask")
class ImageToMask:
    def run(self, ctx, image, channel):
        index = ["red", "green", "blue", "alpha"].index(channel)
        return (image[:, :, :, index].copy(),)


@node("SolidMask")
class SolidMask:
    def run(self, ctx, value, width, height):
        return (np.full((1, height, width), value, dtype=np.float32),)


@node("InvertMask")
class InvertMask:
    def run(self, ctx, mask):
        return (1.0 - mask,)


@node("JoinImageWithAlpha")
class JoinImageWithAlpha:
    def run(self, ctx, image, alpha):
        count = max(len(image), len(alpha))
        alpha = 1.0 - imaging.resize_planes(
            alpha.reshape((-1,) + alpha.shape[-2:]), image.shape[2], image.shape[1], "bilinear", "disabled"
        )
        out = [
            np.concatenate([image[i % len(image)][..., :3], alpha[i % len(alpha)][..., None]], axis=-1)
            for i in range(count)
        ]
        return (np.stack(out),)


@node("SplitImageWithAlpha")
class SplitImageWithAlpha:
    def run(self, ctx, image):
        rgb = image[..., :3]
        if image.shape[-1] > 3:
            alpha = 1.0 - image[..., 3]
        else:
            alpha = np.zeros(image.shape[:3], dtype=np.float32)
        return (rgb.copy(), alpha)


# --- loading and saving -----------------------------------------------------------------------
@node("LoadImage")
class LoadImage:
    def run(self, ctx, image):
        return load_image_file(annotated_path(ctx, image))

    @classmethod
    def is_changed(cls, ctx, image):
        return file_sha256(annotated_path(ctx, image))

    @classmethod
    def validate_inputs(cls, ctx, image):
        if not annotated_exists(ctx, image):
            return f"Invalid image file: {image}"
        return True


@node("LoadImageMask")
class LoadImageMask(LoadImage):
    def run(self, ctx, image, channel):
        images, mask = load_image_file(annotated_path(ctx, image))
        letter = channel[0].upper()
        if letter == "A":
            return (mask,)
        index = {"R": 0, "G": 1, "B": 2}.get(letter, 0)
        return (images[..., index].copy(),)

    @classmethod
    def is_changed(cls, ctx, image, channel=None):
        return file_sha256(annotated_path(ctx, image))


@node("SaveImage")
class SaveImage:
    def run(self, ctx, images, filename_prefix="ComfyUI"):
        results = save_png_batch(ctx, images, filename_prefix, "output", 4)
        return {"ui": {"images": results}, "result": (images,)}


@node("PreviewImage")
class PreviewImage:
    def __init__(self):
        self.prefix = "ComfyUI_temp_" + "".join(random.choice(TEMP_LETTERS) for _ in range(5))

    def run(self, ctx, images):
        results = save_png_batch(ctx, images, self.prefix, "temp", 1)
        return {"ui": {"images": results}, "result": (images,)}


@node("SaveImageWebsocket")
class SaveImageWebsocket:
    def run(self, ctx, images):
        bar = ProgressBar(ctx, images.shape[0])
        for step, image in enumerate(images):
            bar.update_absolute(step, images.shape[0], ("PNG", imaging.to_pil(image), None))
        return {}

    @classmethod
    def is_changed(cls, ctx, images=None):
        return time.time()


@node("SaveAnimatedWEBP")
class SaveAnimatedWEBP:
    METHODS = {"default": 4, "fastest": 0, "slowest": 6}

    def run(self, ctx, images, filename_prefix, fps, lossless, quality, method):
        folder, stem, counter, subfolder = imaging.next_save_path(
            filename_prefix, ctx.paths.output, images[0].shape[1], images[0].shape[0]
        )
        frames = [imaging.to_pil(i) for i in images]
        exif = frames[0].getexif()
        if not ctx.disable_metadata:
            exif[0x0110] = f"prompt:{json.dumps(ctx.prompt)}"
            if ctx.extra_pnginfo is not None:
                tag = 0x010F
                for key, value in ctx.extra_pnginfo.items():
                    exif[tag] = f"{key}:{json.dumps(value)}"
                    tag -= 1
        name = f"{stem}_{counter:05}_.webp"
        frames[0].save(
            os.path.join(folder, name),
            save_all=True,
            duration=int(1000.0 / fps),
            append_images=frames[1:],
            exif=exif,
            lossless=lossless,
            quality=quality,
            method=self.METHODS.get(method),
        )
        ui = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
        if len(images) > 1:
            ui["animated"] = (True,)
        return {"ui": ui, "result": (images,)}


@node("SaveAnimatedPNG")
class SaveAnimatedPNG:
    def run(self, ctx, images, filename_prefix, fps, compress_level):
        folder, stem, counter, subfolder = imaging.next_save_path(
            filename_prefix, ctx.paths.output, images[0].shape[1], images[0].shape[0]
        )
        frames = [imaging.to_pil(i) for i in images]
        info = None
        if not ctx.disable_metadata:
            info = PngInfo()
            if ctx.prompt:
                info.add(b"comf", b"prompt\0" + json.dumps(ctx.prompt).encode("latin-1", "strict"), after_idat=True)
            for key, value in (ctx.extra_pnginfo or {}).items():
                info.add(
                    b"comf",
                    key.encode("latin-1") + b"\0" + json.dumps(value).encode("latin-1", "strict"),
                    after_idat=True,
                )
        name = f"{stem}_{counter:05}_.png"
        frames[0].save(
            os.path.join(folder, name),
            pnginfo=info,
            compress_level=compress_level,
            save_all=True,
            duration=int(1000.0 / fps),
            append_images=frames[1:],
        )
        ui = {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}]}
        if len(images) > 1:
            ui["animated"] = (True,)
        return {"ui": ui, "result": (images,)}


# --- latents ----------------------------------------------------------------------------------
@node("EmptyLatentImage")
class EmptyLatentImage:
    def run(self, ctx, width, height, batch_size=1):
        return (
            {
                "samples": np.zeros((batch_size, 4, height // 8, width // 8), dtype=np.float32),
                "downscale_ratio_spacial": 8,
            },
        )


@node("LatentUpscale")
class LatentUpscale:
    def run(self, ctx, samples, upscale_method, width, height, crop):
        if width == 0 and height == 0:
            return (samples,)
        latent = samples["samples"]
        if width == 0:
            height = max(64, height)
            width = max(64, round(latent.shape[-1] * height / latent.shape[-2]))
        elif height == 0:
            width = max(64, width)
            height = max(64, round(latent.shape[-2] * width / latent.shape[-1]))
        else:
            width, height = max(64, width), max(64, height)
        out = dict(samples)
        out["samples"] = imaging.resize_latent(latent, width // 8, height // 8, upscale_method, crop)
        return (out,)


@node("LatentUpscaleBy")
class LatentUpscaleBy:
    def run(self, ctx, samples, upscale_method, scale_by):
        latent = samples["samples"]
        out = dict(samples)
        out["samples"] = imaging.resize_latent(
            latent, round(latent.shape[-1] * scale_by), round(latent.shape[-2] * scale_by), upscale_method
        )
        return (out,)


@node("LatentFromBatch")
class LatentFromBatch:
    def run(self, ctx, samples, batch_index, length):
        latent = samples["samples"]
        batch_index = min(latent.shape[0] - 1, batch_index)
        length = min(latent.shape[0] - batch_index, length)
        out = dict(samples)
        out["samples"] = latent[batch_index : batch_index + length].copy()
        return (out,)


@node("RepeatLatentBatch")
class RepeatLatentBatch:
    def run(self, ctx, samples, amount):
        out = dict(samples)
        out["samples"] = np.tile(samples["samples"], (amount, 1, 1, 1))
        return (out,)


@node("SaveLatent")
class SaveLatent:
    def run(self, ctx, samples, filename_prefix="ComfyUI"):
        folder, stem, counter, subfolder = imaging.next_save_path(filename_prefix, ctx.paths.output)
        metadata = None
        if not ctx.disable_metadata:
            metadata = {"prompt": json.dumps(ctx.prompt) if ctx.prompt is not None else ""}
            for key in ctx.extra_pnginfo or {}:
                metadata[key] = json.dumps(ctx.extra_pnginfo[key])
        name = f"{stem}_{counter:05}_.latent"
        imaging.write_safetensors(
            os.path.join(folder, name),
            {
                "latent_tensor": np.ascontiguousarray(samples["samples"], dtype=np.float32),
                "latent_format_version_0": np.zeros((0,), dtype=np.float32),
            },
            metadata,
        )
        return {"ui": {"latents": [{"filename": name, "subfolder": subfolder, "type": "output"}]}, "result": (samples,)}


# --- text and primitives ----------------------------------------------------------------------
@node("PreviewAny")
class PreviewAny:
    def run(self, ctx, source=None):
        value = "None"
        if isinstance(source, str):
            value = source
        elif isinstance(source, (int, float, bool)):
            value = str(source)
        elif source is not None:
            try:
                value = json.dumps(source, indent=4, ensure_ascii=False)
            except Exception:
                try:
                    value = str(source)
                except Exception:
                    value = "source exists, but could not be serialized."
        return {"ui": {"text": (value,)}, "result": (value,)}


def _primitive(name: str):
    @node(name)
    class Primitive:
        def run(self, ctx, value):
            return (value,)

    Primitive.__name__ = name
    return Primitive


for _name in ("PrimitiveInt", "PrimitiveFloat", "PrimitiveString", "PrimitiveStringMultiline", "PrimitiveBoolean"):
    _primitive(_name)


@node("StringConcatenate")
class StringConcatenate:
    def run(self, ctx, string_a, string_b, delimiter=""):
        return (delimiter.join((string_a, string_b)),)


@node("StringLength")
class StringLength:
    def run(self, ctx, string):
        return (len(string),)
