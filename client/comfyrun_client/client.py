"""A small client for the service: submit a workflow (sync or async), wait, save the outputs.

    comfyrun https://svc-…run.app workflow.json --out outputs/
    comfyrun URL workflow.json --async --priority high --image in.png
    comfyrun URL --workflow-id sdxl-txt2img --param prompt="a red fox" --param steps=20
    comfyrun URL workflow.json --stream            # live progress bar, then the outputs
    comfyrun URL workflow.json --raw image/png     # the one output file itself
    comfyrun URL workflow.json --url               # outputs stored, links printed

As a module:

    from comfyrun_client import Client
    client = Client("http://localhost:8080")
    job_id = client.submit(workflow, priority="high")
    status = client.wait(job_id)
    client.save_outputs(status, "outputs/")

On Cloud Run with authentication required, `--id-token` mints an identity token for the
service URL (google-auth's default credentials, else `gcloud auth print-identity-token`).
"""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote

import requests

FINAL = ("succeeded", "failed", "cancelled")
EVENT_STREAM = "text/event-stream"


@dataclass(frozen=True)
class RawOutput:
    """A raw /predict answer: the one output file, and the metadata the service sent in headers."""

    data: bytes
    content_type: str
    filename: str  # with the subfolder the workflow named, e.g. "portraits/out_00001_.png"
    prompt_id: str
    node_id: str
    outputs: dict[str, Any]


