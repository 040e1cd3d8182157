"""`models.txt`: which model files each MODEL_TYPE needs: the format, its parser, the selection of
one type's files, and the errors of the whole downloader.

One model file a line, whitespace-separated columns, `#` starts a comment::

    # MODEL_TYPES            URL                                   DEST                         SHA256   [SIZE]
    flux1-schnell,flux1-dev  https://huggingface.co/…/ae.safetensors  vae/ae.safetensors        afc8…e38 335304388

* MODEL_TYPES: comma-separated model types the file belongs to (`base` has no files).
* URL: where to fetch it (http or https).
* DEST: path under ComfyUI's `models/` folder (relative, no `..`).
* SHA256: 64 hex digits, or `-` when no published checksum is known. A `-` line is refused
  unless the caller allows unverified files (`--allow-unverified`); it is then downloaded
  with a warning that prints the computed digest, to be pasted into the file.
* SIZE: optional, in bytes; checked before hashing and used for files linked from a mount.

Standard library only: the image's models stage runs the downloader without the service's venv.
"""

from __future__ import annotations

import hashlib
import re
import urllib.parse
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

BASE_MODEL_TYPE = "base"
VERIFIED_RECORD_NAME = ".modelfiles.json"  # install.VerifiedFiles: the files already verified
PART_SUFFIX = ".part"  # a download in progress, resumed from its length
CHUNK = 1024 * 1024
_SHA_RE = re.compile(r"^[0-9a-f]{64}$")
_TYPE_RE = re.compile(r"^[a-z0-9][a-z0-9._-]*$")


# --------------------------------------------------------------------------- errors


class ModelFilesError(Exception):
    """Anything that stops the models from being in place. The message says what and where."""

    exit_code = 1


class ModelsFileError(ModelFilesError):
    """`models.txt` itself is wrong: names the file and line."""

    exit_code = 2


class ChecksumError(ModelFilesError):
    """A file's bytes do not match the sha256 in `models.txt`."""


class TokenError(ModelFilesError):
    """A gated file needs a Hugging Face token, or the token was refused."""


class DownloadError(ModelFilesError):
    """The file could not be fetched (not found, refused, or the network kept failing)."""


class Retryable(Exception):
    """A transient failure: try again, resuming where the bytes stopped."""


# --------------------------------------------------------------------------- models.txt


@dataclass(frozen=True)
class ModelFile:
    """One line of `models.txt`."""

    types: tuple[str, ...]
    url: str
    dest: str  # relative POSIX path under models/
    sha256: str | None
    size: int | None = None
    line: int = 0

    @property
    def name(self) -> str:
        return self.dest


def parse_models_text(text: str, source: str = "models.txt") -> list[ModelFile]:
    """Parse the whole file; the first bad line raises ModelsFileError naming it."""
    files: list[ModelFile] = []
    seen: dict[tuple[str, str], ModelFile] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        where = f"{source}:{number}"
        cols = line.split()
        if len(cols) not in (4, 5):
            raise ModelsFileError(
                f"{where}: expected 4 or 5 columns (MODEL_TYPES URL DEST SHA256 [SIZE]), "
                f"got {len(cols)}: {raw.strip()!r}"
            )
        types_col, url, dest_col, sha_col = cols[:4]
        types = tuple(t for t in types_col.split(",") if t)
        if not types:
            raise ModelsFileError(f"{where}: no model type in {types_col!r}")
        for t in types:
            if not _TYPE_RE.match(t):
                raise ModelsFileError(f"{where}: bad model type {t!r} (lowercase letters, digits, . _ -)")
            if t == BASE_MODEL_TYPE:
                raise ModelsFileError(f"{where}: model type {BASE_MODEL_TYPE!r} has no files by definition")
        parsed = urllib.parse.urlsplit(url)
        if parsed.scheme not in ("http", "https") or not parsed.hostname:
            raise ModelsFileError(f"{where}: URL must be http(s)://host/…, got {url!r}")
        dest = _check_dest(dest_col, where)
        sha = sha_col.lower()
        if sha == "-":
            sha_value: str | None = None
        elif _SHA_RE.match(sha):
            sha_value = sha
        else:
            raise ModelsFileError(f"{where}: SHA256 must be 64 hex digits or '-', got {sha_col!r}")
        size: int | None = None
        if len(cols) == 5:
            if not cols[4].isdigit() or int(cols[4]) == 0:
                raise ModelsFileError(f"{where}: SIZE must be a positive number of bytes, got {cols[4]!r}")
            size = int(cols[4])
        entry = ModelFile(types=types, url=url, dest=dest, sha256=sha_value, size=size, line=number)
        for t in types:
            other = seen.get((t, dest))
            if other is not None:
                raise ModelsFileError(f"{where}: {dest} is already listed for {t!r} on line {other.line}")
            seen[(t, dest)] = entry
        files.append(entry)
    return files


def _check_dest(value: str, where: str) -> str:
    if "\\" in value:
        raise ModelsFileError(f"{where}: DEST must use '/' separators, got {value!r}")
    path = PurePosixPath(value)
    if path.is_absolute() or not path.parts or any(p in ("..", ".", "") for p in path.parts):
        raise ModelsFileError(f"{where}: DEST must be a relative path under models/ without '..', got {value!r}")
    if value.endswith(PART_SUFFIX) or path.name == VERIFIED_RECORD_NAME:
        raise ModelsFileError(f"{where}: DEST may not end in {PART_SUFFIX} or be {VERIFIED_RECORD_NAME}")
    return str(path)


def parse_models_file(path: Path | str) -> list[ModelFile]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelsFileError(f"models file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelsFileError(f"cannot read models file {path}: {exc}") from None
    return parse_models_text(text, source=str(path))


def model_types(files: Iterable[ModelFile]) -> list[str]:
    found = {t for f in files for t in f.types}
    return [BASE_MODEL_TYPE, *sorted(found)]


def select(files: Sequence[ModelFile], model_type: str) -> list[ModelFile]:
    """The files of one model type; an unknown type is an error that lists the known ones."""
    known = model_types(files)
    if model_type not in known:
        raise ModelsFileError(f"unknown model type {model_type!r}; known: {', '.join(known)}")
    return [f for f in files if model_type in f.types]


def sha256_file(path: Path, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher
