"""`GET /system` shows settings without secrets (issue 20): `COMFYUI_URL=http://admin:hunter2@…`
was shown with its password, and so would any URL setting with userinfo or a secret in its query."""

from __future__ import annotations

import json
import sys

from handler.config import Settings
from handler.routes.observe import masked_settings
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess

STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")


def test_userinfo_and_secret_query_values_are_masked_in_every_url_setting():
    settings = Settings.from_env(
        {
            "COMFYUI_URL": "http://admin:hunter2@comfy.internal:8188",
            "MODELS_SOURCE": "https://models.example/pack?sig=s3cr3t&token=t0k3n&x=1",
            "SERVICE_URL": "https://user@svc.example",
            "URL_ALLOWLIST": "https://u:pw@host.example,10.0.0.0/8",
            "COMFYUI_ARGS": "--cpu --api-key sk-verysecret",
        }
    )
    shown = json.dumps(masked_settings(settings))
    for secret in ("hunter2", "admin:", "s3cr3t", "t0k3n", "user@", "u:pw", "sk-verysecret"):
        assert secret not in shown, secret
    masked = masked_settings(settings)
    assert masked["comfyui_url"] == "http://***@comfy.internal:8188"
    assert "x=1" in masked["models_source"] and "10.0.0.0/8" in masked["url_allowlist"]


def test_system_shows_no_userinfo_of_a_running_service(tmp_path):
    env = {"STORAGE_EMULATOR_HOST": "http://admin:hunter2@127.0.0.1:9", "MODELS_SOURCE": "https://a:b@m.example/x"}
    svc = ServiceProcess(STANDIN_TARGET, tmp_path / "svc", env=env).start().wait_ready()
    try:
        answer = svc.get("/system")
        assert answer.status_code == 200, answer.text
        assert "hunter2" not in answer.text and "a:b@" not in answer.text
        assert answer.json()["settings"]["storage_emulator_host"] == "http://***@127.0.0.1:9"
    finally:
        svc.stop()
