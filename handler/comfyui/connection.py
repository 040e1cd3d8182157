"""`ComfyConnection`: what the service uses of its connection to ComfyUI, implemented by
`client.ComfyClient` (and by the in-process tests' double); `instance.Comfy` holds one."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from handler.comfyui.client import PromptWatch


class ComfyConnection(Protocol):
    """What the service uses of its connection to ComfyUI (`ComfyClient`; a test double in the
    in-process tests). `on_connect` and `on_disconnect` are called on the connection's own
    thread after every websocket (re)connect and drop."""

    on_connect: Callable[[], None] | None
    on_disconnect: Callable[[], None] | None
    connects: int

    @property
    def connected(self) -> bool: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def comfy_listening(self) -> None: ...

    def comfy_exited(self) -> None: ...

    def get_json(self, path: str, timeout_s: float = 30.0) -> Any: ...

    def watch(self, prompt_id: str) -> PromptWatch: ...

    def forget(self, prompt_id: str) -> None: ...

    def in_flight(self) -> list[PromptWatch]: ...

    def ahead_of(self, prompt_id: str) -> int: ...

    def submit(
        self, graph: dict[str, Any], prompt_id: str, number: float | None = None, *, folder: str | None = None
    ) -> None: ...

    def interrupt(self, prompt_id: str, timeout_s: float = 30.0) -> None: ...

    def queued(self, prompt_id: str, timeout_s: float = 30.0) -> bool: ...

    def history(self, prompt_id: str) -> dict[str, Any] | None: ...
