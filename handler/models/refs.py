"""Models named by URL in a workflow: which inputs load which model folder, and the URL forms.

A model-loading input (`CheckpointLoaderSimple.ckpt_name`, `LoraLoader.lora_name`, ...) may name
a file by URL instead of by file name:

* `https://host/path/file.safetensors` (`http://` outside cloud mode), fetched under the input
  URL rules (handler/net/urlguard.py);
* `gs://bucket/object`, read with the service's credentials from buckets URL_ALLOWLIST names;
* `hf://owner/repo/path/file.safetensors` (optionally `hf://owner/repo@revision/path`), which is
  `https://huggingface.co/owner/repo/resolve/<revision>/path`; both forms get HF_TOKEN;
* a Civitai model version, `https://civitai.com/api/download/models/<id>[?query]` or
  `civitai://<id>`, only where CIVITAI_MODELS allows it (a 400 naming it otherwise): fetched from
  CIVITAI_URL with CIVITAI_TOKEN, named `civitai-<id>.safetensors` unless `filename` says;
* or an object `{"url": ..., "sha256": ..., "filename": ...}`: the file's sha256 is checked
  before use, and `filename` names it when the URL's last segment is no model file name.

Which folder an input loads from is declared here (`LOADERS`, read from ComfyUI's own loader
nodes), with a fallback by input name (`BY_INPUT_NAME`) for the custom nodes that follow the
core's naming, taken only where the catalogue shows the input as a list of files. A plain file
name is left alone; nothing here touches the network.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from handler.config.cloud import CloudSettings
from handler.config.models import ModelSettings
from handler.config.urls import UrlSettings
from handler.errors import BadRequest

# (class_type, input) -> model folder, from ComfyUI 0.33's loader nodes.
LOADERS: dict[tuple[str, str], str] = {
    ("CheckpointLoaderSimple", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "ckpt_name"): "checkpoints",
    ("CheckpointLoader", "config_name"): "configs",
    ("unCLIPCheckpointLoader", "ckpt_name"): "checkpoints",
    ("ImageOnlyCheckpointLoader", "ckpt_name"): "checkpoints",
    ("LoraLoader", "lora_name"): "loras",
    ("LoraLoaderModelOnly", "lora_name"): "loras",
    ("VAELoader", "vae_name"): "vae",
    ("ControlNetLoader", "control_net_name"): "controlnet",
    ("DiffControlNetLoader", "control_net_name"): "controlnet",
    ("UNETLoader", "unet_name"): "diffusion_models",
    ("CLIPLoader", "clip_name"): "text_encoders",
    ("DualCLIPLoader", "clip_name1"): "text_encoders",
    ("DualCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name1"): "text_encoders",
    ("TripleCLIPLoader", "clip_name2"): "text_encoders",
    ("TripleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name1"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name2"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name3"): "text_encoders",
    ("QuadrupleCLIPLoader", "clip_name4"): "text_encoders",
    ("CLIPVisionLoader", "clip_name"): "clip_vision",
    ("StyleModelLoader", "style_model_name"): "style_models",
    ("GLIGENLoader", "gligen_name"): "gligen",
    ("UpscaleModelLoader", "model_name"): "upscale_models",
    ("HypernetworkLoader", "hypernetwork_name"): "hypernetworks",
    ("PhotoMakerLoader", "photomaker_model_name"): "photomaker",
    ("ModelPatchLoader", "name"): "model_patches",
}
# Input names that mean one folder on any node whose catalogue entry lists files for them.
BY_INPUT_NAME: dict[str, str] = {
    "ckpt_name": "checkpoints",
    "lora_name": "loras",
    "vae_name": "vae",
    "control_net_name": "controlnet",
    "unet_name": "diffusion_models",
    "style_model_name": "style_models",
    "gligen_name": "gligen",
    "hypernetwork_name": "hypernetworks",
}
# File names ComfyUI lists in a model folder (folder_paths.supported_pt_extensions) and configs.
MODEL_EXTENSIONS = (".safetensors", ".sft", ".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl", ".gguf", ".yaml")
# Loaded with torch.load (pickle): refused by URL unless MODEL_URLS_SAFETENSORS_ONLY is false.
PICKLED_EXTENSIONS = (".ckpt", ".pt", ".pt2", ".pth", ".bin", ".pkl")
SCHEMES = ("https://", "http://", "gs://", "hf://", "civitai://")
HF_HOST = "huggingface.co"
CIVITAI = "https://civitai.com"
CIVITAI_DOWNLOAD = "/api/download/models/"
_CIVITAI_ID = re.compile(r"^[0-9]{1,12}$")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True, kw_only=True)
class ModelRef:
    """One model a request names by URL: what to fetch, into which folder, checked how."""

    url: str  # as fetched: https://, http:// or gs:// (hf:// is rewritten to its resolve URL)
    folder: str  # ComfyUI's model folder (checkpoints, loras, ...)
    filename: str  # the file's name in the cache (a model file extension)
    sha256: str | None = None  # lowercase hex; checked before use when given
    # A Civitai model: the download path and query under CIVITAI_URL (`url` is its civitai.com form).
    civitai: str | None = None

    @property
    def key(self) -> str:
        """The cache's name for this file: one per (folder, URL)."""
        return hashlib.sha256(f"{self.folder}\n{self.url}".encode()).hexdigest()[:24]

    @property
    def is_huggingface(self) -> bool:
        return (urllib.parse.urlsplit(self.url).hostname or "").lower() == HF_HOST


