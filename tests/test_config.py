import sys
from pathlib import Path

import pytest

from handler.config import ConfigError, Settings


def test_defaults_need_no_environment():
    settings = Settings.from_env({})
    assert settings.port == 8080
    assert settings.comfyui_python == sys.executable
    assert settings.queue_backend == "local" and settings.storage_backend == "local"
    assert settings.cloud_mode is False


def test_reads_the_seed_names_and_splits_arguments():
    settings = Settings.from_env(
        {
            "COMFYUI_PATH": "/comfyui",
            "COMFYUI_ARGS": "--cpu --preview-method 'none'",
            "COMFY_LOG_LEVEL": "debug",
            "WEBSOCKET_RECONNECT_ATTEMPTS": "7",
            "WEBSOCKET_RECONNECT_DELAY_S": "0.5",
            "WEBSOCKET_TRACE": "true",
            "COMFYUI_URL": "http://x:8188/",
        }
    )
    assert settings.comfyui_path == Path("/comfyui")
    assert settings.comfyui_args == ("--cpu", "--preview-method", "none")
    assert settings.comfy_log_level == "DEBUG"
    assert (settings.ws_reconnect_attempts, settings.ws_reconnect_delay_s, settings.ws_trace) == (7, 0.5, True)
    assert settings.comfyui_url == "http://x:8188"


def test_cloud_run_turns_on_cloud_mode_and_a_bucket_selects_gcs():
    settings = Settings.from_env({"K_SERVICE": "comfy", "GCS_BUCKET": "b"})
    assert settings.cloud_mode and settings.storage_backend == "gcs"


@pytest.mark.parametrize(
    "env, message",
    [
        ({"PORT": "http"}, "PORT must be a number"),
        ({"REQUEST_TIMEOUT_S": "-1"}, "must not be negative"),
        ({"QUEUE_BACKEND": "sqs"}, "QUEUE_BACKEND"),
        ({"STORAGE_BACKEND": "gcs"}, "needs GCS_BUCKET"),
    ],
)
def test_bad_values_are_named(env, message):
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_secrets_stay_out_of_repr():
    settings = Settings.from_env({"WEBHOOK_SECRET": "s3cr3t-value", "HF_TOKEN": "hf_abcdef"})
    assert "s3cr3t-value" not in repr(settings) and "hf_abcdef" not in repr(settings)


CLOUD = {"TASKS_LOCATION": "us-central1", "SERVICE_URL": "https://self.run.app"}


@pytest.mark.parametrize(
    ("env", "wrong"),
    [
        ({"SERVICE_ROLE": "all", "WORKER_URL": "https://other.run.app"}, "WORKER_URL"),
        ({"SERVICE_ROLE": "all", "API_URL": "https://other.run.app"}, "API_URL"),
        ({"SERVICE_ROLE": "worker", "WORKER_URL": "https://other.run.app"}, "WORKER_URL"),
        ({"SERVICE_ROLE": "api", "API_URL": "https://other.run.app"}, "API_URL"),
    ],
)
def test_a_role_must_be_the_url_its_tasks_are_sent_to(env, wrong):
    # Tasks carry a token for the URL they target; the receiver checks it against SERVICE_URL.
    with pytest.raises(ConfigError, match=wrong):
        Settings.from_env({**CLOUD, **env})


def test_split_roles_as_deploy_sh_wires_them():
    api, worker = "https://api.run.app", "https://worker.run.app"
    common = {"TASKS_LOCATION": "us-central1", "API_URL": api, "WORKER_URL": worker}
    assert Settings.from_env({**common, "SERVICE_ROLE": "api", "SERVICE_URL": api}).worker_url == worker
    assert Settings.from_env({**common, "SERVICE_ROLE": "worker", "SERVICE_URL": worker}).api_url == api
    assert Settings.from_env(CLOUD).worker_url == CLOUD["SERVICE_URL"]  # role all: both are itself
