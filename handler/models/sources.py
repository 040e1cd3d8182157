"""Where model files come from: three sources behind one protocol, `Source`.

* `HttpSource`, the URLs in `models.txt` (the default): GET with `Range` from the length of
  `<dest>.part`, redirects followed by hand so that a Hugging Face token goes only to
  `huggingface.co` itself, never to the storage hosts it redirects to, and is never printed;
* `GcsSource`, `gs://bucket/prefix`: each file is read from `gs://bucket/prefix/<DEST>` (laid out
  like `models/`), resumed the same way;
* `MountedFolder`, a folder such as a Cloud Storage volume: each file `<folder>/<DEST>` is
  symlinked into place without copying (its size checked; with `verify`, its sha256 too).

A copying source makes one attempt per call and raises `Retryable` for a transient failure;
install.py retries, verifies and renames. Standard library only (the Cloud Storage client is
imported when that source is used).
"""

from __future__ import annotations

import email.message
import http.client
import logging
import os
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from handler.models.manifest import (
    CHUNK,
    ChecksumError,
    DownloadError,
    ModelFile,
    ModelFilesError,
    Retryable,
    TokenError,
    sha256_file,
)

log = logging.getLogger("handler.models.sources")

HF_TOKEN_HOSTS: tuple[str, ...] = ("huggingface.co",)


class Source(Protocol):
    """Where the bytes of a model file come from."""

    @property
    def links(self) -> bool:
        """True: `fetch` links the file in place (nothing copied, nothing recorded); False: `fetch`
        copies bytes into the `.part` file it is given, and the installer verifies and renames."""
        ...

    def where(self, entry: ModelFile) -> str:
        """The file's origin, for messages."""
        ...

    def fetch(self, entry: ModelFile, path: Path) -> None:
        """Link `entry` at `path`, or make one attempt at appending the rest of its bytes to the
        part file `path` (raising `Retryable` on a transient failure)."""
        ...


# --------------------------------------------------------------------------- HTTP(S)


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
                raise Retryable(f"HTTP {code}") from None
            raise DownloadError(f"{url}: HTTP {code}") from None
    raise DownloadError(f"{url}: too many redirects")


@dataclass(frozen=True, kw_only=True)
class HttpSource:
    """The URLs of `models.txt`; `token` is sent only to `token_hosts`."""

    token: str | None = None
    token_hosts: Sequence[str] = HF_TOKEN_HOSTS
    timeout_s: float = 60.0

    @property
    def links(self) -> bool:
        return False

    def where(self, entry: ModelFile) -> str:
        return entry.url

    def fetch(self, entry: ModelFile, path: Path) -> None:
        _download_http(entry, path, token=self.token, token_hosts=self.token_hosts, timeout=self.timeout_s)


def _download_http(
    entry: ModelFile,
    part: Path,
    *,
    token: str | None,
    token_hosts: Sequence[str],
    timeout: float,
) -> None:
    """One attempt: append to `part` from its current length. Raises Retryable on a short read."""
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
        raise Retryable(f"{type(exc).__name__}: {reason}") from None
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
                    raise Retryable(f"connection lost after {received} bytes: {exc}") from None
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
            raise Retryable(f"connection closed after {received} of {expected} bytes")


# --------------------------------------------------------------------------- Cloud Storage


class Bucket(Protocol):
    """What GcsSource uses of a `google.cloud.storage.Bucket`."""

    @property
    def name(self) -> str: ...

    def blob(self, blob_name: str) -> Any: ...


class GcsClient(Protocol):
    """What GcsSource uses of a `google.cloud.storage.Client`."""

    def bucket(self, bucket_name: str) -> Bucket: ...


@dataclass(frozen=True, kw_only=True)
class GcsSource:
    """`gs://bucket/prefix`: each file at `prefix/<DEST>`."""

    bucket: Bucket
    prefix: str

    @classmethod
    def from_url(cls, source: str, client: GcsClient | None = None) -> GcsSource:
        rest = source[len("gs://") :]
        bucket_name, _, prefix = rest.partition("/")
        if not bucket_name:
            raise ModelFilesError(f"bad Cloud Storage source {source!r}; expected gs://bucket[/prefix]")
        if client is None:
            import google.cloud.storage as storage  # a project dependency, imported when used

            client = storage.Client()
        return cls(bucket=client.bucket(bucket_name), prefix=prefix.strip("/"))

    @property
    def links(self) -> bool:
        return False

    def where(self, entry: ModelFile) -> str:
        return f"gs://{self.bucket.name}/{self._name(entry)}"

    def _name(self, entry: ModelFile) -> str:
        return f"{self.prefix}/{entry.dest}" if self.prefix else entry.dest

    def fetch(self, entry: ModelFile, path: Path) -> None:
        from google.api_core import exceptions as gexc  # a project dependency, imported when used

        name = self._name(entry)
        blob = self.bucket.blob(name)
        offset = path.stat().st_size if path.exists() else 0
        if entry.size is not None and offset >= entry.size:
            if offset == entry.size:
                return
            path.unlink()
            offset = 0
        try:
            with open(path, "ab") as out:
                # sha256 is verified afterwards; the client's own checksum cannot cover a resumed range
                blob.download_to_file(out, start=offset or None, raw_download=True, checksum=None)
        except gexc.NotFound:
            raise DownloadError(f"gs://{self.bucket.name}/{name}: not found") from None
        except gexc.Forbidden as exc:
            raise DownloadError(f"gs://{self.bucket.name}/{name}: access denied ({exc.message})") from None
        except gexc.RequestRangeNotSatisfiable:
            return  # part already holds the whole object
        except (TimeoutError, gexc.ServerError, gexc.TooManyRequests, ConnectionError) as exc:
            raise Retryable(f"{type(exc).__name__}: {exc}") from None
        except gexc.ClientError as exc:
            raise DownloadError(f"gs://{self.bucket.name}/{name}: {exc}") from None
        except Exception as exc:  # google-resumable-media and requests errors on a broken stream
            if type(exc).__module__.split(".")[0] in {"requests", "urllib3", "google"}:
                raise Retryable(f"{type(exc).__name__}: {exc}") from None
            raise


# --------------------------------------------------------------------------- a mounted folder


@dataclass(frozen=True, kw_only=True)
class MountedFolder:
    """A folder laid out like `models/` (a Cloud Storage volume, say): files are linked, not
    copied; `verify` hashes them too (the size is always checked)."""

    root: Path
    verify: bool = False

    def __post_init__(self) -> None:
        if not self.root.is_dir():
            raise ModelFilesError(f"models source folder not found: {self.root}")

    @property
    def links(self) -> bool:
        return True

    def where(self, entry: ModelFile) -> str:
        return str((self.root / entry.dest).absolute())

    def fetch(self, entry: ModelFile, path: Path) -> None:
        _link_local(entry, path, self.root, verify=self.verify)


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
