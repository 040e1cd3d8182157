"""`Access`: the keys, the limits and the settings that decide who calls; `AccessGate`: the ASGI
middleware that puts the checked caller on every request (`scope["state"]["caller"]`) or
answers 401 in the one JSON error shape before any route runs.

Open without a caller: `/healthz` (Cloud Run's probes), `/tasks/run` and `/tasks/webhook`, and
`/predict` carrying `X-CloudTasks-TaskName` where task tokens are checked: those routes check
Cloud Tasks' token themselves (handler/tasktoken.py). Roles are checked by the routes.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from handler.access.identity import Caller, identify
from handler.access.keys import KeyRing
from handler.access.limits import Limits
from handler.config.access import AccessSettings
from handler.config.cloud import CloudSettings
from handler.errors import ServiceError

OPEN_PATHS = frozenset({"/healthz", "/tasks/run", "/tasks/webhook"})


@dataclass(frozen=True, kw_only=True)
class Access:
    access: AccessSettings
    cloud: CloudSettings
    keys: KeyRing
    limits: Limits = field(default_factory=Limits)

    @classmethod
    def from_settings(cls, *, access: AccessSettings, cloud: CloudSettings) -> Access:
        return cls(access=access, cloud=cloud, keys=KeyRing.from_settings(access=access))

    def caller(self, headers: Headers) -> Caller:
        return identify(headers, access=self.access, cloud=self.cloud, keys=self.keys)

    def is_open(self, path: str, headers: Headers) -> bool:
        if path in OPEN_PATHS:
            return True
        return path == "/predict" and self.cloud.verify_task_tokens and "x-cloudtasks-taskname" in headers


class AccessGate:
    def __init__(self, app: ASGIApp, access: Access) -> None:
        self.app = app
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if not self.access.is_open(scope["path"], headers):
            try:
                caller = self.access.caller(headers)
            except ServiceError as exc:
                answer = JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=exc.headers)
                await answer(scope, receive, send)
                return
            scope.setdefault("state", {})["caller"] = caller
        await self.app(scope, receive, send)
