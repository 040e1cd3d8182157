"""Noise, audio and video nodes, with the same `executed` output shapes as ComfyUI.

Audio is {"waveform": [B, C, N] float32, "sample_rate": int}; a VIDEO is a `Video` (frames,
frame rate, optional audio). Real codecs come from PyAV when it is installed; otherwise FLAC
and MP4 are written by `media` (MP4 then holds JPEG frames and no audio track), and the nodes
that need another codec (MP3, Opus, WEBM) fail with an execution error saying so.
"""

from __future__ import annotations

import json
import math
import os
import random
from fractions import Fraction

import numpy as np

from . import imaging, media
from .nodes_core import InvalidDataError, annotated_exists, annotated_path, file_sha256, load_image_file, node

try:  # PyAV, when installed: the codecs ComfyUI itself uses
    import av
except ImportError:  # pragma: no cover - depends on the machine
    av = None


def _need_av(what: str) -> None:
    if av is None:
        raise RuntimeError(f"{what} needs PyAV (pip install av) in the ComfyUI stand-in")


@node("ImageAddNoise")
class ImageAddNoise:
    def run(self, ctx, image, seed, strength):
        noise = np.random.default_rng(seed).standard_normal(image.shape, dtype=np.float32)
        return (np.clip(image + strength * noise, 0.0, 1.0).astype(np.float32),)


# --- audio ------------------------------------------------------------------------------------
def _metadata(ctx) -> dict[str, str]:
    if ctx.disable_metadata:
        return {}
    out = {}
    if ctx.prompt is not None:
        out["prompt"] = json.dumps(ctx.prompt)
    for key, value in (ctx.extra_pnginfo or {}).items():
        out[key] = json.dumps(value)
    return out


def load_audio(path: str) -> tuple[np.ndarray, int]:
    if av is not None:
        try:
            with av.open(path) as container:
                if not container.streams.audio:
                    raise ValueError("No audio stream found in the file.")
                stream = container.streams.audio[0]
                rate, channels = stream.codec_context.sample_rate, stream.channels
                chunks = []
                for frame in container.decode(streams=stream.index):
                    data = frame.to_ndarray()
                    if data.shape[0] != channels:
                        data = data.reshape(-1, channels).T
                    chunks.append(data)
            if not chunks:
                raise ValueError("No audio frames decoded.")
            data = np.concatenate(chunks, axis=1)
            if data.dtype == np.int16:
                data = data.astype(np.float32) / 2**15
            elif data.dtype == np.int32:
                data = data.astype(np.float32) / 2**31
            return data.astype(np.float32), rate
        except av.error.InvalidDataError:
            raise
    try:
        return media.read_wav(path)
    except Exception:
        raise InvalidDataError(1094995529, "Invalid data found when processing input", path) from None


def save_audio(ctx, audio: dict, prefix: str, folder_type: str, fmt: str = "flac", quality: str = "128k") -> list:
    if fmt not in ("flac", "mp3", "opus"):
        raise ValueError(f"Unsupported audio format: {fmt!r}")
    if fmt != "flac":
        _need_av(f"Saving {fmt} audio")
    folder, stem, counter, subfolder = imaging.next_save_path(prefix, ctx.paths.by_type(folder_type))
    metadata = _metadata(ctx)
    results = []
    for batch_number, waveform in enumerate(np.asarray(audio["waveform"], dtype=np.float32)):
        name = f"{stem.replace('%batch_num%', str(batch_number))}_{counter:05}.{fmt}"
        path = os.path.join(folder, name)
        rate = int(audio["sample_rate"])
        if av is None:
            media.write_flac(path, waveform, rate, metadata)
        else:
            _encode_audio_av(path, waveform, rate, fmt, quality, metadata)
        results.append({"filename": name, "subfolder": subfolder, "type": folder_type})
        counter += 1
    return results


def _encode_audio_av(path: str, waveform: np.ndarray, rate: int, fmt: str, quality: str, metadata: dict) -> None:
    if fmt == "opus":
        rates = [8000, 12000, 16000, 24000, 48000]
        target = 48000 if rate > 48000 else next((r for r in rates if r >= rate), 48000)
        if target != rate:
            positions = np.linspace(0, waveform.shape[1] - 1, int(round(waveform.shape[1] * target / rate)))
            waveform = np.stack([np.interp(positions, np.arange(waveform.shape[1]), ch) for ch in waveform])
            rate = target
    layout = "mono" if waveform.shape[0] == 1 else "stereo"
    with av.open(path, mode="w", format=fmt) as container:
        for key, value in metadata.items():
            container.metadata[key] = value
        codec = {"opus": "libopus", "mp3": "libmp3lame", "flac": "flac"}[fmt]
        stream = container.add_stream(codec, rate=rate, layout=layout)
        bitrates = {"64k": 64000, "96k": 96000, "128k": 128000, "192k": 192000, "320k": 320000}
        if fmt in ("opus", "mp3") and quality in bitrates:
            stream.bit_rate = bitrates[quality]
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(waveform.T.reshape(1, -1), dtype=np.float32), format="flt", layout=layout
        )
        frame.sample_rate = rate
        frame.pts = 0
        container.mux(stream.encode(frame))
        container.mux(stream.encode(None))


