"""ComfyUI as a supervised child: dies mid-job, restarts, stops cleanly."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

from tests.fixtures.comfy import RESOURCES, ServiceProcess

SMALL = json.loads((RESOURCES / "comfy" / "workflows" / "empty_save.json").read_text())


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie has exited too
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def wait_for(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_comfyui_killed_mid_job_fails_the_job_at_once_and_recovers(fresh_service: ServiceProcess):
    service = fresh_service
    pid = service.comfy_pid()
    assert pid and alive(pid)
    result: dict = {}
    gate = service.gate()  # held running until ComfyUI dies; never released
    job = threading.Thread(target=lambda: result.update(r=service.post("/predict", json={"workflow": gate.workflow()})))
    job.start()
    gate.wait_entered()
    killed_at = time.monotonic()
    os.kill(pid, signal.SIGKILL)
    job.join(30)
    assert not job.is_alive(), "the request hung after ComfyUI died"
    assert time.monotonic() - killed_at < 5
    response = result["r"]
    assert response.status_code == 503, response.text
    assert response.headers["Retry-After"]
    assert "restarting" in response.json()["error"]["message"]
    # Readiness drops, then ComfyUI comes back by itself and the service serves again.
    assert wait_for(lambda: service.get("/healthz").status_code == 503, 5) or service.comfy_pid() != pid
    assert wait_for(lambda: service.get("/healthz").status_code == 200, 120)
    assert service.comfy_pid() not in (None, pid)
    assert service.post("/predict", json={"workflow": SMALL}).status_code == 200
    assert service.get("/").json()["comfyui"]["restarts"] >= 1


def test_sigterm_stops_comfyui_and_the_service_cleanly(fresh_service: ServiceProcess):
    service = fresh_service
    pid = service.comfy_pid()
    assert pid
    code = service.stop()
    # uvicorn shuts down gracefully, then re-raises the signal it caught.
    assert code in (0, -signal.SIGTERM), service.log()[-2000:]
    assert "Application shutdown complete" in service.log()
    assert wait_for(lambda: not alive(pid), 10), "ComfyUI outlived the service"


def test_comfyui_does_not_outlive_a_service_that_is_killed(fresh_service: ServiceProcess):
    service = fresh_service
    pid = service.comfy_pid()
    assert pid
    service.process.kill()
    service.process.wait()
    assert wait_for(lambda: not alive(pid), 10), "ComfyUI was orphaned"


def test_comfyui_gets_an_allowlisted_environment():
    from handler.comfyui.supervisor import comfy_env

    environ = {
        "PATH": "/bin",
        "HOME": "/h",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "PYTHONPATH": "/p",
        "CUDA_VISIBLE_DEVICES": "0",
        "LD_LIBRARY_PATH": "/l",
        "HF_HOME": "/hf",
        "HF_TOKEN": "t",
        "WEBHOOK_SECRET": "s",
        "GOOGLE_APPLICATION_CREDENTIALS": "/c",
        "AWS_SECRET_ACCESS_KEY": "k",
        "GCS_BUCKET": "b",
        "K_SERVICE": "svc",
        "STANDIN_TEST_GATE": "1",
        "CUDA_API_TOKEN": "t2",
    }
    env = comfy_env(environ)
    assert env == {
        "PATH": "/bin",
        "HOME": "/h",
        "LANG": "C.UTF-8",
        "LC_ALL": "C",
        "PYTHONPATH": "/p",
        "CUDA_VISIBLE_DEVICES": "0",
        "LD_LIBRARY_PATH": "/l",
        "HF_HOME": "/hf",
        "OMP_WAIT_POLICY": "PASSIVE",
        "PYTHONUNBUFFERED": "1",
    }
    # The operator's own thread settings win over the defaults.
    assert comfy_env({**environ, "OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"
    # Operators may pass more by name or prefix, but never a secret-looking one.
    more = comfy_env({**environ, "GOOGLE_CLOUD_PROJECT": "p"}, ("STANDIN_*", "K_SERVICE", "HF_TOKEN", "GOOGLE_*"))
    assert more["STANDIN_TEST_GATE"] == "1" and more["K_SERVICE"] == "svc"
    assert "HF_TOKEN" not in more and "GOOGLE_CLOUD_PROJECT" not in more
