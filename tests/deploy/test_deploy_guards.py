"""deploy.sh's guards, with the recording gcloud stub of tests/test_deploy.py: a region without
Cloud Run L4 GPUs is refused before any command, and the deploys are retried when the IAM grants
before them may be seconds old."""

from __future__ import annotations

import pytest

from tests.fixtures.deploy import PROJECT, TAG, Stub, find

L4_REGIONS = ["us-central1", "us-east4", "europe-west1", "europe-west4", "asia-southeast1"]


@pytest.fixture
def stub(tmp_path):
    return Stub(tmp_path)


@pytest.mark.parametrize("region", ["us-west1", "europe-west2", "asia-northeast1"])
def test_a_region_without_l4_is_refused_before_anything_is_built_or_created(stub, region):
    proc, recs = stub.deploy(PROJECT, region, TAG)
    assert proc.returncode == 2 and recs == []
    assert f"REGION {region} has no Cloud Run L4 GPUs" in proc.stderr
    for listed in L4_REGIONS:
        assert listed in proc.stderr


def test_asia_south1_is_by_invitation_and_needs_allow_region(stub):
    proc, recs = stub.deploy(PROJECT, "asia-south1", TAG)
    assert proc.returncode == 2 and recs == []
    assert "asia-south1 offers it by invitation" in proc.stderr and "--allow-region" in proc.stderr
    proc, recs = stub.deploy("--allow-region", "--skip-build", PROJECT, "asia-south1", TAG)
    assert proc.returncode == 0, proc.stderr
    assert "warning: asia-south1 is not on the list of Cloud Run L4 regions" in proc.stderr
    assert find(recs, "run", "deploy", "comfyui")[0]["argv"][3:4] == ["--region=asia-south1"]


@pytest.mark.parametrize("region", L4_REGIONS)
def test_every_l4_region_is_accepted_without_a_warning(stub, region):
    proc, _ = stub.deploy("--dry-run", PROJECT, region, TAG)
    assert proc.returncode == 0, proc.stderr
    assert "warning" not in proc.stderr


def test_skip_build_retries_a_deploy_that_meets_fresh_grants(stub):
    # accounts made in this run, no build in between: Cloud Run may not see the grants yet
    stub.fail_times("run deploy comfyui", 1)
    stub.fail_times("run deploy comfyui-api", 1)
    proc, recs = stub.deploy("--skip-build", PROJECT, "us-central1", TAG)
    assert proc.returncode == 0, proc.stderr
    assert [r["argv"][2] for r in find(recs, "run", "deploy")] == ["comfyui-api", "comfyui-api", "comfyui", "comfyui"]
    assert "deploy.sh: retrying in 0s" in proc.stderr

    stub.fail("run deploy comfyui")  # a deploy that keeps failing still ends the run, after 3 tries
    proc, recs = stub.deploy("--skip-build", PROJECT, "us-central1", TAG)
    assert proc.returncode == 1 and len(find(recs, "run", "deploy", "comfyui")) == 3


def test_after_a_build_over_settled_accounts_a_failing_deploy_is_not_retried(stub):
    first, _ = stub.deploy(PROJECT, "us-central1", TAG)  # makes the accounts
    assert first.returncode == 0, first.stderr
    stub.fail_times("run deploy comfyui", 1)
    proc, recs = stub.deploy(PROJECT, "us-central1", TAG)
    assert proc.returncode == 1 and len(find(recs, "run", "deploy", "comfyui")) == 1