class ClientError(Exception):
    """The service answered with an error (its JSON `error` is in .error) or not at all."""

    def __init__(self, message: str, status: int | None = None, error: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.error = error or {}


def identity_token(audience: str) -> str:
    """An OIDC identity token for `audience`: service-account or metadata credentials, or gcloud."""
    try:
        import google.auth.transport.requests
        import google.oauth2.id_token

        token: str = google.oauth2.id_token.fetch_id_token(  # type: ignore[no-untyped-call]
            google.auth.transport.requests.Request(), audience
        )
        return token
    except Exception:
        pass
    try:
        out = subprocess.run(
            ["gcloud", "auth", "print-identity-token"], check=True, capture_output=True, text=True, timeout=30
        )
        return out.stdout.strip()
    except (OSError, subprocess.SubprocessError) as exc:
        raise ClientError(f"cannot get an identity token for {audience}: {exc}") from None


def image_entry(path: str | Path, name: str | None = None) -> dict[str, str]:
    """An `images` item from a local file (base64) or pass a URL through."""
    text = str(path)
    if text.startswith(("http://", "https://", "gs://")):
        return {"name": name or PurePosixPath(text.split("?", 1)[0]).name, "image": text}
    data = Path(path).read_bytes()
    return {"name": name or Path(path).name, "image": base64.b64encode(data).decode("ascii")}


class Client:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        api_key: str | None = None,
        timeout_s: float = 660.0,
        session: requests.Session | None = None,
    ):
        """`token`: a bearer token (a Google ID token behind Cloud Run's IAM, or an API key);
        `api_key`: an API key sent as `X-API-Key`, beside a token or alone."""
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.http = session or requests.Session()
        if token:
            self.http.headers["Authorization"] = f"Bearer {token}"
        if api_key:
            self.http.headers["X-API-Key"] = api_key

    # --- requests

    def _call(self, method: str, path: str, *, retries: int = 3, **kwargs: Any) -> dict[str, Any]:
        kwargs.setdefault("timeout", self.timeout_s)
        for attempt in range(retries + 1):
            try:
                response = self.http.request(method, self.base_url + path, **kwargs)
            except requests.RequestException as exc:
                if attempt < retries:
                    time.sleep(min(10, 2**attempt))
                    continue
                raise ClientError(f"cannot reach {self.base_url}: {exc}") from None
            if response.status_code == 503 and attempt < retries:  # ComfyUI booting: it says when
                time.sleep(min(30.0, float(response.headers.get("Retry-After", "5") or 5)))
                continue
            try:
                body = response.json()
            except ValueError:
                body = {}
            if response.status_code >= 400:
                error = body.get("error") if isinstance(body, dict) else None
                message = error.get("message") if isinstance(error, dict) else response.text[:300]
                raise ClientError(f"HTTP {response.status_code}: {message}", response.status_code, error)
            if not isinstance(body, dict):
                raise ClientError(
                    f"HTTP {response.status_code}: not a JSON object: {response.text[:300]}", response.status_code
                )
            return body
        raise AssertionError("unreachable")

    @staticmethod
    def body(
        workflow: dict[str, Any] | None = None,
        *,
        workflow_id: str | None = None,
        params: dict[str, Any] | None = None,
        images: Iterable[dict[str, str]] | None = None,
        output: Any = None,
        timeout: float | None = None,
        **extra: Any,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {}
        if workflow_id:
            body["workflow_id"] = workflow_id
            body["params"] = params or {}
        elif workflow is not None:
            body["workflow"] = workflow
        images = list(images or [])
        if images:
            body["images"] = images
        if output is not None:
            body["output"] = output
        if timeout is not None:
            body["timeout"] = timeout
        body.update({k: v for k, v in extra.items() if v is not None})
        return body

    def predict(
        self, workflow: dict[str, Any] | None = None, *, delivery: str | None = None, **kwargs: Any
    ) -> dict[str, Any]:
        """Run and wait on one connection; returns the /predict response: base64 images, or
        with `delivery="url"` links to the stored files (`uri`, `url`)."""
        return self._call("POST", "/predict", json=self._with_delivery(self.body(workflow, **kwargs), delivery))

    @staticmethod
    def _with_delivery(body: dict[str, Any], delivery: str | None) -> dict[str, Any]:
        if delivery:
            output = body.get("output") or {}
            body["output"] = {**({"format": output} if isinstance(output, str) else output), "delivery": delivery}
        return body

    def predict_raw(
        self, workflow: dict[str, Any] | None = None, *, accept: str = "image/*", **kwargs: Any
    ) -> RawOutput:
        """Run a workflow with exactly one file output and get that file itself (no base64).
        `accept` names the types wanted (image/png, image/webp re-encodes a still image, video/mp4, …)."""
        response = self._send(json=self.body(workflow, **kwargs), headers={"Accept": accept})
        headers = response.headers
        return RawOutput(
            data=response.content,
            content_type=headers.get("Content-Type", "application/octet-stream"),
            filename=unquote(headers.get("X-Output-Filename", "output")),
            prompt_id=headers.get("X-Prompt-Id", ""),
            node_id=unquote(headers.get("X-Output-Node", "")),
            outputs=json.loads(headers.get("X-Outputs", "{}")),
        )

    def stream(
        self,
        workflow: dict[str, Any] | None = None,
        *,
        previews: bool = False,
        delivery: str | None = None,
        **kwargs: Any,
    ) -> Iterator[tuple[str, dict[str, Any]]]:
        """Run with live progress: yields (event, data) as they come (`download`, `queued`, `started`,
        `progress`, `executed`, `preview`), then ("result", the answer a plain call returns).
        An `error` event raises ClientError with the status and error of a plain call."""
        body = self._with_delivery(self.body(workflow, **kwargs), delivery)
        if previews:
            body["previews"] = True
        response = self._send(json=body, headers={"Accept": EVENT_STREAM}, stream=True)
        with response:
            for kind, data in _events(response):
                if kind == "error":
                    error = data.get("body", {}).get("error") or {}
                    raise ClientError(
                        f"HTTP {data.get('status_code')}: {error.get('message')}", data.get("status_code"), error
                    )
                yield kind, data
                if kind == "result":
                    return
        raise ClientError("the event stream ended without a result")

    def predict_stream(
        self,
        workflow: dict[str, Any] | None = None,
        *,
        on_event: Callable[[str, dict[str, Any]], None] | None = None,
        **kwargs: Any,
    ) -> dict[str, Any]:
        """`stream`, calling `on_event` for each progress event; returns the final answer."""
        for kind, data in self.stream(workflow, **kwargs):
            if kind == "result":
                return data
            if on_event is not None:
                on_event(kind, data)
        raise ClientError("the event stream ended without a result")

    def _send(self, **kwargs: Any) -> requests.Response:
        """POST /predict once, for answers that are not a JSON object (a file, an event stream)."""
        try:
            response = self.http.post(self.base_url + "/predict", timeout=self.timeout_s, **kwargs)
        except requests.RequestException as exc:
            raise ClientError(f"cannot reach {self.base_url}: {exc}") from None
        if response.status_code >= 400:
            try:
                error = response.json().get("error") or {}
            except ValueError:
                error = {}
            message = error.get("message") if isinstance(error, dict) else None
            raise ClientError(
                f"HTTP {response.status_code}: {message or response.text[:300]}",
                response.status_code,
                error if isinstance(error, dict) else None,
            )
        return response

    def submit(
        self,
        workflow: dict[str, Any] | None = None,
        *,
        priority: str = "normal",
        webhook: str | None = None,
        inline: bool | None = None,
        **kwargs: Any,
    ) -> str:
        """Queue a job; returns its id."""
        body = self.body(workflow, **kwargs)
        body["async"] = True
        body["priority"] = priority
        if webhook:
            body["webhook"] = {"url": webhook}
        if inline is not None:
            body["inline"] = inline
        return str(self._call("POST", "/predict", json=body, retries=1)["job_id"])

    def status(self, job_id: str) -> dict[str, Any]:
        return self._call("GET", f"/status/{job_id}", timeout=30)

    def cancel(self, job_id: str) -> dict[str, Any]:
        return self._call("POST", f"/cancel/{job_id}", timeout=30)

    def wait(
        self,
        job_id: str,
        *,
        timeout_s: float = 3600.0,
        poll_s: float = 1.0,
        on_status: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Follow the job until it is final: through the service's event stream of its status,
        or, where the service does not stream it or the stream breaks, by polling (backing off
        from 0.2 s to `poll_s`). `on_status` sees every status read, the final one included
        (the `comfyrun` command draws them)."""
        deadline = time.monotonic() + timeout_s
        followed = self._follow(job_id, deadline, timeout_s, on_status)
        if followed is not None:
            return followed
        delay = 0.2
        while True:
            current = self.status(job_id)
            if on_status is not None:
                on_status(current)
            if current["state"] in FINAL:
                return current
            if time.monotonic() > deadline:
                raise ClientError(f"job {job_id} is still {current['state']} after {timeout_s:g} s")
            time.sleep(delay)
            delay = min(poll_s, delay * 1.5)

    def _follow(
        self,
        job_id: str,
        deadline: float,
        timeout_s: float,
        on_status: Callable[[dict[str, Any]], None] | None,
    ) -> dict[str, Any] | None:
        """The job's final status through `GET /status/{id}` as events; None where the service
        answers otherwise (an older one, an error: polling says what it is) or the stream broke."""
        url = f"{self.base_url}/status/{job_id}"
        try:
            # The read timeout outlasts the service's 15 s keep-alive comments.
            with self.http.get(url, headers={"Accept": EVENT_STREAM}, stream=True, timeout=(30, 60)) as response:
                if response.status_code != 200 or not response.headers.get("Content-Type", "").startswith(EVENT_STREAM):
                    return None
                for kind, current in _events(response, on_line=lambda: self._check(job_id, deadline, timeout_s)):
                    if kind != "status" or not isinstance(current, dict):
                        continue
                    if on_status is not None:
                        on_status(current)
                    if current.get("state") in FINAL:
                        return current
        except requests.RequestException:
            return None
        return None

    @staticmethod
    def _check(job_id: str, deadline: float, timeout_s: float) -> None:
        if time.monotonic() > deadline:
            raise ClientError(f"job {job_id} is not final after {timeout_s:g} s")

    # --- outputs

    def save_outputs(self, answer: dict[str, Any], out_dir: str | Path) -> list[Path]:
        """Write every output of a /predict response or a finished job's status to `out_dir`,
        under the name ComfyUI gave it; never over an existing file (`write_new`)."""
        out = Path(out_dir)
        saved = []
        sync = "images" in answer  # a sync response holds base64 images; a job's status, files
        items: list[dict[str, Any]] = answer["images"] if sync else (answer.get("result") or {}).get("files", [])
        for item in items:
            data = base64.b64decode(item["image"]) if sync and "image" in item else self._fetch(item)
            relative = PurePosixPath(item.get("subfolder") or "", item["filename"])
            if relative.is_absolute() or ".." in relative.parts:
                relative = PurePosixPath(relative.name)
            saved.append(write_new(out.joinpath(*relative.parts), data))
        return saved

    def _fetch(self, item: dict[str, Any]) -> bytes:
        if item.get("base64"):
            return base64.b64decode(item["base64"])
        url = item.get("url")
        if url:
            # Signed URLs carry their own authorization; our own /outputs route wants the token.
            ours = url.startswith(self.base_url)
            response = (self.http if ours else requests).get(url, timeout=self.timeout_s)
            if response.status_code != 200:
                raise ClientError(f"downloading {item['filename']} failed: HTTP {response.status_code}")
            return response.content
        uri = item.get("uri", "")
        if uri.startswith("gs://"):
            import google.cloud.storage as storage

            bucket, _, name = uri[5:].partition("/")
            data: bytes = storage.Client().bucket(bucket).blob(name).download_as_bytes()
            return data
        raise ClientError(f"no way to download {item['filename']}: no URL, no data")


def write_new(path: Path, data: bytes) -> Path:
    """Write `data` to `path`, or, when a file is there already (ComfyUI numbers its outputs per
    run, so every run of a workflow makes `out_00001_.png`), to `stem-2.ext`, `stem-3.ext`, …: the
    first free name, taken atomically. Returns the path written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, number = path, 1
    while True:
        try:
            with open(candidate, "xb") as file:
                file.write(data)
            return candidate
        except FileExistsError:
            number += 1
            candidate = path.with_name(f"{path.stem}-{number}{path.suffix}")


def _events(response: requests.Response, on_line: Callable[[], None] | None = None) -> Iterator[tuple[str, Any]]:
    """(event, data) from a Server-Sent Events answer: `event:` then one `data:` line of JSON.
    `on_line`: called for every line, keep-alive comments included."""
    kind = None
    for line in response.iter_lines():
        if on_line is not None:
            on_line()
        if line.startswith(b"event: "):
            kind = line[7:].decode()
        elif line.startswith(b"data: ") and kind:
            yield kind, json.loads(line[6:])
            kind = None
