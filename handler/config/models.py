"""Settings of models and named workflows: which models this image serves, where runtime models
come from, where the workflow templates are. One section of `Settings`
(handler/config/settings.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from handler.config.declare import Section, setting


@dataclass(frozen=True, kw_only=True)
class ModelSettings(Section):
    """`models.txt` lists the files each model type needs (docs/operators.md, "Runtime models")."""

    TITLE: ClassVar[str] = "Models and workflows"

    model_type: str = setting(
        env="MODEL_TYPE",
        default="base",
        help="which models this image carries (`base`, `flux1-schnell`, `flux1-dev`, `flux1-dev-fp8`, `sdxl`, "
        "`sd3`); a template is `available` when its `model_type` matches",
    )
    models_file: Path = setting(
        env="MODELS_FILE", default=Path("models.txt"), help="the list of model files per model type"
    )
    models_source: str | None = setting(
        env="MODELS_SOURCE",
        default=None,
        help="runtime models: `MODEL_TYPE`'s files are fetched from `gs://bucket/prefix` or linked from a "
        "mounted folder before ComfyUI boots",
    )
    models_dir: Path | None = setting(
        env="MODELS_DIR",
        default=None,
        shown="`COMFYUI_PATH`/models",
        help="where ComfyUI's models live (passed as `--models-directory`)",
    )
    hf_token: str | None = setting(
        env="HF_TOKEN",
        default=None,
        secret=True,
        help="a Hugging Face token for gated models, sent to huggingface.co only",
    )
    model_urls: bool = setting(
        env="MODEL_URLS",
        default=True,
        help="workflows may name a model by URL (https://, gs://, hf://) in a model-loading input; the worker "
        "fetches it once into the model cache (docs/models-by-url.md)",
    )
    model_urls_safetensors_only: bool = setting(
        env="MODEL_URLS_SAFETENSORS_ONLY",
        default=True,
        help="models named by URL must be files no loader unpickles (.safetensors, .sft, .gguf, .yaml); "
        "pickled formats (.ckpt, .pt, .pth, .bin, .pkl) are a 400 unless this is false",
    )
    civitai_models: bool = setting(
        env="CIVITAI_MODELS",
        default=False,
        help="workflows may name a Civitai model (`https://civitai.com/api/download/models/<version id>` or "
        "`civitai://<version id>`); off, such a reference is refused (400)",
    )
    civitai_token: str | None = setting(
        env="CIVITAI_TOKEN",
        default=None,
        secret=True,
        help="a Civitai API token, sent to `CIVITAI_URL`'s host only, never to the storage it redirects to",
    )
    civitai_url: str = setting(
        env="CIVITAI_URL",
        default="https://civitai.com",
        help="where Civitai's download API is (scheme, host and port; another only for a stand-in in tests)",
    )
    model_cache_dir: Path | None = setting(
        env="MODEL_CACHE_DIR",
        default=None,
        shown="`STATE_DIR`/comfyui/model-cache",
        help="where models fetched by URL are kept (on Cloud Run, in memory)",
    )
    model_cache_store: Path | None = setting(
        env="MODEL_CACHE_STORE",
        default=None,
        help="a folder that outlives the instance (on Cloud Run a read-write Cloud Storage volume) backing the "
        "model cache: a miss is served from it when it holds the URL's file, linked, not copied, and outside the "
        "budget; each verified download is copied into it in the background",
    )
    model_cache_bytes: int | None = setting(
        env="MODEL_CACHE_BYTES",
        default=None,
        shown="half of (memory − `MODEL_CACHE_RESERVE_BYTES`)",
        help="the model cache's budget: a larger file is refused (413), least recently used files make room",
    )
    model_cache_reserve_bytes: int = setting(
        env="MODEL_CACHE_RESERVE_BYTES",
        default=4 * 1024**3,
        help="memory set aside for ComfyUI and the service before the model cache's default budget is derived",
    )
    model_fetch_timeout_s: float = setting(
        env="MODEL_FETCH_TIMEOUT_S",
        default=600.0,
        help="the longest one model download may take (inside the request's own timeout)",
    )
    models_cache_ttl_s: float = setting(
        env="MODELS_CACHE_TTL_S",
        default=300.0,
        help="how long the list of ComfyUI's models (`/models`) is kept before it is asked for again (seconds)",
    )
    workflows_dir: Path = setting(
        env="WORKFLOWS_DIR", default=Path("workflows"), help="the named workflow templates (docs/templates.md)"
    )

    def cache_root(self, comfyui_base_dir: Path) -> Path:
        """Where models fetched by URL are kept: MODEL_CACHE_DIR, else model-cache/ beside the
        folders of the ComfyUI the service boots (HttpSettings.comfyui_base_dir)."""
        return self.model_cache_dir or comfyui_base_dir / "model-cache"
