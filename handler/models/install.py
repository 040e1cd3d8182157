"""Putting one MODEL_TYPE's files in place under ComfyUI's `models/` folder: fetched from a
source (sources.py) in parallel, retried with backoff, resumed, verified against `models.txt`'s
sha256 and size, then renamed into place, or linked from a mounted folder.

`models/.modelfiles.json` (`VerifiedFiles`) records the files already verified, so that a restart
does not hash them again. Every failure is collected: one error names one file, several are listed
together. Standard library only.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from handler.models.manifest import (
    PART_SUFFIX,
    VERIFIED_RECORD_NAME,
    ChecksumError,
    DownloadError,
    ModelFile,
    ModelFilesError,
    Retryable,
    parse_models_file,
    select,
    sha256_file,
)
from handler.models.sources import HF_TOKEN_HOSTS, GcsClient, GcsSource, HttpSource, MountedFolder, Source

if TYPE_CHECKING:  # pragma: no cover
    from handler.config.comfyui import ComfyUISettings
    from handler.config.models import ModelSettings

log = logging.getLogger("handler.models.install")


@dataclass(frozen=True, kw_only=True)
class FetchOptions:
    """How `fetch_models` fetches: from where, with what token, how hard it tries."""

    source: str | None = None  # gs://bucket/prefix, a mounted folder, or None for the URLs
    hf_token: str | None = None
    workers: int = 4  # parallel downloads
    allow_unverified: bool = False  # fetch lines whose SHA256 is '-' and log their digest
    verify_local: bool = False  # also hash files linked from a mounted folder
    retries: int = 5  # attempts per file on transient failures
    backoff_s: float = 2.0  # first wait between attempts, doubled each time (at most 30 s)
    timeout_s: float = 60.0  # per HTTP read
    token_hosts: Sequence[str] = HF_TOKEN_HOSTS  # the only hosts the token is sent to
    gcs_client: GcsClient | None = None  # for gs:// sources; default: google.cloud.storage.Client()

    def open_source(self) -> Source:
        if self.source and self.source.startswith("gs://"):
            return GcsSource.from_url(self.source, self.gcs_client)
        if self.source:
            return MountedFolder(root=Path(self.source), verify=self.verify_local)
        return HttpSource(token=self.hf_token, token_hosts=self.token_hosts, timeout_s=self.timeout_s)


@dataclass
class FetchResult:
    downloaded: list[str] = field(default_factory=list)
    present: list[str] = field(default_factory=list)
    linked: list[str] = field(default_factory=list)


class VerifiedFiles:
    """`models/.modelfiles.json`: files already verified, so a restart does not re-hash them."""

    def __init__(self, root: Path):
        self.path = root / VERIFIED_RECORD_NAME
        self._lock = threading.Lock()
        try:
            self._data: dict[str, dict[str, Any]] = json.loads(self.path.read_text("utf-8"))
            if not isinstance(self._data, dict):
                self._data = {}
        except (OSError, ValueError):
            self._data = {}

    def verified(self, entry: ModelFile, target: Path) -> bool:
        record = self._data.get(entry.dest)
        if not record or entry.sha256 is None or record.get("sha256") != entry.sha256:
            return False
        try:
            return target.is_file() and target.stat().st_size == record.get("size")
        except OSError:
            return False

    def record(self, entry: ModelFile, target: Path, sha256: str) -> None:
        with self._lock:
            self._data[entry.dest] = {"sha256": sha256, "size": target.stat().st_size}
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self._data, indent=1, sort_keys=True), "utf-8")
            os.replace(tmp, self.path)


def fetch_models(files: Sequence[ModelFile], dest_root: Path | str, options: FetchOptions | None = None) -> FetchResult:
    """Put every file in `files` under `dest_root`; raises ModelFilesError listing every failure."""
    options = options or FetchOptions()
    dest_root = Path(dest_root)
    unverified = [f for f in files if f.sha256 is None]
    if unverified and not options.allow_unverified:
        names = ", ".join(f"{f.dest} (line {f.line})" for f in unverified)
        raise ModelFilesError(
            f"no sha256 is known for {names}; refusing to install unverified files "
            "(add the sha256 to models.txt, or pass --allow-unverified to fetch them and print the digest)"
        )
    dest_root.mkdir(parents=True, exist_ok=True)
    record = VerifiedFiles(dest_root)
    result = FetchResult()
    if not files:
        return result
    source = options.open_source()
    lock = threading.Lock()

    def one(entry: ModelFile) -> None:
        target = dest_root / entry.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if source.links:
            source.fetch(entry, target)
            with lock:
                result.linked.append(entry.dest)
            return
        if _in_place(entry, target, record):
            with lock:
                result.present.append(entry.dest)
            return
        part = target.with_name(target.name + PART_SUFFIX)
        _download(entry, part, source, options)
        _finish(entry, part, target, record)
        with lock:
            result.downloaded.append(entry.dest)

    errors: list[ModelFilesError] = []
    with ThreadPoolExecutor(max_workers=max(1, min(options.workers, len(files)))) as pool:
        futures = {pool.submit(one, entry): entry for entry in files}
        for future, entry in futures.items():
            try:
                future.result()
            except ModelFilesError as exc:
                errors.append(exc)
            except Exception as exc:  # an unexpected failure still names the file
                errors.append(ModelFilesError(f"{entry.dest}: {type(exc).__name__}: {exc}"))
    if len(errors) == 1:
        raise errors[0]
    if errors:
        error = ModelFilesError(
            f"{len(errors)} model files could not be installed:\n  " + "\n  ".join(str(e) for e in errors)
        )
        error.errors = errors  # type: ignore[attr-defined]
        raise error
    return result


def _in_place(entry: ModelFile, target: Path, record: VerifiedFiles) -> bool:
    """Whether the file at `target` is already the one `models.txt` names (a wrong one is removed)."""
    if target.is_symlink():
        target.unlink()
    if not target.exists():
        return False
    if record.verified(entry, target):
        return True
    if entry.sha256 and (entry.size is None or target.stat().st_size == entry.size):
        digest = sha256_file(target).hexdigest()
        if digest == entry.sha256:
            record.record(entry, target, digest)
            return True
    log.warning("%s: the file in place does not match models.txt; fetching it again", entry.dest)
    target.unlink()
    return False


def _download(entry: ModelFile, part: Path, source: Source, options: FetchOptions) -> None:
    where = source.where(entry)
    log.info("%s: fetching %s", entry.dest, where)
    for attempt_no in range(1, options.retries + 1):
        try:
            source.fetch(entry, part)
            return
        except Retryable as exc:
            if attempt_no == options.retries:
                raise DownloadError(f"{where}: gave up after {options.retries} attempts: {exc}") from None
            delay = min(options.backoff_s * 2 ** (attempt_no - 1), 30.0)
            log.warning(
                "%s: %s; retrying in %.1fs (attempt %d of %d)", entry.dest, exc, delay, attempt_no + 1, options.retries
            )
            time.sleep(delay)


def _finish(entry: ModelFile, part: Path, target: Path, record: VerifiedFiles) -> None:
    size = part.stat().st_size
    if entry.size is not None and size != entry.size:
        part.unlink(missing_ok=True)
        raise ChecksumError(f"{entry.dest}: got {size} bytes, models.txt says {entry.size}")
    digest = sha256_file(part).hexdigest()
    if entry.sha256 is None:
        log.warning(
            "%s: UNVERIFIED (no sha256 in models.txt, line %d); its sha256 is %s — add it to models.txt",
            entry.dest,
            entry.line,
            digest,
        )
    elif digest != entry.sha256:
        part.unlink(missing_ok=True)
        raise ChecksumError(
            f"{entry.dest}: sha256 mismatch: expected {entry.sha256}, got {digest} (from {entry.url}); "
            "the partial file was removed"
        )
    os.replace(part, target)
    if entry.sha256 is not None:
        record.record(entry, target, digest)
    log.info("%s: ready (%d bytes)", entry.dest, size)


# --------------------------------------------------------------------------- the service's entry point


def models_folder(*, models: ModelSettings, comfyui: ComfyUISettings) -> Path | None:
    """Where the models of a booted ComfyUI live (MODELS_DIR, else COMFYUI_PATH/models)."""
    if models.models_dir is not None:
        return models.models_dir
    return comfyui.comfyui_path / "models" if comfyui.comfyui_path else None


def ensure_models(*, models: ModelSettings, comfyui: ComfyUISettings) -> None:
    """At container start: when MODELS_SOURCE is set, put MODEL_TYPE's files under ComfyUI's models
    folder (MODELS_DIR, else COMFYUI_PATH/models)."""
    if not models.models_source:
        return
    models_dir = models_folder(models=models, comfyui=comfyui)
    if models_dir is None:
        raise ModelFilesError("MODELS_SOURCE is set but COMFYUI_PATH is not: nowhere to put the models")
    files = select(parse_models_file(models.models_file), models.model_type)
    if not files:
        log.info("model type %s has no model files", models.model_type)
        return
    started = time.monotonic()
    result = fetch_models(files, models_dir, FetchOptions(source=models.models_source, hf_token=models.hf_token))
    log.info(
        "models for %s ready in %.1fs: %d downloaded, %d linked, %d already present",
        models.model_type,
        time.monotonic() - started,
        len(result.downloaded),
        len(result.linked),
        len(result.present),
    )
