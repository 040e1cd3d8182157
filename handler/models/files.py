"""`models.txt`: which model files each MODEL_TYPE needs, and a downloader that fetches them.

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

The same list serves three sources:

* the URLs (default): parallel HTTP downloads into `<dest>.part`, resumed with `Range` after a
  dropped connection or an interrupted run, verified against the sha256, then renamed into place;
* `gs://bucket/prefix`: each file is read from `gs://bucket/prefix/<DEST>` (same layout as
  `models/`), resumed and verified the same way;
* a mounted folder (for example a Cloud Storage volume): each file `<folder>/<DEST>` is
  symlinked into place without copying (the size is checked; `--verify` hashes it too).

A Hugging Face token (HF_TOKEN or a token file such as the BuildKit secret) is sent only to
`huggingface.co` itself, never to the storage hosts it redirects to, and never printed.

Command line::

    python -m handler.models.files [--model-type T] [--dest /comfyui/models]
        [--source gs://bucket/prefix | /mounted/dir] [--models-file models.txt]
"""

from __future__ import annotations

import argparse
import email.message
import hashlib
import http.client
import json
import logging
import os
import re
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from handler.config import Settings

log = logging.getLogger("handler.models.files")

BASE_MODEL_TYPE = "base"
HF_TOKEN_HOSTS: tuple[str, ...] = ("huggingface.co",)
DEFAULT_TOKEN_FILE = Path("/run/secrets/hf_token")
MANIFEST_NAME = ".modelfiles.json"
PART_SUFFIX = ".part"
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


class _Retryable(Exception):
    """A transient failure: try again, resuming where the bytes stopped."""


# --------------------------------------------------------------------------- models.txt


@dataclass(frozen=True)
class ModelFile:
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
    if value.endswith(PART_SUFFIX) or path.name == MANIFEST_NAME:
        raise ModelsFileError(f"{where}: DEST may not end in {PART_SUFFIX} or be {MANIFEST_NAME}")
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


# --------------------------------------------------------------------------- token


def read_token(token: str | None = None, token_file: Path | str | None = None) -> str | None:
    """The token from a file (if given and present) or the value given; blank means none."""
    if token_file is not None:
        path = Path(token_file)
        if path.is_file():
            value = path.read_text(encoding="utf-8").strip()
            return value or None
    value = (token or "").strip()
    return value or None


# --------------------------------------------------------------------------- manifest


class _Manifest:
    """`models/.modelfiles.json`: files already verified, so a restart does not re-hash them."""

    def __init__(self, root: Path):
        self.path = root / MANIFEST_NAME
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


def sha256_file(path: Path, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    hasher = hasher or hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            hasher.update(chunk)
    return hasher


# --------------------------------------------------------------------------- HTTP


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: email.message.Message,
        newurl: str,
    ) -> None:
        return None  # surface 3xx as HTTPError; redirects are followed by hand


_OPENER = urllib.request.build_opener(_NoRedirect)


def _host_gets_token(url: str, token_hosts: Sequence[str]) -> bool:
    host = (urllib.parse.urlsplit(url).hostname or "").lower()
    return host in {h.lower() for h in token_hosts}