@dataclass(frozen=True, kw_only=True)
class Use:
    """Where a workflow names a model by URL: node, input, and the model."""

    node_id: str
    input: str
    ref: ModelRef


def looks_like_url(value: Any) -> bool:
    return (isinstance(value, str) and value.startswith(SCHEMES)) or (isinstance(value, Mapping) and "url" in value)


def hf_to_https(url: str) -> str:
    """`hf://owner/repo[@revision]/path` as its Hugging Face resolve URL."""
    rest = url[len("hf://") :]
    parts = rest.split("/")
    if len(parts) < 3 or not all(parts):
        raise BadRequest(f"{url[:200]!r} is not hf://owner/repo/path/to/file")
    owner, repo, path = parts[0], parts[1], "/".join(parts[2:])
    repo, _, revision = repo.partition("@")
    quoted = urllib.parse.quote(path, safe="/")
    return f"https://{HF_HOST}/{owner}/{repo}/resolve/{urllib.parse.quote(revision or 'main', safe='')}/{quoted}"


def civitai_path(url: str, where: str) -> str | None:
    """The download path (and query) of a Civitai model reference, or None when `url` is none."""
    if url.startswith("civitai://"):
        ident = url[len("civitai://") :]
        if not _CIVITAI_ID.match(ident):
            raise BadRequest(f"{where}: {url[:200]!r} is not civitai://<model version id> (digits)")
        return CIVITAI_DOWNLOAD + ident
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "https" or (parts.hostname or "").lower() not in ("civitai.com", "www.civitai.com"):
        return None
    if not parts.path.startswith(CIVITAI_DOWNLOAD) or not _CIVITAI_ID.match(parts.path[len(CIVITAI_DOWNLOAD) :]):
        raise BadRequest(f"{where}: a Civitai model is https://civitai.com/api/download/models/<model version id>")
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _file_name(url: str, given: Any, where: str) -> str:
    if given is not None:
        if not isinstance(given, str) or not given:
            raise BadRequest(f"{where}.filename must be a non-empty string")
        name = given
    else:
        name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1])
    name = _SAFE_NAME.sub("_", name).lstrip("._")[-120:]
    if not name.lower().endswith(MODEL_EXTENSIONS):
        raise BadRequest(
            f"{where}: the URL does not end in a model file name ({', '.join(MODEL_EXTENSIONS)}); "
            'send {"url": ..., "filename": "name.safetensors"} to name the file'
        )
    return name


def parse_ref(value: Any, folder: str, where: str) -> ModelRef:
    """The model a string URL or a `{"url", "sha256", "filename"}` object names (a 400 when neither)."""
    sha256 = filename = None
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - {"url", "sha256", "filename"})
        if unknown:
            raise BadRequest(f"{where} has unknown fields {unknown}; a model is {{url, sha256, filename}}")
        sha256, filename, value = value.get("sha256"), value.get("filename"), value.get("url")
        if sha256 is not None and (not isinstance(sha256, str) or not _HEX64.match(sha256.lower())):
            raise BadRequest(f"{where}.sha256 must be 64 hexadecimal digits")
        sha256 = sha256.lower() if isinstance(sha256, str) else None
    if not isinstance(value, str) or not value.startswith(SCHEMES) or len(value) > 4096:
        raise BadRequest(
            f"{where}: a model URL must start with https://, gs://, hf:// or civitai:// (at most 4096 characters)"
        )
    civitai = civitai_path(value, where)
    if civitai is not None:
        url = CIVITAI + civitai
        ident = civitai[len(CIVITAI_DOWNLOAD) :].split("?", 1)[0]
        name = _file_name(url, filename if filename is not None else f"civitai-{ident}.safetensors", where)
        return ModelRef(url=url, folder=folder, filename=name, sha256=sha256, civitai=civitai)
    url = hf_to_https(value) if value.startswith("hf://") else value
    return ModelRef(url=url, folder=folder, filename=_file_name(url, filename, where), sha256=sha256)