@node("EmptyAudio")
class EmptyAudio:
    def run(self, ctx, duration, sample_rate, channels):
        samples = int(round(duration * sample_rate))
        return ({"waveform": np.zeros((1, channels, samples), dtype=np.float32), "sample_rate": sample_rate},)


@node("LoadAudio")
class LoadAudio:
    def run(self, ctx, audio):
        waveform, rate = load_audio(annotated_path(ctx, audio))
        return ({"waveform": waveform[None], "sample_rate": rate},)

    @classmethod
    def is_changed(cls, ctx, audio):
        return file_sha256(annotated_path(ctx, audio))

    @classmethod
    def validate_inputs(cls, ctx, audio):
        if not annotated_exists(ctx, audio):
            return f"Invalid audio file: {audio}"
        return True


@node("SaveAudio")
class SaveAudio:
    def run(self, ctx, audio, filename_prefix="ComfyUI"):
        return {"ui": {"audio": save_audio(ctx, audio, filename_prefix, "output", "flac")}, "result": (audio,)}


@node("SaveAudioMP3")
class SaveAudioMP3:
    def run(self, ctx, audio, filename_prefix="ComfyUI", quality="128k"):
        return {"ui": {"audio": save_audio(ctx, audio, filename_prefix, "output", "mp3", quality)}, "result": (audio,)}


@node("SaveAudioOpus")
class SaveAudioOpus:
    def run(self, ctx, audio, filename_prefix="ComfyUI", quality="128k"):
        return {"ui": {"audio": save_audio(ctx, audio, filename_prefix, "output", "opus", quality)}, "result": (audio,)}


@node("SaveAudioAdvanced")
class SaveAudioAdvanced:
    def run(self, ctx, audio, filename_prefix="ComfyUI", format="flac", **options):
        quality = options.get("format.quality", "128k")
        return {"ui": {"audio": save_audio(ctx, audio, filename_prefix, "output", format, quality)}, "result": (audio,)}


@node("PreviewAudio")
class PreviewAudio:
    def run(self, ctx, audio):
        prefix = "ComfyUI_temp_" + "".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(5))
        return {"ui": {"audio": save_audio(ctx, audio, prefix, "temp", "flac")}, "result": (audio,)}


# --- video ------------------------------------------------------------------------------------
class Video:
    def __init__(self, images: np.ndarray, frame_rate: Fraction, audio: dict | None = None, bit_depth: int = 8):
        self.images = images
        self.frame_rate = frame_rate
        self.audio = audio
        self.bit_depth = bit_depth

    @property
    def nbytes(self) -> int:
        return int(self.images.nbytes)

    def __str__(self) -> str:
        return (
            f"<Video {self.images.shape[2]}x{self.images.shape[1]} {len(self.images)} frames @{float(self.frame_rate)}>"
        )

    def save(self, path: str, metadata: dict | None, crf=None) -> None:
        if av is None:
            media.write_mp4_mjpeg(path, self.images, float(self.frame_rate))
            return
        rate = Fraction(round(self.frame_rate * 1000), 1000)
        pix_fmt = "yuv420p10le" if self.bit_depth >= 10 else "yuv420p"
        with av.open(path, mode="w", options={"movflags": "use_metadata_tags"}) as output:
            for key, value in (metadata or {}).items():
                output.metadata[key] = json.dumps(value)
            stream = output.add_stream("h264", rate=rate)
            stream.width, stream.height = self.images.shape[2], self.images.shape[1]
            stream.pix_fmt = pix_fmt
            if crf is not None:
                stream.options = {"crf": str(crf)}
            audio_stream = waveform = layout = None
            if self.audio:
                sample_rate = int(self.audio["sample_rate"])
                waveform = np.asarray(self.audio["waveform"])[0, :, : math.ceil(sample_rate / rate * len(self.images))]
                layout = {1: "mono", 2: "stereo", 6: "5.1"}.get(waveform.shape[0], "stereo")
                audio_stream = output.add_stream("aac", rate=sample_rate, layout=layout)
            for image in self.images:
                frame = av.VideoFrame.from_ndarray(
                    np.clip(image[..., :3] * 255, 0, 255).astype(np.uint8), format="rgb24"
                )
                output.mux(stream.encode(frame.reformat(format=pix_fmt)))
            output.mux(stream.encode(None))
            if audio_stream is not None:
                frame = av.AudioFrame.from_ndarray(
                    np.ascontiguousarray(waveform, dtype=np.float32), format="fltp", layout=layout
                )
                frame.sample_rate = int(self.audio["sample_rate"])
                frame.pts = 0
                output.mux(audio_stream.encode(frame))
                output.mux(audio_stream.encode(None))


