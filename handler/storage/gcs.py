"""A Store in a Cloud Storage bucket.

cas_json maps onto Cloud Storage's own preconditions (`ifGenerationMatch`, 0 = must not
exist), so two instances racing for one job's state cannot both win. Signed URLs are V4; on
Cloud Run the default credentials cannot sign locally, so signing goes through the IAM
signBlob API with the service account's access token (the account needs
`iam.serviceAccounts.signBlob` on itself). Against an emulator there are no credentials, so
there are no signed URLs: `signed_url` returns None and results carry only gs:// URIs.
"""

from __future__ import annotations

import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

import google.auth
import google.auth.credentials
import google.auth.transport.requests
from google.api_core import exceptions as gexc
from google.auth.credentials import AnonymousCredentials
from google.cloud import storage
from google.cloud.storage.retry import DEFAULT_RETRY

from handler.storage.base import PreconditionFailed, Versioned, check_key, check_prefix, dump_json

log = logging.getLogger(__name__)

_MAX_SIGNED_TTL_S = 7 * 24 * 3600  # the V4 limit
# Every call is bounded well inside a run's lease (60 s): the client's default retries a
# conditional write for up to 120 s, which would let a lease lapse while its renewal waits.
CALL_TIMEOUT_S = 10.0
RETRY = DEFAULT_RETRY.with_timeout(20.0)


class GCSStore:
    on_local_disk = False

    def __init__(
        self,
        bucket: str,
        *,
        project: str | None = None,
        emulator_host: str | None = None,
        client: storage.Client | None = None,
    ):
        if client is None:
            if emulator_host:
                if "://" not in emulator_host:
                    emulator_host = "http://" + emulator_host
                # google-auth marks itself typed (py.typed) but leaves these methods unannotated.
                self._credentials: google.auth.credentials.Credentials = AnonymousCredentials()  # type: ignore[no-untyped-call]
                client = storage.Client(
                    project=project or "local",
                    credentials=self._credentials,
                    client_options={"api_endpoint": emulator_host},
                )
            else:
                self._credentials, default_project = google.auth.default(
                    scopes=["https://www.googleapis.com/auth/cloud-platform"]
                )
                client = storage.Client(project=project or default_project, credentials=self._credentials)
        else:
            self._credentials = client._credentials
        self.client = client
        self.bucket_name = bucket
        self.bucket = client.bucket(bucket)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.bucket.blob(check_key(key)).upload_from_string(
            data, content_type=content_type, timeout=CALL_TIMEOUT_S, retry=RETRY
        )

    def get_bytes(self, key: str) -> bytes | None:
        try:
            data: bytes = self.bucket.blob(check_key(key)).download_as_bytes(timeout=CALL_TIMEOUT_S, retry=RETRY)
            return data
        except gexc.NotFound:
            return None

    def put_json(self, key: str, obj: Any) -> int:
        blob = self.bucket.blob(check_key(key))
        blob.upload_from_string(dump_json(obj), content_type="application/json", timeout=CALL_TIMEOUT_S, retry=RETRY)
        return int(blob.generation)

    def get_json(self, key: str) -> Versioned | None:
        blob = self.bucket.blob(check_key(key))
        try:
            data = blob.download_as_bytes(timeout=CALL_TIMEOUT_S, retry=RETRY)
        except gexc.NotFound:
            return None
        # The download response names the generation it served, so data and number agree.
        return Versioned(json.loads(data), int(blob.generation))

    def cas_json(self, key: str, obj: Any, *, generation: int) -> int:
        blob = self.bucket.blob(check_key(key))
        try:
            blob.upload_from_string(
                dump_json(obj),
                content_type="application/json",
                if_generation_match=generation,
                timeout=CALL_TIMEOUT_S,
                retry=RETRY,
            )
        except (gexc.PreconditionFailed, gexc.NotFound) as exc:
            raise PreconditionFailed(f"{key}: not at generation {generation}") from exc
        return int(blob.generation)

    def delete(self, key: str) -> None:
        try:
            self.bucket.blob(check_key(key)).delete(timeout=CALL_TIMEOUT_S, retry=RETRY)
        except gexc.NotFound:
            pass

    def list(self, prefix: str) -> list[str]:
        check_prefix(prefix)
        return sorted(b.name for b in self.client.list_blobs(self.bucket, prefix=prefix, timeout=CALL_TIMEOUT_S))

    def delete_prefix(self, prefix: str) -> int:
        if not check_prefix(prefix):
            raise ValueError("refusing to delete a whole bucket")
        count = 0
        for blob in self.client.list_blobs(self.bucket, prefix=prefix):
            try:
                blob.delete()
                count += 1
            except gexc.NotFound:
                pass
        return count

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{check_key(key)}"

    def local_file(self, key: str) -> Path | None:
        check_key(key)
        return None  # objects live in the bucket: callers get signed URLs

    def signed_url(self, key: str, ttl_s: int) -> str | None:
        creds = self._credentials
        if isinstance(creds, AnonymousCredentials):
            return None
        kwargs: dict[str, Any] = {}
        try:
            if not isinstance(creds, google.auth.credentials.Signing):
                # Metadata-server credentials: sign remotely through IAM with our own token.
                if not creds.valid:
                    creds.refresh(google.auth.transport.requests.Request())  # type: ignore[no-untyped-call]  # unannotated in google-auth
                kwargs = {
                    # compute_engine.Credentials has it; the base class that types `creds` does not.
                    "service_account_email": creds.service_account_email,  # type: ignore[attr-defined]
                    "access_token": creds.token,
                }
            url: str = self.bucket.blob(check_key(key)).generate_signed_url(
                version="v4",
                expiration=timedelta(seconds=max(1, min(ttl_s, _MAX_SIGNED_TTL_S))),
                method="GET",
                **kwargs,
            )
            return url
        except Exception as exc:  # signing is a convenience: the gs:// URI still names the file
            log.warning("cannot sign a URL for %s: %s", key, exc)
            return None