def _repo_hint(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    segs = [s for s in parts.path.split("/") if s]
    if parts.hostname == "huggingface.co" and len(segs) >= 2:
        return f" (accept the licence at https://huggingface.co/{segs[0]}/{segs[1]} with the token's account)"
    return ""


def _open(
    url: str, *, token: str | None, token_hosts: Sequence[str], offset: int, timeout: float
) -> http.client.HTTPResponse | None:
    """GET with Range from `offset`, following redirects; the token goes only to token hosts."""
    current = url
    for _ in range(10):
        headers = {"User-Agent": "comfyrun-modelfiles/1", "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        if token and _host_gets_token(current, token_hosts):
            headers["Authorization"] = f"Bearer {token}"
        request = urllib.request.Request(current, headers=headers)
        try:
            response: http.client.HTTPResponse = _OPENER.open(request, timeout=timeout)
            return response
        except urllib.error.HTTPError as exc:
            if exc.code in (301, 302, 303, 307, 308):
                location = exc.headers.get("Location")
                exc.close()
                if not location:
                    raise DownloadError(f"{url}: redirect without a Location header") from None
                current = urllib.parse.urljoin(current, location)
                continue
            code = exc.code
            exc.close()
            if code in (401, 403):
                if not token:
                    raise TokenError(
                        f"{url}: HTTP {code}: this file needs a Hugging Face token; set HF_TOKEN "
                        f"or pass a token file (the BuildKit secret 'hf_token'){_repo_hint(url)}"
                    ) from None
                raise TokenError(
                    f"{url}: HTTP {code}: the Hugging Face token was refused; check it is valid "
                    f"and has read access{_repo_hint(url)}"
                ) from None
            if code == 416:
                return None  # nothing past `offset`
            if code == 429 or code >= 500:
                raise _Retryable(f"HTTP {code}") from None
            raise DownloadError(f"{url}: HTTP {code}") from None
    raise DownloadError(f"{url}: too many redirects")


def _download_http(
    entry: ModelFile,
    part: Path,
    *,
    token: str | None,
    token_hosts: Sequence[str],
    timeout: float,
) -> None:
    """One attempt: append to `part` from its current length. Raises _Retryable on a short read."""
    offset = part.stat().st_size if part.exists() else 0
    if entry.size is not None and offset > entry.size:
        part.unlink()
        offset = 0
    if entry.size is not None and offset == entry.size:
        return
    try:
        response = _open(entry.url, token=token, token_hosts=token_hosts, offset=offset, timeout=timeout)
    except (TimeoutError, urllib.error.URLError, ConnectionError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise _Retryable(f"{type(exc).__name__}: {reason}") from None
    if response is None:  # 416: the server has nothing past offset
        if offset:
            return
        raise DownloadError(f"{entry.url}: HTTP 416 for a fresh download")
    with response:
        status = response.status
        mode = "ab"
        if offset and status == 200:
            log.info("%s: server ignored the range request; starting over", entry.dest)
            mode, offset = "wb", 0
        elif offset and status == 206:
            content_range = response.headers.get("Content-Range", "")
            match = re.match(r"bytes (\d+)-", content_range)
            if not match or int(match.group(1)) != offset:
                raise DownloadError(f"{entry.url}: unexpected Content-Range {content_range!r} for offset {offset}")
            log.info("%s: resuming at %d bytes", entry.dest, offset)
        elif status not in (200, 206):
            raise DownloadError(f"{entry.url}: HTTP {status}")
        length = response.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        received = 0
        last_log = time.monotonic()
        try:
            out = open(part, mode)
        except OSError as exc:
            raise DownloadError(f"{entry.dest}: cannot write {part}: {exc}") from None
        with out:
            while True:
                try:
                    chunk = response.read(CHUNK)
                except (OSError, http.client.HTTPException) as exc:  # timeouts and resets included
                    raise _Retryable(f"connection lost after {received} bytes: {exc}") from None
                if not chunk:
                    break
                try:
                    out.write(chunk)
                except OSError as exc:  # a full disk is not worth retrying
                    raise DownloadError(f"{entry.dest}: cannot write {part}: {exc}") from None
                received += len(chunk)
                now = time.monotonic()
                if now - last_log > 30:
                    last_log = now
                    total = f" of {entry.size}" if entry.size else ""
                    log.info("%s: %d bytes%s", entry.dest, offset + received, total)
        if expected is not None and received < expected:
            raise _Retryable(f"connection closed after {received} of {expected} bytes")


# --------------------------------------------------------------------------- Cloud Storage


def _split_gs(source: str) -> tuple[str, str]:
    rest = source[len("gs://") :]
    bucket, _, prefix = rest.partition("/")
    if not bucket:
        raise ModelFilesError(f"bad Cloud Storage source {source!r}; expected gs://bucket[/prefix]")
    return bucket, prefix.strip("/")


def _download_gcs(entry: ModelFile, part: Path, *, bucket: Any, prefix: str) -> None:
    from google.api_core import exceptions as gexc  # a project dependency, imported when used

    name = f"{prefix}/{entry.dest}" if prefix else entry.dest
    blob = bucket.blob(name)
    offset = part.stat().st_size if part.exists() else 0
    if entry.size is not None and offset >= entry.size:
        if offset == entry.size:
            return
        part.unlink()
        offset = 0
    try:
        with open(part, "ab") as out:
            # sha256 is verified afterwards; the client's own checksum cannot cover a resumed range
            blob.download_to_file(out, start=offset or None, raw_download=True, checksum=None)
    except gexc.NotFound:
        raise DownloadError(f"gs://{bucket.name}/{name}: not found") from None
    except gexc.Forbidden as exc:
        raise DownloadError(f"gs://{bucket.name}/{name}: access denied ({exc.message})") from None
    except gexc.RequestRangeNotSatisfiable:
        return  # part already holds the whole object
    except (TimeoutError, gexc.ServerError, gexc.TooManyRequests, ConnectionError) as exc:
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None
    except gexc.ClientError as exc:
        raise DownloadError(f"gs://{bucket.name}/{name}: {exc}") from None
    except Exception as exc:  # google-resumable-media and requests errors on a broken stream
        if type(exc).__module__.split(".")[0] in {"requests", "urllib3", "google"}:
            raise _Retryable(f"{type(exc).__name__}: {exc}") from None
        raise


# --------------------------------------------------------------------------- the downloader


@dataclass
class FetchResult:
    downloaded: list[str]
    present: list[str]
    linked: list[str]


def fetch_models(
    files: Sequence[ModelFile],
    dest_root: Path | str,
    *,
    source: str | None = None,
    hf_token: str | None = None,
    workers: int = 4,
    allow_unverified: bool = False,
    verify_local: bool = False,
    retries: int = 5,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    token_hosts: Sequence[str] = HF_TOKEN_HOSTS,
    gcs_client: Any = None,
) -> FetchResult:
    """Put every file in `files` under `dest_root`; raises ModelFilesError listing every failure."""
    dest_root = Path(dest_root)
    unverified = [f for f in files if f.sha256 is None]
    if unverified and not allow_unverified:
        names = ", ".join(f"{f.dest} (line {f.line})" for f in unverified)
        raise ModelFilesError(
            f"no sha256 is known for {names}; refusing to install unverified files "
            "(add the sha256 to models.txt, or pass --allow-unverified to fetch them and print the digest)"
        )
    dest_root.mkdir(parents=True, exist_ok=True)
    manifest = _Manifest(dest_root)
    result = FetchResult([], [], [])
    if not files:
        return result

    local_root: Path | None = None
    bucket = None
    prefix = ""
    if source:
        if source.startswith("gs://"):
            bucket_name, prefix = _split_gs(source)
            if gcs_client is None:
                import google.cloud.storage as storage  # a project dependency, imported when used

                gcs_client = storage.Client()
            bucket = gcs_client.bucket(bucket_name)
        else:
            local_root = Path(source)
            if not local_root.is_dir():
                raise ModelFilesError(f"models source folder not found: {local_root}")

    lock = threading.Lock()

    def one(entry: ModelFile) -> None:
        target = dest_root / entry.dest
        target.parent.mkdir(parents=True, exist_ok=True)
        if local_root is not None:
            _link_local(entry, target, local_root, verify=verify_local)
            with lock:
                result.linked.append(entry.dest)
            return
        if target.is_symlink():
            target.unlink()
        if target.exists():
            if manifest.verified(entry, target):
                with lock:
                    result.present.append(entry.dest)
                return
            if entry.sha256 and (entry.size is None or target.stat().st_size == entry.size):
                digest = sha256_file(target).hexdigest()
                if digest == entry.sha256:
                    manifest.record(entry, target, digest)
                    with lock:
                        result.present.append(entry.dest)
                    return
            log.warning("%s: the file in place does not match models.txt; fetching it again", entry.dest)
            target.unlink()
        part = target.with_name(target.name + PART_SUFFIX)

        def attempt() -> None:
            if bucket is not None:
                _download_gcs(entry, part, bucket=bucket, prefix=prefix)
            else:
                _download_http(entry, part, token=hf_token, token_hosts=token_hosts, timeout=timeout_s)

        where = f"gs://{bucket.name}/{prefix + '/' if prefix else ''}{entry.dest}" if bucket is not None else entry.url
        log.info("%s: fetching %s", entry.dest, where)
        for attempt_no in range(1, retries + 1):
            try:
                attempt()
                break
            except _Retryable as exc:
                if attempt_no == retries:
                    raise DownloadError(f"{where}: gave up after {retries} attempts: {exc}") from None
                delay = min(backoff_s * 2 ** (attempt_no - 1), 30.0)
                log.warning(
                    "%s: %s; retrying in %.1fs (attempt %d of %d)", entry.dest, exc, delay, attempt_no + 1, retries
                )
                time.sleep(delay)
        _finish(entry, part, target, manifest)
        with lock:
            result.downloaded.append(entry.dest)

    errors: list[ModelFilesError] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(files)))) as pool:
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


