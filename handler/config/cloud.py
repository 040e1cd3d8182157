"""Settings of where the service runs: Cloud Run, the role it plays, the URLs the roles reach each
other at, and who may deliver tasks. One section of `Settings` (handler/config/settings.py).

Several defaults here depend on other settings (`K_SERVICE`, `SERVICE_URL`); `Settings.from_env`
fills them in after reading every variable."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import ClassVar

from handler.config.declare import Section, setting, url


class ServiceRole(str, enum.Enum):
    """What this process serves (docs/architecture.md, "Roles")."""

    ALL = "all"  # everything in one process: the local, embedded mode
    API = "api"  # no ComfyUI, CPU only: async submits, status, cancel, listings, webhook delivery
    WORKER = "worker"  # ComfyUI on the GPU: sync /predict, /healthz, /models, /tasks/run

    @property
    def runs_comfy(self) -> bool:
        return self is not ServiceRole.API

    @property
    def accepts_jobs(self) -> bool:
        return self is not ServiceRole.WORKER


@dataclass(frozen=True, kw_only=True)
class CloudSettings(Section):
    """Cloud mode (on Cloud Run) demands https URLs and verifies task tokens. A role that receives
    tasks must be the URL they are sent to: role `all` is both `WORKER_URL` and `API_URL`,
    `worker` is `WORKER_URL`, `api` is `API_URL` (a task's token is minted for the URL it targets
    and checked against `SERVICE_URL` where it lands)."""

    TITLE: ClassVar[str] = "Cloud Run and roles"

    cloud_run_service: str | None = setting(
        env="K_SERVICE",
        default=None,
        shown="set by Cloud Run",
        help='the Cloud Run service\'s name; its presence means "on Cloud Run" for the defaults below',
    )
    cloud_mode: bool = setting(
        env="CLOUD_MODE",
        default=False,
        shown="on when `K_SERVICE` is set",
        help="https-only URLs, task tokens verified, request bodies capped at what Cloud Run accepts",
    )
    service_role: ServiceRole = setting(
        env="SERVICE_ROLE",
        default=ServiceRole.ALL,
        help="`all` (one process, the local mode), `api` (no ComfyUI: async submits, status, webhooks; needs "
        "Cloud Tasks) or `worker` (ComfyUI: sync `/predict`, `/models`, `/tasks/run`); see docs/architecture.md",
    )
    service_url: str | None = setting(
        env="SERVICE_URL", default=None, parse=url, help="this service's own URL: the audience of the tasks sent to it"
    )
    api_url: str | None = setting(
        env="API_URL",
        default=None,
        parse=url,
        shown="`SERVICE_URL`",
        help="where webhook tasks go (the api role) when the roles are split",
    )
    worker_url: str | None = setting(
        env="WORKER_URL",
        default=None,
        parse=url,
        shown="`SERVICE_URL`",
        help="where job tasks and sync calls go (the worker role) when the roles are split",
    )
    verify_task_tokens: bool = setting(
        env="VERIFY_TASK_TOKENS",
        default=False,
        shown="cloud mode",
        help="task deliveries (`/tasks/run`, `/tasks/webhook`, `X-CloudTasks-*` to `/predict`) need an OIDC "
        "token for `SERVICE_URL` and `TASKS_SERVICE_ACCOUNT`",
    )
    ingress_verifies_tokens: bool = setting(
        env="INGRESS_VERIFIES_TOKENS",
        default=False,
        shown="on Cloud Run unless `PUBLIC_SERVICE`",
        help="accept task tokens whose signature Cloud Run's IAM checked and stripped (claims are checked "
        "all the same)",
    )
    public_service: bool = setting(
        env="PUBLIC_SERVICE",
        default=False,
        help="the Cloud Run service allows unauthenticated calls, so no IAM check stands in front of it",
    )
    gcp_project: str | None = setting(
        env=("GOOGLE_CLOUD_PROJECT", "GCP_PROJECT"),
        default=None,
        help="the Google Cloud project of Cloud Tasks and Cloud Storage",
    )
