"""deploy.sh's sequence against the recording `gcloud`: a first run creates everything with least
privilege then builds and deploys, a second run creates nothing and converges, and --dry-run
prints every command and runs none."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from tests.fixtures.deploy import PROJECT, REGION, ROOT, STUB_NUMBER, TAG, argvs, find, flag, is_create

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
        f"gs://{PROJECT}-comfyui-models",  # the default model type's 17 GB are mounted from it
    ]
    queues = find(recs, "tasks", "queues", "create")
    assert [r["argv"][3] for r in queues] == ["comfyui-high", "comfyui-normal", "comfyui-low", "comfyui-webhooks"]
    for r in queues:
        # the retry policy of docs/async.md: the job bounds its attempts, the queue only backs it up
        for setting, value in (("--max-attempts", "-1"), ("--max-retry-duration", "86400s"), ("--min-backoff", "1s")):
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
    # the Hugging Face token: read by the build (models) and by the worker (hf:// models at run time)
    hf_readers = {
        m for r in find(recs, "secrets", "add-iam-policy-binding", "hf-token") for m in flag(r["argv"], "--member")
    }
    assert hf_readers == {
        f"serviceAccount:comfyui-build@{PROJECT}.iam.gserviceaccount.com",
        f"serviceAccount:comfyui-run@{PROJECT}.iam.gserviceaccount.com",
    }

    # the models bucket's fill, the image build, then the api service, then the worker, each
    # followed by the task invoker's grant (tests/deploy/test_models_bucket.py has the models build)
    models_build, build = [i for i, a in enumerate(cmds) if a[:2] == ["builds", "submit"]]
    assert flag(cmds[models_build], "--config") == [str(ROOT / "deploy" / "cloudbuild-models.yaml")]
    deploys = [i for i, a in enumerate(cmds) if a[:2] == ["run", "deploy"]]
    invokers = [i for i, a in enumerate(cmds) if a[:3] == ["run", "services", "add-iam-policy-binding"]]
    last_create = max(i for i, a in enumerate(cmds) if is_create(a))
    assert len(deploys) == 2 and [cmds[i][2] for i in deploys] == ["comfyui-api", "comfyui"]
    assert [cmds[i][3] for i in invokers] == ["comfyui-api", "comfyui"]
    assert last_create < models_build < build < deploys[0] < invokers[0] < deploys[1] < invokers[1]
    b = cmds[build]
    assert flag(b, "--config") == [str(ROOT / "cloudbuild.yaml")]
    subs = dict(kv.split("=", 1) for kv in flag(b, "--substitutions")[0].split(","))
    assert subs == {
        "_REGION": REGION,
        "_REPOSITORY": "comfyui",
        "_SERVICE": "comfyui",
        "_TAG": TAG,
        "_MODEL_TYPE": "base",  # the models are in the bucket, not the image
        "_HF_SECRET": "hf-token",
        "_DEPLOY": "false",
        "_BAKE_MODELS": "false",
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
        "CIVITAI_MODELS": "false",  # off unless --civitai
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
    # the Hugging Face token serves hf:// models at run time as it served the build; no Civitai token
    assert flag(d, "--set-secrets") == ["HF_TOKEN=hf-token:latest"]
    for switch in ("--no-cpu-throttling", "--no-allow-unauthenticated", "--no-gpu-zonal-redundancy"):
        assert switch in d
    assert "httpGet.path=/healthz" in flag(d, "--startup-probe")[0]
    env = dict(kv.split("=", 1) for kv in flag(d, "--set-env-vars")[0].split(","))
    models_source = env.pop("MODELS_SOURCE")
    assert env == {**common, "SERVICE_ROLE": "worker", "SERVICE_URL": worker_url}
    assert models_source.startswith("/mnt/models/flux1-dev-fp8/")
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