def _finish(entry: ModelFile, part: Path, target: Path, manifest: _Manifest) -> None:
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
        manifest.record(entry, target, digest)
    log.info("%s: ready (%d bytes)", entry.dest, size)


def _link_local(entry: ModelFile, target: Path, root: Path, *, verify: bool) -> None:
    src = (root / entry.dest).absolute()
    if not src.is_file():
        raise DownloadError(f"{entry.dest}: not found in the models source ({src})")
    size = src.stat().st_size
    if entry.size is not None and size != entry.size:
        raise ChecksumError(f"{entry.dest}: {src} has {size} bytes, models.txt says {entry.size}")
    if verify:
        if entry.sha256 is None:
            log.warning(
                "%s: UNVERIFIED (no sha256 in models.txt); its sha256 is %s", entry.dest, sha256_file(src).hexdigest()
            )
        else:
            digest = sha256_file(src).hexdigest()
            if digest != entry.sha256:
                raise ChecksumError(f"{entry.dest}: sha256 mismatch in {src}: expected {entry.sha256}, got {digest}")
    if target.is_symlink():
        if os.readlink(target) == str(src):
            return
        target.unlink()
    elif target.exists():
        log.info("%s: a file is already in place; keeping it instead of linking %s", entry.dest, src)
        return
    target.symlink_to(src)
    log.info("%s: linked to %s", entry.dest, src)