def check_civitai(ref: ModelRef, models: ModelSettings, where: str) -> None:
    """A 400 naming CIVITAI_MODELS when `ref` is a Civitai model and the operator has not allowed them."""
    if ref.civitai is not None and not models.civitai_models:
        raise BadRequest(
            f"{where} names a Civitai model; this service does not fetch from Civitai "
            "(the operator's setting CIVITAI_MODELS is off)"
        )


def _lists_files(object_info: Mapping[str, Any], class_type: str, name: str) -> bool | None:
    """Whether the catalogue shows this input as a list of choices; None when it does not know."""
    node = object_info.get(class_type)
    if not isinstance(node, Mapping):
        return None
    inputs = node.get("input") or {}
    for section in ("required", "optional"):
        spec = (inputs.get(section) or {}).get(name)
        if isinstance(spec, list) and spec:
            return isinstance(spec[0], list) or spec[0] == "COMBO"
    return False


def folder_of(class_type: str, name: str, object_info: Mapping[str, Any] | None) -> str | None:
    """The model folder `class_type.name` loads from, or None when it loads no model file."""
    declared = LOADERS.get((class_type, name))
    if declared is not None:
        return declared
    by_name = BY_INPUT_NAME.get(name)
    if by_name is not None and object_info and _lists_files(object_info, class_type, name):
        return by_name
    return None


def find_uses(workflow: Mapping[str, Any], object_info: Mapping[str, Any] | None) -> list[Use]:
    """Every model-loading input that names a model by URL (a 400 for a URL where no model loads)."""
    uses = []
    for node_id, node in workflow.items():
        class_type = node.get("class_type", "")
        for name, value in (node.get("inputs") or {}).items():
            if not looks_like_url(value):
                continue
            where = f"workflow node {node_id!r} input {name!r}"
            folder = folder_of(class_type, name, object_info)
            if folder is None:
                if isinstance(value, Mapping):  # a string URL may be a node's own (a prompt, an API node)
                    raise BadRequest(f"{where}: {class_type} loads no model file from there, so no model URL")
                continue
            uses.append(Use(node_id=str(node_id), input=name, ref=parse_ref(value, folder, where)))
    return uses


class PickledModelRefused(BadRequest):
    code = "model_format_refused"


def check_model_urls(
    workflow: Mapping[str, Any],
    *,
    models: ModelSettings,
    urls: UrlSettings,
    cloud: CloudSettings,
    object_info: Mapping[str, Any] | None = None,
) -> None:
    """What can be known before anything is fetched: the forms, the URL rules (SSRF, allowlisted
    buckets), whether this service takes model URLs at all (MODEL_URLS) and pickled formats
    (MODEL_URLS_SAFETENSORS_ONLY). A 400 otherwise."""
    uses = find_uses(workflow, object_info)
    if not uses:
        return
    if not models.model_urls:
        raise BadRequest(f"workflow node {uses[0].node_id!r} names a model by URL; this service does not fetch models")
    for use in uses:
        if models.model_urls_safetensors_only and use.ref.filename.lower().endswith(PICKLED_EXTENSIONS):
            raise PickledModelRefused(
                f"workflow node {use.node_id!r} input {use.input!r}: {use.ref.filename!r} is a pickled model format, "
                "which can run code when it is loaded; models named by URL must be .safetensors (or .sft, .gguf, "
                ".yaml) on this service (MODEL_URLS_SAFETENSORS_ONLY)"
            )
    for use in uses:
        check_ref(use.ref, f"workflow node {use.node_id!r} input {use.input!r}", models=models, urls=urls, cloud=cloud)


def check_ref(ref: ModelRef, purpose: str, *, models: ModelSettings, urls: UrlSettings, cloud: CloudSettings) -> None:
    """The URL rules for one model (Civitai allowed, allowlisted buckets, SSRF): a 4xx otherwise."""
    from handler.net import gcsinput, urlguard

    check_civitai(ref, models, purpose)
    if ref.url.startswith("gs://"):
        gcsinput.check_gcs_uri(ref.url, urls=urls, purpose=purpose)
    elif ref.civitai is not None:
        urlguard.check_url(models.civitai_url.rstrip("/") + ref.civitai, urls=urls, cloud=cloud, purpose=purpose)
    else:
        urlguard.check_url(ref.url, urls=urls, cloud=cloud, purpose=purpose)
