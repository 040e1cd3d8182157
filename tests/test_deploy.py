"""deploy.sh with a recording `gcloud` first on PATH (sequence, idempotence, --dry-run, options),
then every recorded command replayed through the real gcloud CLI with no credentials: a
misspelled flag or a bad value fails there with an argument error, a valid command only for
lack of an account."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy.sh"
STUB = ROOT / "tests" / "deploy_fixtures" / "gcloud"
PROJECT, REGION, TAG = "demo-project", "us-central1", "v1"
STUB_NUMBER = "123456789012"
# What deploy.sh reads from the environment; none of it may leak in from the machine.
DEPLOY_ENV = {
    "SERVICE",
    "MODEL_TYPE",
    "MIN_INSTANCES",
    "MAX_INSTANCES",
    "CONCURRENCY",
    "TIMEOUT",
    "CPU",
    "MEMORY",
    "BUCKET",
    "RETENTION_DAYS",
    "QUEUE_PREFIX",
    "WEBHOOK_SECRET_NAME",
    "WEBHOOK_SECRET",
    "HF_SECRET",
    "HF_TOKEN",
    "REPOSITORY",
    "MODELS_SOURCE",
    "MODELS_MOUNT",
    "GPU_ZONAL_REDUNDANCY",
    "CUSTOM_NODES",
    "SKIP_BUILD",
    "DRY_RUN",
    "KEEP_IMAGES",
    "RETRY_DELAY_S",
    "RETRY_ATTEMPTS",
}
LEAST_PRIVILEGE_ROLES = {
    "roles/storage.objectAdmin",
    "roles/storage.objectViewer",
    "roles/cloudtasks.enqueuer",
    "roles/cloudtasks.taskDeleter",
    "roles/secretmanager.secretAccessor",
    "roles/iam.serviceAccountTokenCreator",
    "roles/iam.serviceAccountUser",
    "roles/logging.logWriter",
    "roles/artifactregistry.writer",
    "roles/run.invoker",
}


class Stub:
    def __init__(self, tmp: Path):
        self.dir = tmp
        bindir = tmp / "bin"
        bindir.mkdir()
        (bindir / "gcloud").symlink_to(STUB)
        self.log = tmp / "gcloud.log"
        self.state = tmp / "state.json"
        env = {k: v for k, v in os.environ.items() if k not in DEPLOY_ENV}
        env.update(
            PATH=f"{bindir}{os.pathsep}{env.get('PATH', '')}",
            GCLOUD_STUB_LOG=str(self.log),
            GCLOUD_STUB_STATE=str(self.state),
            RETRY_DELAY_S="0",
        )
        self.env = env

    def records(self) -> list[dict]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def deploy(self, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
        before = len(self.records())
        proc = subprocess.run(
            ["bash", str(DEPLOY), *args],
            capture_output=True,
            text=True,
            env={**self.env, **(env or {})},
            cwd=self.dir,
            timeout=120,
        )
        return proc, self.records()[before:]

    def put(self, kind: str, name: str) -> None:
        state = json.loads(self.state.read_text()) if self.state.exists() else {}
        state.setdefault("existing", []).append([kind, name])
        self.state.write_text(json.dumps(state))

    def fail(self, command: str, rc: int = 1) -> None:
        state = json.loads(self.state.read_text()) if self.state.exists() else {}
        state.setdefault("fail", {})[command] = rc
        self.state.write_text(json.dumps(state))


@pytest.fixture
def stub(tmp_path):
    return Stub(tmp_path)


def argvs(records):
    return [r["argv"] for r in records]


def find(records, *prefix):
    return [r for r in records if r["argv"][: len(prefix)] == list(prefix)]


def index(records, *prefix):
    for i, r in enumerate(records):
        if r["argv"][: len(prefix)] == list(prefix):
            return i
    raise AssertionError(f"no command starts with {' '.join(prefix)}")


def flag(argv, name):
    values = [a.split("=", 1)[1] for a in argv if a.startswith(name + "=")]
    values += [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == name]
    return values


def is_create(argv):
    return "create" in argv[:3]


# --------------------------------------------------------------------------- sequence


def test_first_run_creates_everything_then_builds_and_deploys(stub):
    proc, recs = stub.deploy(PROJECT, REGION, TAG, env={"HF_TOKEN": "hf_secret_value"})
    assert proc.returncode == 0, proc.stderr
    cmds = argvs(recs)
    assert cmds[0][:2] == ["services", "enable"]
    for api in ("run", "cloudbuild", "artifactregistry", "cloudtasks", "secretmanager", "iamcredentials"):
        assert f"{api}.googleapis.com" in cmds[0]

    created = {(a[0], a[1]) if a[0] != "secrets" else ("secrets", a[2]) for a in cmds if is_create(a)}
    assert ("artifacts", "repositories") in created
    assert [a[3] for a in cmds if a[:3] == ["iam", "service-accounts", "create"]] == [
        "comfyui-run",
        "comfyui-tasks",
        "comfyui-build",
    ]
    assert [a[2] for a in cmds if a[:2] == ["secrets", "create"]] == ["hf-token", "comfyui-webhook-secret"]
    assert [a[3] for a in cmds if a[:3] == ["storage", "buckets", "create"]] == [
        f"gs://{PROJECT}-comfyui",
        f"gs://{PROJECT}-comfyui-build",
    ]
    queues = find(recs, "tasks", "queues", "create")
    assert [r["argv"][3] for r in queues] == ["comfyui-high", "comfyui-normal", "comfyui-low", "comfyui-webhooks"]
    for r in queues:
        # the retry policy of docs/async.md: the job bounds its attempts, the queue only backs it up
        for setting, value in (("--max-attempts", "-1"), ("--max-retry-duration", "24h"), ("--min-backoff", "1s")):
            assert flag(r["argv"], setting) == [value], f"{setting} on {r['argv'][3]}"
    from handler.taskqueue.cloudtasks import QUEUE_LIMITS  # the service's own idea of the queues

    for r, lane in zip(queues, ("high", "normal", "low", "webhooks")):
        rate, concurrent = QUEUE_LIMITS[lane]
        assert float(flag(r["argv"], "--max-dispatches-per-second")[0]) == rate
        if lane == "webhooks":
            assert int(flag(r["argv"], "--max-concurrent-dispatches")[0]) == concurrent
        else:  # as many as the service has request slots: default 3 instances x concurrency 2
            assert int(flag(r["argv"], "--max-concurrent-dispatches")[0]) == 3 * 2
            assert flag(r["argv"], "--max-backoff") == ["10s"]  # a freed GPU is not left idle

    # secrets travel on stdin, never on the command line
    assert all("hf_secret_value" not in " ".join(a) for a in cmds)
    hf = find(recs, "secrets", "create", "hf-token")[0]
    assert hf["stdin_len"] == len("hf_secret_value")
    assert find(recs, "secrets", "create", "comfyui-webhook-secret")[0]["stdin_len"] > 20

    # the outputs bucket's lifecycle rule deletes old inputs and outputs
    update = find(recs, "storage", "buckets", "update", f"gs://{PROJECT}-comfyui")[0]
    lifecycle = json.loads(Path(next(iter(update["files"].values()))).read_text())
    first_rule = lifecycle["rule"][0]
    assert first_rule["action"] == {"type": "Delete"}
    assert first_rule["condition"] == {"age": 7, "matchesPrefix": ["inputs/", "outputs/"]}

    # least privilege: only narrow roles, none of the broad ones
    roles = {v for a in cmds for v in flag(a, "--role")}
    assert roles <= LEAST_PRIVILEGE_ROLES, roles - LEAST_PRIVILEGE_ROLES
    project_level = find(recs, "projects", "add-iam-policy-binding")
    assert [flag(r["argv"], "--role") for r in project_level] == [["roles/logging.logWriter"]]

    # build, then the api service, then the worker, each followed by the task invoker's grant
    build = index(recs, "builds", "submit")
    deploys = [i for i, a in enumerate(cmds) if a[:2] == ["run", "deploy"]]
    invokers = [i for i, a in enumerate(cmds) if a[:3] == ["run", "services", "add-iam-policy-binding"]]
    last_create = max(i for i, a in enumerate(cmds) if is_create(a))
    assert len(deploys) == 2 and [cmds[i][2] for i in deploys] == ["comfyui-api", "comfyui"]
    assert [cmds[i][3] for i in invokers] == ["comfyui-api", "comfyui"]
    assert last_create < build < deploys[0] < invokers[0] < deploys[1] < invokers[1]
    b = cmds[build]
    assert flag(b, "--config") == [str(ROOT / "cloudbuild.yaml")]
    subs = dict(kv.split("=", 1) for kv in flag(b, "--substitutions")[0].split(","))
    assert subs == {
        "_REGION": REGION,
        "_REPOSITORY": "comfyui",
        "_SERVICE": "comfyui",
        "_TAG": TAG,
        "_MODEL_TYPE": "flux1-dev-fp8",
        "_HF_SECRET": "hf-token",
        "_DEPLOY": "false",
    }
    assert flag(b, "--service-account") == [
        f"projects/{PROJECT}/serviceAccounts/comfyui-build@{PROJECT}.iam.gserviceaccount.com"
    ]

    worker_url = f"https://comfyui-{STUB_NUMBER}.{REGION}.run.app"
    api_url = f"https://comfyui-api-{STUB_NUMBER}.{REGION}.run.app"
    common = {
        "MODEL_TYPE": "flux1-dev-fp8",
        "GOOGLE_CLOUD_PROJECT": PROJECT,
        "GCS_BUCKET": f"{PROJECT}-comfyui",
        "TASKS_LOCATION": REGION,
        "TASKS_QUEUE_PREFIX": "comfyui",
        "TASKS_SERVICE_ACCOUNT": f"comfyui-tasks@{PROJECT}.iam.gserviceaccount.com",
        "API_URL": api_url,
        "WORKER_URL": worker_url,
        "OUTPUT_RETENTION_DAYS": "7",
    }
    # the api: CPU only, scales to zero, signs webhooks
    a = cmds[deploys[0]]
    for name, value in {
        "--image": f"{REGION}-docker.pkg.dev/{PROJECT}/comfyui/comfyui-api:{TAG}",
        "--min-instances": "0",
        "--cpu": "1",
        "--set-secrets": "WEBHOOK_SECRET=comfyui-webhook-secret:latest",
    }.items():
        assert flag(a, name) == [value], name
    assert "--gpu" not in " ".join(a) and "--no-allow-unauthenticated" in a
    assert dict(kv.split("=", 1) for kv in flag(a, "--set-env-vars")[0].split(",")) == {
        **common,
        "SERVICE_ROLE": "api",
        "SERVICE_URL": api_url,
    }

    # the worker: the L4, no webhook secret (the api sends webhooks)
    d = cmds[deploys[1]]
    expect = {
        "--image": f"{REGION}-docker.pkg.dev/{PROJECT}/comfyui/comfyui:{TAG}",
        "--gpu": "1",
        "--gpu-type": "nvidia-l4",
        "--cpu": "8",
        "--memory": "32Gi",
        "--min-instances": "0",
        "--max-instances": "3",
        "--concurrency": "2",
        "--timeout": "3600",
        "--service-account": f"comfyui-run@{PROJECT}.iam.gserviceaccount.com",
    }
    for name, value in expect.items():
        assert flag(d, name) == [value], name
    assert flag(d, "--set-secrets") == []
    for switch in ("--no-cpu-throttling", "--no-allow-unauthenticated", "--no-gpu-zonal-redundancy"):
        assert switch in d
    assert "httpGet.path=/healthz" in flag(d, "--startup-probe")[0]
    env = dict(kv.split("=", 1) for kv in flag(d, "--set-env-vars")[0].split(","))
    assert env == {**common, "SERVICE_ROLE": "worker", "SERVICE_URL": worker_url}
    for invoker in invokers:
        assert flag(cmds[invoker], "--member") == [f"serviceAccount:comfyui-tasks@{PROJECT}.iam.gserviceaccount.com"]
        assert flag(cmds[invoker], "--role") == ["roles/run.invoker"]

    url = f"https://comfyui-stubhash-{REGION}.a.run.app"
    assert f"URL:    {url}" in proc.stdout
    assert f'curl -H "Authorization: Bearer $(gcloud auth print-identity-token)" {url}/healthz' in proc.stdout


def normal(argv):
    """A command as text, without what differs between runs (temporary paths, the project number)."""
    text = shlex.join(argv).replace("PROJECT_NUMBER", STUB_NUMBER)
    return re.sub(r"--(lifecycle-file|policy)=\S*/", r"--\1=", text)


def test_second_run_creates_nothing_and_converges(stub):
    first, recs1 = stub.deploy(PROJECT, REGION, TAG)
    assert first.returncode == 0, first.stderr
    second, recs2 = stub.deploy(PROJECT, REGION, TAG)
    assert second.returncode == 0, second.stderr
    assert [a for a in argvs(recs2) if is_create(a)] == []
    # without HF_TOKEN the token secret holds a blank line: "no token" for ungated model types
    assert find(recs1, "secrets", "create", "hf-token")[0]["stdin_len"] == 1
    # the same commands in the same order, minus the creates; queues get their settings re-applied
    expected = []
    for a in argvs(recs1):
        if a[:3] == ["tasks", "queues", "create"]:
            expected.append(["tasks", "queues", "update", *a[3:]])
        elif not is_create(a):
            expected.append(a)
    assert [normal(a) for a in argvs(recs2)] == [normal(a) for a in expected]
    assert second.stdout == first.stdout


def test_dry_run_prints_every_command_and_runs_none(stub):
    proc, recs = stub.deploy("--dry-run", PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    assert recs == [] and not stub.log.exists()
    printed = [shlex.split(line[2:]) for line in proc.stderr.splitlines() if line.startswith("+ ")]
    assert all(p[0] == "gcloud" for p in printed)
    assert "Dry run: nothing was changed." in proc.stdout

    real, real_recs = stub.deploy(PROJECT, REGION, TAG)  # from scratch: every resource missing
    assert real.returncode == 0, real.stderr

    assert [normal(p[1:]) for p in printed] == [normal(a) for a in argvs(real_recs)]


# --------------------------------------------------------------------------- options


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


# --------------------------------------------------------------------------- the real gcloud

CREDENTIALS_MISSING = re.compile(
    r"You do not currently have an active account selected|credentials|gcloud auth login", re.I
)
ARGUMENT_ERROR = re.compile(
    r"unrecognized arguments|argument --?[\w-]+:|Invalid value|not recognized|Bad value|"
    r"interpreting .* as build config|Unable to read file|is not a valid|must be specified|"
    r"invalid choice|expected one argument|mutually exclusive",
    re.I,
)


def _real_gcloud_env(config_dir: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLOUDSDK_", "GOOGLE_", "GCE_")) and k not in DEPLOY_ENV
    }
    env.update(
        CLOUDSDK_CONFIG=config_dir,
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true",
        CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
        # never look for a metadata server: a closed local port answers at once
        GCE_METADATA_HOST="127.0.0.1:9",
        GCE_METADATA_IP="127.0.0.1:9",
        NO_GCE_CHECK="True",
    )
    return env


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed on this machine")
def test_every_recorded_command_parses_in_the_real_gcloud(stub):
    runs = [
        ((PROJECT, REGION, TAG), {"HF_TOKEN": "x"}),
        (
            (
                "--model-type",
                "sd3",
                "--min-instances",
                "1",
                "--gpu-zonal-redundancy",
                "--custom-nodes",
                "https://github.com/o/n@v1",
                "--models-mount",
                "gs://model-store/m",
                PROJECT,
                "europe-west1",
                "t2",
            ),
            {},
        ),
        (("--models-source", "gs://model-store", "--skip-build", PROJECT, REGION, TAG), {}),
        (("--metrics", "--skip-build", PROJECT, REGION, TAG), {}),
    ]
    records = []
    for args, env in runs:
        proc, recs = stub.deploy(*args, env=env)
        assert proc.returncode == 0, proc.stderr
        records += recs
    unique: dict[tuple, dict] = {}
    for r in records:
        argv = [
            next((f"{a.split('=', 1)[0]}={copy}" for path, copy in r["files"].items() if a.endswith("=" + path)), a)
            for a in r["argv"]
        ]
        unique.setdefault(tuple(argv), r)
    kinds = {" ".join(argv[:3]) for argv in unique}
    assert any(k.startswith("run deploy") for k in kinds) and any(k.startswith("builds submit") for k in kinds)

    config_dir = tempfile.mkdtemp(prefix="gcloud-config-", dir=stub.dir)
    env = _real_gcloud_env(config_dir)
    # one call first, so the empty config directory is initialised before the parallel calls
    first, *rest = list(unique.items())

    def replay(item):
        argv, record = item
        proc = subprocess.run(
            ["gcloud", *argv],
            input="replayed-secret\n",
            capture_output=True,
            text=True,
            env=env,
            cwd=record["cwd"],
            timeout=120,
        )
        return argv, proc

    results = [replay(first)]
    with ThreadPoolExecutor(max_workers=3) as pool:
        results += list(pool.map(replay, rest))
    problems = []
    for argv, proc in results:
        output = proc.stdout + proc.stderr
        if proc.returncode == 0 or ARGUMENT_ERROR.search(output) or not CREDENTIALS_MISSING.search(output):
            problems.append(f"gcloud {shlex.join(argv)}\n  rc={proc.returncode}: {output.strip()[:400]}")
    assert not problems, "\n".join(problems)
