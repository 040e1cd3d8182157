"""`Settings`: every setting of the service, read from the environment in one place.

`Settings` is the union of the sections (handler/config/http.py, comfyui.py, cloud.py, jobs.py,
webhooks.py, urls.py, models.py, observability.py), each a frozen dataclass whose fields are
declared once with `setting()`. A collaborator takes the section(s) it needs, never `Settings`:
the composition roots (handler/services.py, app.py, server.py, __main__.py) hand it
`settings.<section>`, a copy of that section's fields alone (tests/test_architecture.py holds the
rule); any `Settings` is also each of its sections, so a test may pass one where a section is
expected. `from_env` reads every declared field (handler/config/declare.py), then
fills in the defaults that depend on other settings and makes the checks that span several.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import ClassVar, TypeVar

from handler.config.access import AccessSettings
from handler.config.cloud import CloudSettings, ServiceRole
from handler.config.comfyui import ComfyUISettings
from handler.config.declare import ConfigError, Section, read
from handler.config.http import CLOUD_RUN_MAX_REQUEST_BYTES, HttpSettings
from handler.config.jobs import JobSettings
from handler.config.models import ModelSettings
from handler.config.observability import ObservabilitySettings
from handler.config.urls import UrlSettings
from handler.config.webhooks import WebhookSettings

S = TypeVar("S", bound=Section)

# The sections in the order docs/configuration.md shows them.
SECTIONS: tuple[type[Section], ...] = (
    HttpSettings,
    ComfyUISettings,
    CloudSettings,
    AccessSettings,
    JobSettings,
    WebhookSettings,
    UrlSettings,
    ModelSettings,
    ObservabilitySettings,
)


# A dataclass collects its fields from the last base to the first: the bases in reverse order of
# SECTIONS keep the fields in that order.
@dataclass(frozen=True, kw_only=True)
class Settings(
    ObservabilitySettings,
    ModelSettings,
    UrlSettings,
    WebhookSettings,
    JobSettings,
    AccessSettings,
    CloudSettings,
    ComfyUISettings,
    HttpSettings,
):
    """Every setting (docs/configuration.md)."""

    TITLE: ClassVar[str] = "Settings"

    def section(self, kind: type[S]) -> S:
        """The fields of section `kind` alone, as that section."""
        return kind(**{f.name: getattr(self, f.name) for f in dataclasses.fields(kind)})

    @cached_property
    def http(self) -> HttpSettings:
        return self.section(HttpSettings)

    @cached_property
    def comfyui(self) -> ComfyUISettings:
        return self.section(ComfyUISettings)

    @cached_property
    def cloud(self) -> CloudSettings:
        return self.section(CloudSettings)

    @cached_property
    def access(self) -> AccessSettings:
        return self.section(AccessSettings)

    @cached_property
    def jobs(self) -> JobSettings:
        return self.section(JobSettings)

    @cached_property
    def webhooks(self) -> WebhookSettings:
        return self.section(WebhookSettings)

    @cached_property
    def urls(self) -> UrlSettings:
        return self.section(UrlSettings)

    @cached_property
    def models(self) -> ModelSettings:
        return self.section(ModelSettings)

    @cached_property
    def observability(self) -> ObservabilitySettings:
        return self.section(ObservabilitySettings)

    @property
    def model_cache_root(self) -> Path:
        """Where models fetched by URL are kept (MODEL_CACHE_DIR)."""
        return self.cache_root(self.comfyui_base_dir)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """The settings `env` (by default the process's environment) holds; `ConfigError` names
        the first variable whose value cannot be used."""
        values, given = read(cls, os.environ if env is None else env)
        _derive_defaults(values, given)
        _check(values)
        return cls(**values)


def _derive_defaults(values: dict[str, object], given: set[str]) -> None:
    """The defaults that depend on other settings, for the settings that were not set."""

    def default(name: str, value: object) -> None:
        if name not in given:
            values[name] = value

    on_cloud_run = bool(values["cloud_run_service"])
    default("cloud_mode", on_cloud_run)
    if values["tasks_location"]:
        default("queue_backend", "cloudtasks")
    if values["gcs_bucket"]:
        default("storage_backend", "gcs")
    if values["cloud_mode"]:
        default("max_body_bytes", CLOUD_RUN_MAX_REQUEST_BYTES)
    if on_cloud_run:
        default("log_format", "json")
    default("access_log", values["log_format"] == "json" or values["log_level"] == "DEBUG")
    default("verify_task_tokens", values["cloud_mode"])
    # Behind Cloud Run's IAM (not a public service) token signatures are checked before us.
    default("ingress_verifies_tokens", on_cloud_run and not values["public_service"])
    for name in ("api_url", "worker_url"):
        if values[name] is None:  # unset, or "/"
            values[name] = values["service_url"]
    # `--cpu` in COMFYUI_ARGS is an explicit CPU run: it needs no GPU, whatever REQUIRE_GPU says.
    args = values["comfyui_args"]
    assert isinstance(args, tuple)
    values["require_gpu"] = bool(values["require_gpu"]) and "--cpu" not in args


def _check(values: dict[str, object]) -> None:
    """The checks no single setting can make."""
    role = values["service_role"]
    queue_backend = values["queue_backend"]
    if role is ServiceRole.API and queue_backend != "cloudtasks":
        raise ConfigError("SERVICE_ROLE=api needs Cloud Tasks (QUEUE_BACKEND=cloudtasks): workers run elsewhere")
    # A task's token is minted for the URL it targets and checked against SERVICE_URL where it
    # lands: a role that receives job tasks (all, worker) must be WORKER_URL, one that receives
    # webhook tasks (all, api) API_URL, or every delivery is refused (401) and retried for a day.
    service_url = values["service_url"]
    if queue_backend == "cloudtasks" and service_url:
        assert isinstance(role, ServiceRole)
        receives = {ServiceRole.ALL: ("WORKER_URL", "API_URL"), ServiceRole.WORKER: ("WORKER_URL",)}
        urls = {"WORKER_URL": values["worker_url"], "API_URL": values["api_url"]}
        for name in receives.get(role, ("API_URL",)):
            if urls[name] != service_url:
                raise ConfigError(
                    f"SERVICE_ROLE={role.value} receives the tasks sent to {name}, so {name} "
                    f"({urls[name]}) must be this service's SERVICE_URL ({service_url})"
                )
    if values["storage_backend"] == "gcs" and not values["gcs_bucket"]:
        raise ConfigError("STORAGE_BACKEND=gcs needs GCS_BUCKET")
    # The job bucket holds every caller's stored requests and outputs: as an input source, any
    # caller could read them (job ids and run tokens are the only thing in the way).
    job_bucket = values["gcs_bucket"]
    allowlist = values["url_allowlist"]
    assert isinstance(allowlist, tuple)
    if job_bucket and any(entry.split("/")[2:3] == [job_bucket] for entry in allowlist if entry.startswith("gs://")):
        raise ConfigError(
            f"URL_ALLOWLIST names GCS_BUCKET ({job_bucket}), which holds every caller's jobs and outputs; "
            "keep inputs in a bucket of their own"
        )
    if values["public_service"]:  # anyone can reach it: keys decide, and no token is taken as checked
        if values["ingress_verifies_tokens"]:
            raise ConfigError(
                "PUBLIC_SERVICE: Cloud Run checks no token in front of it, so INGRESS_VERIFIES_TOKENS must be off"
            )
        if not (values["api_keys_file"] or values["api_keys"]):
            raise ConfigError("PUBLIC_SERVICE needs API keys (API_KEYS_FILE or API_KEYS): anyone can reach it")
