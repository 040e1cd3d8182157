"""Write a tiny, structurally real Stable Diffusion 1.x checkpoint filled with seeded random weights.

    python make_checkpoint.py DEST_DIR [--comfyui-path PATH] [--seed N]

writes DEST_DIR/checkpoints/tiny-sd15.safetensors and prints one line, `<sha256>  <size>  <path>`.

Contract:

* ComfyUI detects the file as SD1.5 from the UNet's keys and shapes (model_channels 320,
  context_dim 768, no linear projections in the transformers), so CheckpointLoaderSimple,
  CLIPTextEncode, KSampler, VAEDecode and VAEEncode all run it as they run the real one. Only the
  UNet's depth is shrunk (two levels, one res block each, attention on the first level and in the
  middle): about 80 M parameters instead of 860 M. The CLIP-L text encoder and the VAE are full
  size. The file is about 550 MiB in fp16 and builds in seconds on a CPU.
* The state dicts come from ComfyUI's own model classes at run time (the ComfyUI folder is given
  with --comfyui-path or COMFYUI_PATH), so nothing of ComfyUI is copied here and no weights are
  committed. It runs with any Python that has torch and safetensors: ComfyUI's own interpreter.
* The weights are random (seeded: the same seed and torch give the same file). Images come out as
  noise; the point is the real code path, its shapes, its memory and its timings.
* The file is written next to its final name and renamed into place: a reader never sees half.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

NAME = "tiny-sd15.safetensors"

# ComfyUI's SD15 UNet, shrunk in depth only: the keys ComfyUI's detection reads keep SD1.5's shapes.
UNET = {
    "image_size": 32,
    "in_channels": 4,
    "out_channels": 4,
    "model_channels": 320,
    "num_res_blocks": [1, 1],
    "channel_mult": [1, 2],
    "transformer_depth": [1, 0],
    "transformer_depth_middle": 1,
    "transformer_depth_output": [1, 1, 0, 0],
    "use_spatial_transformer": True,
    "legacy": False,
    "context_dim": 768,
    "num_heads": 8,
    "use_linear_in_transformer": False,
    "adm_in_channels": None,
    "use_checkpoint": False,
}
# The SD 1.x autoencoder (the `first_stage_model`), as ComfyUI builds it for such checkpoints.
VAE = {
    "double_z": True,
    "z_channels": 4,
    "resolution": 256,
    "in_channels": 3,
    "out_ch": 3,
    "ch": 128,
    "ch_mult": [1, 2, 4, 4],
    "num_res_blocks": 2,
    "attn_resolutions": [],
    "dropout": 0.0,
}


def _import_comfy(comfyui_path: Path):  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(comfyui_path))
    # No device work while building weights: a GPU machine builds the same file as a CPU one.
    import comfy.cli_args

    comfy.cli_args.args.cpu = True
    import comfy.clip_model
    import comfy.ldm.models.autoencoder
    import comfy.ldm.modules.diffusionmodules.openaimodel
    import comfy.ops

    return comfy


def state_dict(comfyui_path: Path, seed: int) -> dict:  # type: ignore[type-arg]
    import torch

    comfy = _import_comfy(comfyui_path)
    ops = comfy.ops.disable_weight_init  # no init work: every tensor is filled below
    clip_config = json.loads((comfyui_path / "comfy" / "sd1_clip_config.json").read_text())
    parts = {
        "model.diffusion_model.": comfy.ldm.modules.diffusionmodules.openaimodel.UNetModel(
            **UNET, dtype=torch.float32, device="cpu", operations=ops
        ),
        "cond_stage_model.transformer.": comfy.clip_model.CLIPTextModel(clip_config, torch.float32, "cpu", ops),
        "first_stage_model.": comfy.ldm.models.autoencoder.AutoencoderKL(ddconfig=VAE, embed_dim=4),
    }
    generator = torch.Generator().manual_seed(seed)
    out = {}
    for prefix, module in parts.items():
        for key, tensor in sorted(module.state_dict().items()):
            if key == "text_projection.weight":
                continue  # SD 1.x checkpoints carry no text projection; ComfyUI uses the identity
            if not tensor.is_floating_point():
                out[prefix + key] = tensor.contiguous()
                continue
            if key.endswith("weight") and tensor.dim() >= 2:
                # Scaled to the fan-in so activations stay finite through every layer.
                fan_in = math.prod(tensor.shape[1:]) if "embedding" not in key else 50
                value = torch.randn(tensor.shape, generator=generator) / math.sqrt(fan_in)
            elif key.endswith("weight"):
                value = torch.ones(tensor.shape)  # norms
            else:
                value = torch.zeros(tensor.shape)  # biases
            out[prefix + key] = value.to(torch.float16).contiguous()
    return out


def build(dest_dir: Path, comfyui_path: Path, seed: int = 0) -> tuple[Path, str, int]:
    """Write the checkpoint under dest_dir/checkpoints; return its path, sha256 and size."""
    from safetensors.torch import save_file

    target = dest_dir / "checkpoints" / NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{NAME}.{os.getpid()}.part")
    save_file(
        state_dict(comfyui_path, seed),
        str(partial),
        metadata={"comment": f"comfyrun tiny SD1.5 test checkpoint, random weights, seed {seed}"},
    )
    digest = hashlib.sha256()
    with partial.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    os.replace(partial, target)
    return target, digest.hexdigest(), target.stat().st_size


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest_dir", type=Path, help="writes DEST_DIR/checkpoints/" + NAME)
    parser.add_argument(
        "--comfyui-path",
        type=Path,
        default=os.environ.get("COMFYUI_PATH"),
        help="ComfyUI's source folder, whose model classes build the weights (default: $COMFYUI_PATH)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.comfyui_path is None or not (args.comfyui_path / "comfy").is_dir():
        parser.error("give ComfyUI's source folder with --comfyui-path or COMFYUI_PATH")
    path, sha256, size = build(args.dest_dir, args.comfyui_path.resolve(), args.seed)
    print(f"{sha256}  {size}  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
