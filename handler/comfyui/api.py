"""ComfyUI's HTTP API as the service uses it: queue a prompt, drop or interrupt one, read the
queue, a prompt's history and any JSON endpoint (the catalogue, system stats, model lists).

The JSON calls go through urllib3's connection pool: requests' session layer costs about twice
the CPU per call, and one is on the path of every prompt. Uploads and `/view` downloads (attached
to a ComfyUI without shared folders) keep a requests session (`http`), for its multipart and
streaming. No call retries: callers decide.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3

from handler.errors import ComfyUnavailable, ServiceError, WorkflowInvalid

JSON_HEADERS = {"Content-Type": "application/json"}
# The key of `extra_data` that names a prompt's request folder for the isolation extension.
ISOLATION_KEY = "comfyrun_folder"


@dataclass(frozen=True)
class Answer:
    """ComfyUI's answer to one API call, read in full."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)


class ComfyAPI:
    def __init__(self, base_url: str, *, client_id: str):
        self.base_url = base_url.rstrip("/")
        self.client_id = client_id  # prompts queued with it report on the websocket of that id
        self._api = urllib3.connection_from_url(self.base_url, maxsize=32, block=False)
        self._api_path = urlsplit(self.base_url).path
        self.http = requests.Session()
        adapter = requests.adapters.HTTPAdapter(pool_connections=4, pool_maxsize=32)
        self.http.mount("http://", adapter)
        self.http.mount("https://", adapter)

    def close(self) -> None:
        self._api.close()
        self.http.close()

    def submit(
        self, graph: dict[str, Any], prompt_id: str, number: float | None = None, *, folder: str | None = None
    ) -> None:
        """Queue a prompt. ComfyUI's queue is a heap on `number` (lowest runs first); without
        one, ComfyUI numbers prompts in arrival order. `folder`: the request folder the isolation
        extension scopes the prompt to (`extension/comfyrun_isolation`)."""
        body: dict[str, Any] = {"prompt": graph, "client_id": self.client_id, "prompt_id": prompt_id}
        if number is not None:
            body["number"] = number
        if folder is not None:
            body["extra_data"] = {ISOLATION_KEY: folder}
        response = self._request("POST", "/prompt", body=body)
        if response.status_code == 200:
            return
        try:
            payload = response.json()
        except ValueError:
            payload = {}
        if response.status_code == 400 and isinstance(payload, dict) and "error" in payload:
            error = payload.get("error") or {}
            message = error.get("message") if isinstance(error, dict) else str(error)
            raise WorkflowInvalid(
                f"ComfyUI refused the workflow: {message}",
                comfyui_error=error,
                node_errors=payload.get("node_errors") or {},
            )
        raise ServiceError(f"ComfyUI answered {response.status_code} to the job submission")

    def interrupt(self, prompt_id: str, timeout_s: float = 30.0) -> None:
        """Stop a prompt wherever it is: drop it from the queue, or interrupt it if running.
        ComfyUI's per-job cancel checks and interrupts under its queue's lock; `/interrupt`
        checks, then raises a global flag, which a prompt ending in between leaves for the next
        one (another caller's). The two old calls serve a ComfyUI without the route (or any other
        answer than 200)."""
        cancel = self._request("POST", f"/api/jobs/{quote(prompt_id, safe='')}/cancel", timeout=timeout_s)
        if cancel.status_code == 200:
            return
        self._request("POST", "/queue", timeout=timeout_s, body={"delete": [prompt_id]})
        self._request("POST", "/interrupt", timeout=timeout_s, body={"prompt_id": prompt_id})

    def queued(self, prompt_id: str, timeout_s: float = 30.0) -> bool:
        """Whether ComfyUI still holds the prompt, running or pending."""
        queue = self.get_json("/queue", timeout_s)
        entries = (queue.get("queue_running") or []) + (queue.get("queue_pending") or [])
        return any(len(entry) > 1 and entry[1] == prompt_id for entry in entries)

    def history(self, prompt_id: str) -> dict[str, Any] | None:
        response = self._request("GET", f"/history/{prompt_id}")
        if response.status_code != 200:
            return None
        return (response.json() or {}).get(prompt_id)

    def remove_folder(self, folder: str, timeout_s: float = 30.0) -> bool:
        """Remove a request folder under ComfyUI's input, output and temp folders, through the
        isolation extension: how files go from a ComfyUI on another machine. False without it."""
        return self._request("DELETE", f"/comfyrun/folders/{folder}", timeout=timeout_s).status_code == 204

    def empty_file(self, kind: str, subfolder: str, filename: str, timeout_s: float = 30.0) -> bool:
        """Overwrite a file of ComfyUI's input, output or temp folder (`kind`) with nothing,
        through its upload route: how a run's files lose their bytes on a ComfyUI without the
        isolation extension, whose API deletes nothing (the empty file keeps its name)."""
        try:
            response = self.http.post(
                f"{self.base_url}/upload/image",
                files={"image": (filename, b"")},
                data={"subfolder": subfolder, "type": kind, "overwrite": "true"},
                timeout=timeout_s,
            )
        except requests.RequestException as exc:
            raise ComfyUnavailable(f"cannot reach ComfyUI ({type(exc).__name__})") from None
        return response.status_code == 200

    def get_json(self, path: str, timeout_s: float = 30.0) -> Any:
        response = self._request("GET", path, timeout=timeout_s)
        if response.status_code != 200:
            raise ServiceError(f"ComfyUI answered {response.status_code} to GET {path}")
        return response.json()

    def _request(self, method: str, path: str, timeout: float = 30.0, body: Any = None) -> Answer:
        """One call to ComfyUI's JSON API; `body` is sent as JSON. No retries: callers decide."""
        data = None if body is None else json.dumps(body).encode()
        try:
            response = self._api.urlopen(
                method,
                self._api_path + path,
                body=data,
                headers=JSON_HEADERS if data is not None else None,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
                retries=False,
                redirect=False,
            )
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ComfyUnavailable(f"cannot reach ComfyUI ({type(exc).__name__})") from None
        return Answer(response.status, response.data)
