"""deploy.sh's options against the recording `gcloud`: flags and environment shape the deployment
(models from a bucket, metrics sidecar, retention, disk), bad arguments and a gated model
without a token stop before any command, a failing build stops the deployment."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.deploy import PROJECT, REGION, ROOT, TAG, argvs, find, flag, index


def test_flags_and_environment_shape_the_deployment(stub):
    stub.put("secret", "hf-token")  # an operator-made token secret is used as it is
    proc, recs = stub.deploy(
        "--service",
        "img",
        "--model-type=sdxl",
        "--min-instances",
        "1",
        "--max-instances",
        "5",
        "--concurrency",
        "2",
        "--timeout",
        "1200",
        "--bucket",
        "my-outputs",
        "--queue-prefix",
        "imgq",
        "--webhook-secret",
        "img-hooks",
        "--retention-days",
        "3",
        "--gpu-zonal-redundancy",
        "--custom-nodes",
        "https://github.com/o/ComfyUI-X@v1 https://github.com/o/ComfyUI-Y",
        PROJECT,
        "europe-west4",
        "2024-01",
        env={"CPU": "6", "MEMORY": "24Gi", "WEBHOOK_SECRET": "whsec_given"},
    )
    assert proc.returncode == 0, proc.stderr
    cmds = argvs(recs)
    assert find(recs, "secrets", "create", "hf-token") == []
    hooks = find(recs, "secrets", "create", "img-hooks")[0]
    assert hooks["stdin_len"] == len("whsec_given")
    assert [a[3] for a in cmds if a[:3] == ["tasks", "queues", "create"]] == [
        "imgq-high",
        "imgq-normal",
        "imgq-low",
        "imgq-webhooks",
    ]
    assert [a[3] for a in cmds if a[:3] == ["iam", "service-accounts", "create"]] == [
        "img-run",
        "img-tasks",
        "img-build",
    ]
    d = find(recs, "run", "deploy")[-1]["argv"]
    for name, value in {
        "--min-instances": "1",
        "--max-instances": "5",
        "--concurrency": "2",
        "--timeout": "1200",
        "--cpu": "6",
        "--memory": "24Gi",
        "--region": "europe-west4",
        "--image": f"europe-west4-docker.pkg.dev/{PROJECT}/comfyui/img:2024-01",
    }.items():
        assert flag(d, name) == [value], name
    assert "--gpu-zonal-redundancy" in d and "--no-gpu-zonal-redundancy" not in d
    env = dict(kv.split("=", 1) for kv in flag(d, "--set-env-vars")[0].split(","))
    assert env["MODEL_TYPE"] == "sdxl" and env["GCS_BUCKET"] == "my-outputs" and env["TASKS_QUEUE_PREFIX"] == "imgq"
    api = find(recs, "run", "deploy")[0]["argv"]
    assert api[2] == "img-api" and flag(api, "--set-secrets") == ["WEBHOOK_SECRET=img-hooks:latest"]
    b = find(recs, "builds", "submit")[0]["argv"]
    subs = flag(b, "--substitutions")[0]
    assert "_MODEL_TYPE=sdxl" in subs
    assert "_CUSTOM_NODES=https://github.com/o/ComfyUI-X@v1 https://github.com/o/ComfyUI-Y" in subs
    update = find(recs, "storage", "buckets", "update", "gs://my-outputs")[0]
    lifecycle = json.loads(Path(next(iter(update["files"].values()))).read_text())
    assert lifecycle["rule"][0]["condition"]["age"] == 3


def test_runtime_models_from_a_mounted_bucket(stub):
    proc, recs = stub.deploy(
        "--model-type", "flux1-dev", "--models-mount", "gs://model-store/comfy/", PROJECT, REGION, TAG
    )
    assert proc.returncode == 0, proc.stderr  # gated, but the image bakes no models: no token needed
    subs = flag(find(recs, "builds", "submit")[0]["argv"], "--substitutions")[0]
    assert "_MODEL_TYPE=base" in subs
    d = find(recs, "run", "deploy")[-1]["argv"]
    assert flag(d, "--add-volume") == ["name=models,type=cloud-storage,bucket=model-store,readonly=true"]
    assert flag(d, "--add-volume-mount") == ["volume=models,mount-path=/mnt/models"]
    env = dict(kv.split("=", 1) for kv in flag(d, "--set-env-vars")[0].split(","))
    assert env["MODELS_SOURCE"] == "/mnt/models/comfy" and env["MODEL_TYPE"] == "flux1-dev"
    viewer = [r["argv"] for r in find(recs, "storage", "buckets", "add-iam-policy-binding", "gs://model-store")]
    assert viewer and flag(viewer[0], "--role") == ["roles/storage.objectViewer"]

    proc, recs = stub.deploy("--models-source", "gs://model-store/comfy", "--skip-build", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    assert find(recs, "builds", "submit") == []
    d = find(recs, "run", "deploy")[-1]["argv"]
    assert "--add-volume" not in " ".join(d)
    assert "MODELS_SOURCE=gs://model-store/comfy" in flag(d, "--set-env-vars")[0]


def test_a_model_cache_bucket_is_a_read_write_volume_of_the_worker(stub):
    proc, recs = stub.deploy("--skip-build", PROJECT, REGION, TAG)  # off unless asked
    assert proc.returncode == 0, proc.stderr
    d = find(recs, "run", "deploy")[-1]["argv"]
    assert "model-cache" not in " ".join(d) and "MODEL_CACHE_STORE" not in " ".join(d)

    shapes = ("--models-mount", "gs://model-store/comfy", "--model-cache-bucket", "my-model-cache")
    proc, recs = stub.deploy("--skip-build", *shapes, PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    d = find(recs, "run", "deploy")[-1]["argv"]
    assert flag(d, "--add-volume") == [
        "name=models,type=cloud-storage,bucket=model-store,readonly=true",
        "name=model-cache,type=cloud-storage,bucket=my-model-cache",
    ]
    assert flag(d, "--add-volume-mount") == [
        "volume=models,mount-path=/mnt/models",
        "volume=model-cache,mount-path=/mnt/model-cache",
    ]
    env = dict(kv.split("=", 1) for kv in flag(d, "--set-env-vars")[0].split(","))
    assert env["MODEL_CACHE_STORE"] == "/mnt/model-cache"
    api = find(recs, "run", "deploy")[0]["argv"]
    assert "MODEL_CACHE_STORE" not in " ".join(api)  # the api role fetches no models
    grants = [r["argv"] for r in find(recs, "storage", "buckets", "add-iam-policy-binding", "gs://my-model-cache")]
    assert [flag(g, "--role") for g in grants] == [["roles/storage.objectUser"]]
    assert flag(grants[0], "--member") == [f"serviceAccount:comfyui-run@{PROJECT}.iam.gserviceaccount.com"]
    assert find(recs, "storage", "buckets", "create", "gs://my-model-cache")  # made when missing


def test_metrics_add_the_managed_prometheus_collector_as_a_sidecar(stub):
    proc, recs = stub.deploy("--metrics", "--skip-build", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    d = find(recs, "run", "deploy")[-1]["argv"]
    assert flag(d, "--container") == ["app", "collector"]
    app, collector = (
        d[d.index("--container=app") : d.index("--container=collector")],
        d[d.index("--container=collector") :],
    )
    assert flag(app, "--port") == ["8080"] and flag(app, "--gpu") == ["1"] and flag(app, "--set-env-vars")
    assert flag(collector, "--image")[0].startswith(
        "us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:"
    )
    assert flag(collector, "--depends-on") == ["app"] and not flag(collector, "--gpu")
    writer = [
        r["argv"]
        for r in find(recs, "projects", "add-iam-policy-binding")
        if flag(r["argv"], "--role") == ["roles/monitoring.metricWriter"]
    ]
    assert writer and flag(writer[0], "--member")[0].startswith("serviceAccount:")

    proc, recs = stub.deploy("--skip-build", PROJECT, REGION, TAG)  # without it: one container, as before
    d = find(recs, "run", "deploy")[-1]["argv"]
    assert proc.returncode == 0 and not flag(d, "--container") and not flag(d, "--depends-on")


def test_gated_model_without_a_token_stops_before_building(stub):
    proc, recs = stub.deploy("--model-type", "flux1-dev", PROJECT, REGION, TAG)
    assert proc.returncode == 2
    assert "gated on Hugging Face: set HF_TOKEN" in proc.stderr
    assert find(recs, "builds", "submit") == [] and find(recs, "run", "deploy") == []
    stub.put("secret", "hf-token")
    proc, recs = stub.deploy("--model-type", "flux1-dev", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "expected PROJECT_ID REGION TAG, got 0"),
        ([PROJECT, REGION], "expected PROJECT_ID REGION TAG, got 2"),
        (
            ["--model-type", "flux2", PROJECT, REGION, TAG],
            "unknown --model-type 'flux2'; models.txt knows: base flux1-dev",
        ),
        (
            ["--min-instances", "4", "--max-instances", "2", PROJECT, REGION, TAG],
            "--min-instances (4) exceeds --max-instances (2)",
        ),
        (["--memory", "8Gi", PROJECT, REGION, TAG], "--memory must be 16Gi..32Gi with an L4 GPU, got 8Gi"),
        (["--memory", "64Gi", PROJECT, REGION, TAG], "--memory must be 16Gi..32Gi with an L4 GPU, got 64Gi"),
        (["--cpu", "2", PROJECT, REGION, TAG], "--cpu must be 4..8 with an L4 GPU, got 2"),
        (["--cpu", "16", PROJECT, REGION, TAG], "--cpu must be 4..8 with an L4 GPU, got 16"),
        (["--keep-images", "0", PROJECT, REGION, TAG], "--keep-images must be at least 1"),
        (["--timeout", "7200", PROJECT, REGION, TAG], "--timeout must be 1..3600"),
        (["--concurrency", "many", PROJECT, REGION, TAG], "--concurrency must be a whole number"),
        (["--frobnicate", PROJECT, REGION, TAG], "unknown option --frobnicate"),
        (["--service", "Bad_Name", PROJECT, REGION, TAG], "bad --service"),
        (["--models-source", "s3://x/y", PROJECT, REGION, TAG], "--models-source must be gs://"),
        (["--model-cache-bucket", "gs://c", PROJECT, REGION, TAG], "bad --model-cache-bucket"),
        (
            ["--models-mount", "gs://models-b/x", "--model-cache-bucket", "models-b", PROJECT, REGION, TAG],
            "--model-cache-bucket must be a bucket of its own, not models-b",
        ),
        (["--model-cache-bucket", f"{PROJECT}-comfyui", PROJECT, REGION, TAG], "a bucket of its own"),
    ],
)
def test_bad_arguments_are_refused_before_any_command(stub, args, message):
    proc, recs = stub.deploy(*args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert recs == []


def test_help(stub):
    proc, recs = stub.deploy("--help")
    assert proc.returncode == 0 and "Usage: ./deploy.sh [options] PROJECT_ID REGION TAG" in proc.stdout
    assert recs == []


def test_a_failing_build_stops_the_deployment(stub):
    stub.fail("builds submit " + str(ROOT), 1)
    proc, recs = stub.deploy(PROJECT, REGION, TAG)
    assert proc.returncode == 1
    # the accounts were made in this run: their grants may not have reached Cloud Build yet
    assert len(find(recs, "builds", "submit")) == 3 and find(recs, "run", "deploy") == []
    proc, recs = stub.deploy(PROJECT, REGION, TAG)  # now they exist: one try
    assert proc.returncode == 1
    assert len(find(recs, "builds", "submit")) == 1 and find(recs, "run", "deploy") == []


def test_artifact_registry_keeps_recent_images_and_the_build_cache(stub):
    proc, recs = stub.deploy("--keep-images", "3", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    (record,) = find(recs, "artifacts", "repositories", "set-cleanup-policies", "comfyui")
    assert "--no-dry-run" in record["argv"]
    policies = {p["name"]: p for p in json.loads(Path(next(iter(record["files"].values()))).read_text())}
    assert policies["keep-newest"] == {
        "name": "keep-newest",
        "action": {"type": "Keep"},
        "mostRecentVersions": {"keepCount": 3},
    }
    assert policies["keep-build-cache"]["condition"]["tagPrefixes"] == ["buildcache"]
    assert policies["delete-untagged"]["condition"] == {"tagState": "untagged", "olderThan": "7d"}
    assert index(recs, "artifacts", "repositories", "set-cleanup-policies") < index(recs, "builds", "submit")


@pytest.mark.parametrize(
    "model_type, memory, refused",
    [
        ("flux1-dev", "32Gi", "flux1-dev's files are 28 GiB"),  # 29 GB against 32 GiB: no room to run
        ("flux1-schnell", "32Gi", "flux1-schnell's files are 28 GiB"),
        ("flux1-dev-fp8", "24Gi", "do not fit --memory 24Gi"),
        ("flux1-dev-fp8", "32Gi", None),  # 17 GB: fits, and arrives in time
        ("sdxl", "16Gi", None),
    ],
)
def test_downloaded_models_must_fit_the_in_memory_disk(stub, model_type, memory, refused):
    proc, recs = stub.deploy(
        "--model-type",
        model_type,
        "--memory",
        memory,
        "--models-source",
        "gs://store/m",
        PROJECT,
        REGION,
        TAG,
        env={"HF_TOKEN": "x"},
    )
    if refused:
        assert proc.returncode == 2 and refused in proc.stderr and recs == []
        assert "Use --models-mount gs://store/m" in proc.stderr
        # the mount has no such limit
        proc, recs = stub.deploy(
            "--model-type", model_type, "--memory", memory, "--models-mount", "gs://store/m", PROJECT, REGION, TAG
        )
    assert proc.returncode == 0, proc.stderr
    d = find(recs, "run", "deploy")[-1]["argv"]
    probe = flag(d, "--startup-probe")[0]
    assert "periodSeconds=10" in probe and "failureThreshold=24" in probe  # Cloud Run's 240 s window


def image_build(recs: list[dict]) -> dict:
    """The image's build (cloudbuild.yaml), not the models bucket's."""
    (build,) = [r for r in find(recs, "builds", "submit") if flag(r["argv"], "--config") == [f"{ROOT}/cloudbuild.yaml"]]
    return build


def test_a_manager_snapshot_is_checked_then_staged_into_the_build_context(stub, tmp_path):
    snapshot = tmp_path / "my-snapshot.json"
    snapshot.write_text(
        json.dumps({"comfyui": "a" * 40, "git_custom_nodes": {"https://github.com/o/N": {"hash": "b" * 40}}})
    )
    proc, recs = stub.deploy("--snapshot", str(snapshot), PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    build = image_build(recs)
    source = build["argv"][2]
    assert source != str(ROOT)  # a staged context: the operator's checkout is not written to
    assert Path(build["files"][f"{source}/deploy/snapshot.json"]).read_text() == snapshot.read_text()
    # What .dockerignore lets in, and nothing else (no tests, no .venv).
    assert {"Dockerfile", ".dockerignore", "handler", "deploy", "models.txt"} <= set(build["source_entries"])
    assert "tests" not in build["source_entries"] and ".venv" not in build["source_entries"]

    proc, recs = stub.deploy(PROJECT, REGION, TAG)  # without one the checkout is the source, as before
    assert image_build(recs)["argv"][2] == str(ROOT)

    snapshot.write_text('{"git_custom_nodes": {"https://github.com/o/N": {"hash": "main"}}}')
    for args, message in (
        (("--snapshot", str(snapshot)), f"snapshot {snapshot}: git_custom_nodes['https://github.com/o/N']: 'hash'"),
        (("--snapshot", str(tmp_path / "none.json")), "--snapshot: no such file"),
        (("--snapshot", str(snapshot), "--skip-build"), "--snapshot goes into the image's build"),
    ):
        proc, recs = stub.deploy(*args, PROJECT, REGION, TAG)
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr
        assert recs == []  # refused before any command


def test_civitai_is_off_unless_asked_and_its_token_is_a_secret_of_the_worker(stub):
    proc, recs = stub.deploy("--skip-build", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    api, worker = find(recs, "run", "deploy")
    for d in (api, worker):
        env = dict(kv.split("=", 1) for kv in flag(d["argv"], "--set-env-vars")[0].split(","))
        assert env["CIVITAI_MODELS"] == "false"
    # --set-secrets replaces them all: a re-run without the option takes the token away
    assert flag(worker["argv"], "--set-secrets") == ["HF_TOKEN=hf-token:latest"]

    token = "civitai-key-0123456789"
    proc, recs = stub.deploy(
        "--civitai-secret", "civ", "--skip-build", PROJECT, REGION, TAG, env={"CIVITAI_TOKEN": token}
    )
    assert proc.returncode == 0, proc.stderr
    assert token not in proc.stdout + proc.stderr
    created = find(recs, "secrets", "create", "civ")[0]
    assert created["stdin_len"] == len(token) and token not in json.dumps(recs)
    grants = find(recs, "secrets", "add-iam-policy-binding", "civ")
    assert grants and flag(grants[0]["argv"], "--role") == ["roles/secretmanager.secretAccessor"]
    api, worker = find(recs, "run", "deploy")
    assert flag(worker["argv"], "--set-secrets") == ["HF_TOKEN=hf-token:latest,CIVITAI_TOKEN=civ:latest"]
    assert "CIVITAI" not in " ".join(flag(api["argv"], "--set-secrets"))  # the api never fetches
    for d in (api, worker):
        assert "CIVITAI_MODELS=true" in flag(d["argv"], "--set-env-vars")[0].split(",")

    proc, recs = stub.deploy("--civitai", "--skip-build", PROJECT, REGION, TAG)  # on, without a token
    assert proc.returncode == 0
    assert flag(find(recs, "run", "deploy")[1]["argv"], "--set-secrets") == ["HF_TOKEN=hf-token:latest"]
    assert "CIVITAI_MODELS=true" in flag(find(recs, "run", "deploy")[1]["argv"], "--set-env-vars")[0]

    proc, recs = stub.deploy("--civitai-secret", "other", "--skip-build", PROJECT, REGION, TAG)
    assert proc.returncode == 2 and "--civitai-secret other does not exist: set CIVITAI_TOKEN" in proc.stderr
    assert find(recs, "run", "deploy") == []
