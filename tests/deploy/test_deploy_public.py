"""`deploy.sh --public` (issue 20): the api role is deployed `--allow-unauthenticated` with API
keys required (PUBLIC_SERVICE=1, the keys from a Secret Manager secret as API_KEYS); the worker
stays behind IAM. Without it, both stay behind IAM as before. (tests/deploy/test_gcloud_replay.py
replays a --public run through the real gcloud.)"""

from __future__ import annotations

from tests.fixtures.deploy import PROJECT, REGION, TAG, find, flag


def deploys(records: list[dict]) -> dict[str, list[str]]:
    """The `gcloud run deploy` commands by service name."""
    return {r["argv"][2]: r["argv"] for r in find(records, "run", "deploy")}


def test_public_deploys_the_api_role_open_with_keys_required(stub):
    proc, records = stub.deploy("--public", "--skip-build", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    services = deploys(records)
    (api,) = [argv for argv in services.values() if "SERVICE_ROLE=api" in ",".join(flag(argv, "--set-env-vars"))]
    (worker,) = [argv for argv in services.values() if argv is not api]
    assert "--allow-unauthenticated" in api and "--no-allow-unauthenticated" not in api
    assert "PUBLIC_SERVICE=1" in flag(api, "--set-env-vars")[0].split(",")
    secrets = dict(item.split("=", 1) for item in flag(api, "--set-secrets")[0].split(","))
    assert secrets["API_KEYS"].endswith(":latest") and "WEBHOOK_SECRET" in secrets
    assert "--no-allow-unauthenticated" in worker and "--allow-unauthenticated" not in worker


def test_without_public_both_roles_stay_behind_iam(stub):
    proc, records = stub.deploy("--skip-build", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    for argv in deploys(records).values():
        assert "--no-allow-unauthenticated" in argv and "--allow-unauthenticated" not in argv
        assert "PUBLIC_SERVICE=1" not in ",".join(flag(argv, "--set-env-vars"))
