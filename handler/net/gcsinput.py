"""Input images named by a `gs://bucket/object` URI, read with the service's own credentials.

Contract: a gs:// input is accepted only when URL_ALLOWLIST names its bucket as `gs://bucket`
(any object) or `gs://bucket/folder` (objects under that folder, whole path segments only:
`gs://b/inputs` admits `inputs/x.png`, never `inputs-private/x.png` nor `inputsx`): the service account can
usually read far more than callers should (the job store among it), so nothing is readable by
default, the way private addresses are refused to https URLs unless allowlisted. The object is
read when the job runs, within the request's deadline, and at most MAX_INPUT_BYTES of it: a
larger object is a 413. A missing or unreadable object is a 400 `fetch_failed`; Cloud Storage
being unavailable is a 503. Against an emulator (STORAGE_EMULATOR_HOST) no credentials are used.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any

from handler.config.cloud import CloudSettings
from handler.config.jobs import JobSettings
from handler.config.urls import UrlSettings
from handler.errors import PayloadTooLarge, StorageUnavailable, UnsafeURL
from handler.net.urlguard import FetchFailed

# Bucket names: 3-222 characters of lowercase letters, digits, dashes, underscores and dots.
_BUCKET = re.compile(r"^[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]$")
_clients: dict[tuple[str | None, str | None], Any] = {}
_clients_lock = threading.Lock()


@dataclass(frozen=True)
class GcsObject:
    bucket: str
    name: str

    @property
    def uri(self) -> str:
        return f"gs://{self.bucket}/{self.name}"


def is_gcs_uri(value: str) -> bool:
    return value.startswith("gs://")


def _allowed(obj: GcsObject, allowlist: tuple[str, ...]) -> bool:
    for entry in allowlist:
        entry = entry.strip()
        if not entry.startswith("gs://"):
            continue
        bucket, _, prefix = entry[5:].partition("/")
        folder = prefix.strip("/")
        if bucket == obj.bucket and (not folder or obj.name.startswith(folder + "/")):
            return True
    return False


def check_gcs_uri(uri: str, *, urls: UrlSettings, purpose: str) -> GcsObject:
    """The object a gs:// URI names, or UnsafeURL when it is malformed or not allowlisted."""
    bucket, _, name = uri[5:].partition("/")
    if not _BUCKET.match(bucket) or not name or len(name.encode()) > 1024 or "\0" in name or "\n" in name:
        raise UnsafeURL(f"{purpose}: {uri[:200]!r} is not a gs://bucket/object URI")
    obj = GcsObject(bucket, name)
    if not _allowed(obj, urls.url_allowlist):
        raise UnsafeURL(
            f"{purpose}: gs://{bucket}/… is not allowlisted; add gs://{bucket} (or gs://{bucket}/prefix) "
            "to URL_ALLOWLIST to let callers read it with the service's credentials"
        )
    return obj


def _client(jobs: JobSettings, cloud: CloudSettings) -> Any:
    key = (jobs.storage_emulator_host, cloud.gcp_project)
    with _clients_lock:
        client = _clients.get(key)
        if client is None:
            from google.cloud import storage  # lazily: the local mode needs no Google libraries

            if jobs.storage_emulator_host:
                from google.auth.credentials import AnonymousCredentials

                host = jobs.storage_emulator_host
                client = storage.Client(
                    project=cloud.gcp_project or "local",
                    credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
                    client_options={"api_endpoint": host if "://" in host else "http://" + host},
                )
            else:
                client = storage.Client(project=cloud.gcp_project)
            _clients[key] = client
        return client


def client(*, jobs: JobSettings, cloud: CloudSettings) -> Any:
    """The service's Cloud Storage client (the emulator's when STORAGE_EMULATOR_HOST is set)."""
    return _client(jobs, cloud)


def read_gcs(
    uri: str, *, urls: UrlSettings, jobs: JobSettings, cloud: CloudSettings, max_bytes: int, timeout_s: float
) -> bytes:
    obj = check_gcs_uri(uri, urls=urls, purpose="input image")
    from google.api_core import exceptions as gexc

    try:
        blob = _client(jobs, cloud).bucket(obj.bucket).blob(obj.name)
        # One byte more than allowed tells a too-large object apart without a metadata call.
        data: bytes = blob.download_as_bytes(start=0, end=max_bytes, timeout=timeout_s)
    except (gexc.NotFound, gexc.Forbidden, gexc.Unauthorized):
        raise FetchFailed(f"input image {obj.uri[:200]}: no such object, or the service may not read it") from None
    except gexc.RequestRangeNotSatisfiable:
        data = b""  # an empty object
    except Exception as exc:
        raise StorageUnavailable(
            f"input image {obj.uri[:200]}: Cloud Storage did not answer ({type(exc).__name__})"
        ) from None
    if len(data) > max_bytes:
        raise PayloadTooLarge(f"input image {obj.uri[:200]} is larger than {max_bytes} bytes")
    return data
