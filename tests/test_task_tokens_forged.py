"""Forged task tokens behind a second header (issue 20).

With both `Authorization` and `X-Serverless-Authorization`, Cloud Run checks only the second and
passes `Authorization` through untouched (tests/fixtures/ingress.py plays it). A caller allowed
through IAM could put a hand-made token for the tasks account, ending in
`.SIGNATURE_REMOVED_BY_GOOGLE`, in `Authorization`: the service must not take it for one that
Cloud Run checked. Also: `email_verified` must be the boolean true, and a public deployment never
trusts a stripped signature.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest

from handler.config import ConfigError, Settings
from handler.errors import Forbidden, Unauthorized
from handler.tasktoken import TaskTokenVerifier
from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess, free_port
from tests.fixtures.ingress import Ingress, stripped_token

TASKS_ACCOUNT = "tasks@test-project.iam.gserviceaccount.com"
INVOKER = "someone@example.com"  # may call the service through IAM, is not the tasks account
STANDIN_TARGET = ComfyTarget("standin", STANDIN, sys.executable, "")
WORKFLOW = {"1": {"class_type": "EmptyImage", "inputs": {"width": 8, "height": 8, "batch_size": 1, "color": 7}}}


@pytest.fixture(scope="module")
def behind_iam(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """The service behind Cloud Run's IAM (an ingress that strips what it checked), checking
    task tokens, local queue and store."""
    port = free_port()
    ingress = Ingress(port, TASKS_ACCOUNT)
    env = {
        "VERIFY_TASK_TOKENS": "1",
        "INGRESS_VERIFIES_TOKENS": "1",
        "TASKS_SERVICE_ACCOUNT": TASKS_ACCOUNT,
        "SERVICE_URL": ingress.url,
    }
    svc = ServiceProcess(STANDIN_TARGET, tmp_path_factory.mktemp("forged"), env=env, port=port)
    svc.start().wait_ready()
    svc.ingress = ingress  # type: ignore[attr-defined]
    yield svc
    svc.stop()
    ingress.close()


def forged_pair(audience: str) -> dict[str, str]:
    """The attack: the invoker's own identity where Cloud Run checks it, a hand-made token for
    the tasks account where it does not."""
    return {
        "X-Serverless-Authorization": "Bearer " + stripped_token(audience, INVOKER),
        "Authorization": "Bearer " + stripped_token(audience, TASKS_ACCOUNT),
    }


def test_a_stripped_token_beside_x_serverless_authorization_is_refused_on_tasks_run(behind_iam):
    import requests

    url = behind_iam.ingress.url
    for path in ("/tasks/run", "/tasks/webhook"):
        answer = requests.post(f"{url}{path}", json={"job_id": "nosuchjob"}, headers=forged_pair(url), timeout=30)
        assert answer.status_code in (401, 403), (path, answer.text)
        assert answer.json()["error"]["code"] in ("unauthorized", "forbidden")


def test_a_stripped_token_beside_x_serverless_authorization_runs_no_client_made_task(behind_iam):
    import requests

    url = behind_iam.ingress.url
    headers = {**forged_pair(url), "X-CloudTasks-TaskName": "forged-1", "X-CloudTasks-QueueName": "q"}
    answer = requests.post(f"{url}/predict", json={"workflow": WORKFLOW}, headers=headers, timeout=60)
    assert answer.status_code in (401, 403), answer.text
    assert "job" not in answer.json()


def test_the_tasks_account_through_x_serverless_authorization_is_still_accepted(behind_iam):
    """Identity comes from the header Cloud Run checked: the tasks account there may deliver."""
    import requests

    url = behind_iam.ingress.url
    headers = {"X-Serverless-Authorization": "Bearer " + stripped_token(url, TASKS_ACCOUNT)}
    answer = requests.post(f"{url}/tasks/run", json={"job_id": "nosuchjob"}, headers=headers, timeout=30)
    assert answer.status_code == 200 and answer.json()["outcome"] == "idle", answer.text


def test_email_verified_must_be_the_boolean_true(behind_iam):
    url = behind_iam.ingress.url
    for value in ("false", "true", 1, None):
        token = stripped_token(url, TASKS_ACCOUNT, email_verified=value)
        answer = behind_iam.post("/tasks/run", json={"job_id": "x"}, headers={"Authorization": f"Bearer {token}"})
        assert answer.status_code == 403, (value, answer.text)


def test_the_verifier_trusts_authorization_beside_x_serverless_only_when_signed():
    verifier = TaskTokenVerifier("https://svc.run.app", TASKS_ACCOUNT, ingress_verified=True)
    checked = "Bearer " + stripped_token("https://svc.run.app", TASKS_ACCOUNT)
    assert verifier.verify(checked)["email"] == TASKS_ACCOUNT  # Cloud Run checked Authorization
    assert verifier.verify(None, serverless_authorization=checked)["email"] == TASKS_ACCOUNT
    with pytest.raises(Unauthorized):
        verifier.verify(checked, serverless_authorization="Bearer " + stripped_token("https://svc.run.app", INVOKER))
    with pytest.raises(Forbidden):  # identity is the checked header's, whatever Authorization says
        verifier.verify(None, serverless_authorization="Bearer " + stripped_token("https://svc.run.app", INVOKER))


def test_a_public_deployment_never_trusts_a_stripped_signature():
    public = Settings.from_env({"K_SERVICE": "svc", "PUBLIC_SERVICE": "1", "API_KEYS": "unused"})
    assert public.ingress_verifies_tokens is False
    with pytest.raises(ConfigError):
        Settings.from_env(
            {"K_SERVICE": "svc", "PUBLIC_SERVICE": "1", "API_KEYS": "unused", "INGRESS_VERIFIES_TOKENS": "1"}
        )
    settings = Settings.from_env(
        {
            "K_SERVICE": "svc",
            "PUBLIC_SERVICE": "1",
            "API_KEYS": "unused",
            "SERVICE_URL": "https://svc",
            "TASKS_SERVICE_ACCOUNT": TASKS_ACCOUNT,
        }
    )
    verifier = TaskTokenVerifier.from_settings(cloud=settings.cloud, jobs=settings.jobs)
    with pytest.raises(Unauthorized):
        verifier.verify("Bearer " + stripped_token("https://svc", TASKS_ACCOUNT))
    with pytest.raises(Unauthorized):
        verifier.verify(None, serverless_authorization="Bearer " + stripped_token("https://svc", TASKS_ACCOUNT))


def test_a_signed_authorization_beside_x_serverless_authorization_must_verify():
    """A token in `Authorization` that carries a signature is checked against Google's
    certificates (a local server here) even beside `X-Serverless-Authorization`; the identity
    still comes from the header Cloud Run checked, and what is not a JWT there (an API key) is not
    a task token at all."""
    from tests.fixtures.dispatcher import SigningKey, certs_server

    key = SigningKey(kid="k1")
    audience = "https://svc.run.app"
    checked = "Bearer " + stripped_token(audience, TASKS_ACCOUNT)
    signed = "Bearer " + key.token(audience, TASKS_ACCOUNT)
    with certs_server({"k1": key.public_pem}) as certs_url:
        verifier = TaskTokenVerifier(audience, TASKS_ACCOUNT, ingress_verified=True, certs_url=certs_url)
        assert verifier.verify(signed, serverless_authorization=checked)["email"] == TASKS_ACCOUNT
        with pytest.raises(Unauthorized):  # tampered: refused, though the checked identity is fine
            verifier.verify(signed[:-6] + "AAAAAA", serverless_authorization=checked)
        with pytest.raises(Forbidden):  # a good signature does not make the invoker the tasks account
            verifier.verify(signed, serverless_authorization="Bearer " + stripped_token(audience, INVOKER))
        assert verifier.verify("Bearer crk_0_x", serverless_authorization=checked)["email"] == TASKS_ACCOUNT