@node("CreateVideo")
class CreateVideo:
    def run(self, ctx, images, fps, audio=None, bit_depth=8):
        return (Video(images, Fraction(fps), audio, bit_depth),)


@node("GetVideoComponents")
class GetVideoComponents:
    def run(self, ctx, video):
        return (video.images, video.audio, float(video.frame_rate), video.bit_depth)


@node("SaveVideo")
class SaveVideo:
    def run(self, ctx, video, filename_prefix="video/ComfyUI", format="auto", codec="auto", **options):
        folder, stem, counter, subfolder = imaging.next_save_path(
            filename_prefix, ctx.paths.output, video.images.shape[2], video.images.shape[1]
        )
        metadata = None
        if not ctx.disable_metadata:
            metadata = dict(ctx.extra_pnginfo or {})
            if ctx.prompt is not None:
                metadata["prompt"] = ctx.prompt
            metadata = metadata or None
        name = f"{stem}_{counter:05}_.mp4"
        video.save(os.path.join(folder, name), metadata, crf=options.get("codec.encoding.crf"))
        return {
            "ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": (True,)},
            "result": (video,),
        }


@node("SaveWEBM")
class SaveWEBM:
    def run(self, ctx, images, filename_prefix, codec, fps, crf):
        _need_av("SaveWEBM")
        folder, stem, counter, subfolder = imaging.next_save_path(
            filename_prefix, ctx.paths.output, images[0].shape[1], images[0].shape[0]
        )
        name = f"{stem}_{counter:05}_.webm"
        with av.open(os.path.join(folder, name), mode="w") as container:
            for key, value in _metadata(ctx).items():
                container.metadata[key] = value
            stream = container.add_stream(
                {"vp9": "libvpx-vp9", "av1": "libsvtav1"}[codec], rate=Fraction(round(fps * 1000), 1000)
            )
            stream.width, stream.height = images.shape[-2], images.shape[-3]
            stream.pix_fmt = "yuv420p10le" if codec == "av1" else "yuv420p"
            stream.bit_rate = 0
            stream.options = {"crf": str(crf)}
            for image in images:
                frame = av.VideoFrame.from_ndarray(
                    np.clip(image[..., :3] * 255, 0, 255).astype(np.uint8), format="rgb24"
                )
                container.mux(stream.encode(frame))
            container.mux(stream.encode(None))
        return {
            "ui": {"images": [{"filename": name, "subfolder": subfolder, "type": "output"}], "animated": (True,)},
            "result": (images,),
        }


@node("LoadVideo")
class LoadVideo:
    def run(self, ctx, file):
        path = annotated_path(ctx, file)
        if av is None:
            images, _ = load_image_file(path)  # animated images only, without PyAV
            return (Video(images, Fraction(24)),)
        frames, rate = [], Fraction(24)
        with av.open(path) as container:
            stream = container.streams.video[0]
            rate = stream.average_rate or rate
            for frame in container.decode(stream):
                frames.append(frame.to_ndarray(format="rgb24").astype(np.float32) / 255.0)
        return (Video(np.stack(frames), Fraction(rate)),)

    @classmethod
    def is_changed(cls, ctx, file):
        return file_sha256(annotated_path(ctx, file))

    @classmethod
    def validate_inputs(cls, ctx, file):
        if not annotated_exists(ctx, file):
            return f"Invalid video file: {file}"
        return True


@node("Preview3D")
class Preview3D:
    """ComfyUI 0.33.0's: a path string is shown as given, and `camera_info` goes into the ui as
    it came (a dict literal included), beside it."""

    def run(self, ctx, model_file, camera_info=None, bg_image=None):
        return {"ui": {"result": [model_file, camera_info, None]}, "result": ()}
