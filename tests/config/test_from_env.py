"""`Settings.from_env`, seen from outside: the defaults that depend on other settings, the names
in error messages, the variables with two names. Written against the public API only, so the
same module held for the loader before the settings were declared once and holds after."""

from __future__ import annotations

from pathlib import Path

import pytest

from handler.config import CLOUD_RUN_MAX_REQUEST_BYTES, ConfigError, ServiceRole, Settings

MiB = 1024 * 1024


def test_no_environment_is_the_declared_defaults() -> None:
    assert Settings.from_env({}) == Settings()


def test_empty_values_count_as_unset() -> None:
    assert Settings.from_env({"PORT": "", "STATE_DIR": "", "METRICS": "", "COMFYUI_ARGS": ""}) == Settings()


def test_cloud_run_turns_on_what_depends_on_it() -> None:
    settings = Settings.from_env({"K_SERVICE": "svc"})
    assert settings.cloud_mode and settings.verify_task_tokens and settings.ingress_verifies_tokens
    assert (settings.log_format, settings.access_log) == ("json", True)
    assert settings.max_body_bytes == CLOUD_RUN_MAX_REQUEST_BYTES


def test_what_is_set_wins_over_what_would_follow() -> None:
    settings = Settings.from_env(
        {
            "K_SERVICE": "svc",
            "CLOUD_MODE": "false",
            "LOG_FORMAT": "TEXT",
            "PUBLIC_SERVICE": "1",
            "API_KEYS": "keys",  # a public service needs keys
            "ACCESS_LOG": "no",
        }
    )
    assert not settings.cloud_mode and not settings.verify_task_tokens and not settings.ingress_verifies_tokens
    assert (settings.log_format, settings.access_log, settings.max_body_bytes) == ("text", False, 64 * MiB)
    assert Settings.from_env({"CLOUD_MODE": "1", "MAX_BODY_BYTES": "1000"}).max_body_bytes == 1000


def test_backends_follow_their_location_and_bucket() -> None:
    settings = Settings.from_env({"TASKS_LOCATION": "europe-west4", "GCS_BUCKET": "b"})
    assert (settings.queue_backend, settings.storage_backend) == ("cloudtasks", "gcs")
    local = Settings.from_env({"TASKS_LOCATION": "l", "QUEUE_BACKEND": "local", "STORAGE_BACKEND": "local"})
    assert (local.queue_backend, local.storage_backend) == ("local", "local")


def test_debug_logs_turn_on_the_access_log() -> None:
    assert Settings.from_env({"LOG_LEVEL": "DEBUG"}).access_log
    assert not Settings.from_env({"LOG_LEVEL": "WARNING"}).access_log


def test_role_urls_default_to_the_service_url_without_its_slash() -> None:
    settings = Settings.from_env({"SERVICE_URL": "https://self.run.app/", "SERVICE_ROLE": "worker"})
    assert settings.service_role is ServiceRole.WORKER
    assert settings.service_url == settings.api_url == settings.worker_url == "https://self.run.app"
    assert Settings.from_env({"SERVICE_URL": "https://s", "API_URL": "/"}).api_url == "https://s"


def test_the_first_of_two_names_wins() -> None:
    assert Settings.from_env({"GCP_PROJECT": "old"}).gcp_project == "old"
    assert Settings.from_env({"GOOGLE_CLOUD_PROJECT": "new", "GCP_PROJECT": "old"}).gcp_project == "new"


def test_counts_below_one_are_raised_to_one() -> None:
    settings = Settings.from_env({"JOB_MAX_ATTEMPTS": "0", "WEBHOOK_MAX_ATTEMPTS": "0", "LONG_RUN_THREADS": "0"})
    assert (settings.job_max_attempts, settings.webhook_max_attempts, settings.long_run_threads) == (1, 1, 1)
    assert Settings.from_env({"JOB_LEASE_TTL_S": "0.25"}).job_lease_ttl_s == 1.0


def test_a_cpu_run_needs_no_gpu() -> None:
    assert Settings.from_env({"REQUIRE_GPU": "true"}).require_gpu
    assert not Settings.from_env({"REQUIRE_GPU": "true", "COMFYUI_ARGS": "--cpu --lowvram"}).require_gpu


def test_another_bucket_of_the_same_prefix_may_be_allowed() -> None:
    settings = Settings.from_env({"GCS_BUCKET": "jobs-b", "URL_ALLOWLIST": "gs://jobs-b-inputs"})
    assert settings.url_allowlist == ("gs://jobs-b-inputs",)


def test_paths_lists_and_levels_are_parsed() -> None:
    settings = Settings.from_env(
        {
            "STATE_DIR": "/s",
            "WARMUP_WORKFLOW": "w.json",
            "URL_ALLOWLIST": " a.example, 10.0.0.0/8 ,,",
            "LOG_LEVEL": "debug",
            "TASKS_DISPATCH_DEADLINE_S": "900",
        }
    )
    assert (settings.state_dir, settings.warmup_workflow) == (Path("/s"), Path("w.json"))
    assert settings.url_allowlist == ("a.example", "10.0.0.0/8")
    assert (settings.log_level, settings.tasks_dispatch_deadline_s) == ("DEBUG", 900)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MAX_BODY_BYTES": "1.5"}, r"^MAX_BODY_BYTES must be a number, got '1.5'$"),
        ({"WEBHOOK_TIMEOUT_S": "soon"}, r"^WEBHOOK_TIMEOUT_S must be a number, got 'soon'$"),
        ({"JOB_LEASE_TTL_S": "-5"}, r"^JOB_LEASE_TTL_S must not be negative, got '-5'$"),
        ({"QUEUE_BACKEND": "sqs"}, r"^QUEUE_BACKEND must be local or cloudtasks, got 'sqs'$"),
        ({"STORAGE_BACKEND": "s3"}, r"^STORAGE_BACKEND must be local or gcs, got 's3'$"),
        ({"SERVICE_ROLE": "boss"}, r"^SERVICE_ROLE must be all, api or worker, got 'boss'$"),
        ({"LOG_FORMAT": "XML"}, r"^LOG_FORMAT must be json or text, got 'xml'$"),
        ({"SERVICE_ROLE": "api"}, r"^SERVICE_ROLE=api needs Cloud Tasks \(QUEUE_BACKEND=cloudtasks\)"),
        # every caller's stored requests and outputs would be readable as `gs://` inputs
        ({"GCS_BUCKET": "jobs-b", "URL_ALLOWLIST": "a.example,gs://jobs-b"}, r"^URL_ALLOWLIST names GCS_BUCKET"),
        ({"GCS_BUCKET": "jobs-b", "URL_ALLOWLIST": "gs://jobs-b/outputs"}, r"^URL_ALLOWLIST names GCS_BUCKET"),
    ],
)
def test_each_refusal_names_its_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)