# --------------------------------------------------------------------------- the service's entry point


def ensure_models(settings: Settings) -> None:
    """At container start: when MODELS_SOURCE is set, put MODEL_TYPE's files under ComfyUI's models
    folder (MODELS_DIR, else COMFYUI_PATH/models)."""
    if not settings.models_source:
        return
    models_dir = settings.comfyui_models_dir
    if models_dir is None:
        raise ModelFilesError("MODELS_SOURCE is set but COMFYUI_PATH is not: nowhere to put the models")
    files = select(parse_models_file(settings.models_file), settings.model_type)
    if not files:
        log.info("model type %s has no model files", settings.model_type)
        return
    started = time.monotonic()
    result = fetch_models(
        files,
        models_dir,
        source=settings.models_source,
        hf_token=settings.hf_token,
    )
    log.info(
        "models for %s ready in %.1fs: %d downloaded, %d linked, %d already present",
        settings.model_type,
        time.monotonic() - started,
        len(result.downloaded),
        len(result.linked),
        len(result.present),
    )


# --------------------------------------------------------------------------- command line


def _parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m handler.models.files",
        description="Fetch the model files of one MODEL_TYPE listed in models.txt, verified by sha256.",
    )
    p.add_argument("--model-type", default=defaults["model_type"], help="default: MODEL_TYPE or 'base'")
    p.add_argument(
        "--models-file", type=Path, default=defaults["models_file"], help="default: MODELS_FILE or models.txt"
    )
    p.add_argument(
        "--dest", type=Path, default=defaults["dest"], help="ComfyUI's models/ folder (default: COMFYUI_PATH/models)"
    )
    p.add_argument(
        "--source",
        default=defaults["source"],
        help="gs://bucket/prefix or a mounted folder laid out like models/ (default: the URLs)",
    )
    p.add_argument(
        "--hf-token-file",
        type=Path,
        default=None,
        help=f"file holding the Hugging Face token (default: HF_TOKEN, then {DEFAULT_TOKEN_FILE} if present)",
    )
    p.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    p.add_argument(
        "--allow-unverified", action="store_true", help="fetch lines whose SHA256 is '-' and print their digest"
    )
    p.add_argument("--verify", action="store_true", help="also hash files linked from a mounted folder")
    p.add_argument("--list", action="store_true", help="print the model type's lines and exit")
    p.add_argument("--token-host", action="append", default=None, help=argparse.SUPPRESS)
    p.add_argument("--retry-backoff", type=float, default=2.0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    from handler.config import ConfigError, Settings

    logging.basicConfig(level=logging.INFO, format="modelfiles: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"modelfiles: {exc}", file=sys.stderr)
        return 2
    defaults = {
        "model_type": settings.model_type,
        "models_file": settings.models_file,
        "dest": (settings.comfyui_path / "models") if settings.comfyui_path else None,
        "source": settings.models_source,
    }
    args = _parser(defaults).parse_args(argv)
    if args.dest is None and not args.list:
        print("modelfiles: --dest is required when COMFYUI_PATH is not set", file=sys.stderr)
        return 2
    try:
        files = select(parse_models_file(args.models_file), args.model_type)
        if args.list:
            for f in files:
                print(f"{f.dest}\t{f.sha256 or '-'}\t{f.size or '-'}\t{f.url}")
            return 0
        token_file = args.hf_token_file
        if token_file is None and not settings.hf_token and DEFAULT_TOKEN_FILE.is_file():
            token_file = DEFAULT_TOKEN_FILE
        if args.hf_token_file is not None and not args.hf_token_file.is_file():
            log.info("token file %s not present; continuing without it", args.hf_token_file)
        token = read_token(settings.hf_token, token_file)
        if not files:
            log.info("model type %s has no model files; nothing to do", args.model_type)
            args.dest.mkdir(parents=True, exist_ok=True)
            return 0
        result = fetch_models(
            files,
            args.dest,
            source=args.source,
            hf_token=token,
            workers=args.workers,
            allow_unverified=args.allow_unverified,
            verify_local=args.verify,
            token_hosts=tuple(args.token_host) if args.token_host else HF_TOKEN_HOSTS,
            backoff_s=args.retry_backoff,
        )
    except ModelFilesError as exc:
        print(f"modelfiles: error: {exc}", file=sys.stderr)
        return exc.exit_code
    log.info(
        "%s: %d downloaded, %d linked, %d already present in %s",
        args.model_type,
        len(result.downloaded),
        len(result.linked),
        len(result.present),
        args.dest,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
