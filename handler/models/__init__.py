"""Model files: `models.txt` (which files each MODEL_TYPE needs) and the downloader that installs
them at build time (`python -m handler.models`, the image's models stage) or at boot
(`ensure_models`, when MODELS_SOURCE is set).

    manifest.py   the models.txt format: ModelFile, parsing, one type's files, the errors
    sources.py    where the bytes come from: HTTP(S), Cloud Storage, a mounted folder (one protocol)
    install.py    fetch, retry, verify, rename into place; the record of verified files
    __main__.py   the command line

Standard library only, so the models stage runs it without the service's dependencies.

Models named by URL in a workflow, fetched by the service at run time (not imported here: they
use the service's URL rules and errors, which the models stage does not copy):

    refs.py       which inputs load which model folder; the URL forms; the checks before fetching
    download.py   one file streamed from https://, hf:// or gs:// under the input URL rules
    cache.py      the bounded, checksummed cache: budget, LRU eviction, pins, one download per URL
    budget.py     the cache's default budget, from the instance's memory
    ondemand.py   a run's models: fetched, pinned, the graph pointed at them, reported
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
