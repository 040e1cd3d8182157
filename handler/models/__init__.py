"""Model files: `models.txt` (which files each MODEL_TYPE needs) and the downloader that installs
them at build time (`python -m handler.models`, the image's models stage) or at boot
(`ensure_models`, when MODELS_SOURCE is set).

    manifest.py   the models.txt format: ModelFile, parsing, one type's files, the errors
    sources.py    where the bytes come from: HTTP(S), Cloud Storage, a mounted folder (one protocol)
    install.py    fetch, retry, verify, rename into place; the record of verified files
    __main__.py   the command line

Standard library only, so the models stage runs it without the service's dependencies.
"""

from handler.models.install import FetchOptions, FetchResult, VerifiedFiles, ensure_models, fetch_models
from handler.models.manifest import (
    BASE_MODEL_TYPE,
    ChecksumError,
    DownloadError,
    ModelFile,
    ModelFilesError,
    ModelsFileError,
    TokenError,
    model_types,
    parse_models_file,
    parse_models_text,
    select,
)
from handler.models.sources import GcsSource, HttpSource, MountedFolder, Source

__all__ = [
    "BASE_MODEL_TYPE",
    "ChecksumError",
    "DownloadError",
    "FetchOptions",
    "FetchResult",
    "GcsSource",
    "HttpSource",
    "ModelFile",
    "ModelFilesError",
    "ModelsFileError",
    "MountedFolder",
    "Source",
    "TokenError",
    "VerifiedFiles",
    "ensure_models",
    "fetch_models",
    "model_types",
    "parse_models_file",
    "parse_models_text",
    "select",
]
