"""The client and the `comfyrun` command send an API key (docs/security.md, "Access"):
`Client(api_key=…)` and `--api-key` / `$COMFYRUN_API_KEY` as `X-API-Key`; without one, a service
that requires keys answers 401, which the client reports as such."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess

ROOT = Path(__file__).resolve().parents[2]
STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    from handler.access.keys import Role, new_key

    secret, key = new_key(role=Role.CALLER, workflows=True)
    env = {"API_KEYS": key.to_line()}  # the file's text in a variable, as from Secret Manager
    svc = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("client-key"), env=env).start().wait_ready()
    svc.secret = secret  # type: ignore[attr-defined]
    yield svc
    svc.stop()


def workflow_file(tmp_path: Path) -> Path:
    wf = json.loads((ROOT / "test_resources/comfy/workflows/empty_save.json").read_text())
    wf["1"]["inputs"].update(width=16, height=16, color=3)
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(wf))
    return path


def test_the_client_sends_its_key(keyed, tmp_path):
    from comfyrun_client import Client, ClientError

    wf = json.loads(workflow_file(tmp_path).read_text())
    assert Client(keyed.url, api_key=keyed.secret).predict(wf)["status"] == "success"
    with pytest.raises(ClientError) as refused:
        Client(keyed.url).predict(wf)
    assert refused.value.status == 401


def test_the_command_takes_the_key_from_the_environment(keyed, tmp_path):
    command = [sys.executable, "-m", "comfyrun_client", keyed.url, str(workflow_file(tmp_path)), "--out", str(tmp_path)]
    env = {k: v for k, v in os.environ.items() if k != "COMFYRUN_API_KEY"}
    run = subprocess.run(command, env={**env, "COMFYRUN_API_KEY": keyed.secret}, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    refused = subprocess.run(command, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "API key" in refused.stderr, refused.stderr
