"""deploy.sh run for real through the real gcloud CLI, against a local stand-in for the Google APIs
(tests/fixtures/googleapis.py): every request body gcloud sends is checked against the API's
published schema and, where the client libraries have message types, parsed with them. A value
the API would refuse (a queue's `"maxRetryDuration": "24h"`) is answered 400 as the API would,
and deploy.sh stops there, as a real deploy would.

The whole of deploy.sh from an empty project (every create, the build, both services); then a
re-run's updates with the worker's other shapes, as commands recorded by the stub and sent through
the real gcloud (the whole script twice would double the test's minutes: most of them are gcloud
starting, a few seconds a call on a loaded machine)."""

from __future__ import annotations

import datetime
import json
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from google.cloud import tasks_v2

from tests.fixtures.deploy import Stub
from tests.fixtures.googleapis import FakeGoogleAPIs

ROOT = Path(__file__).resolve().parents[2]
PROJECT, REGION, TAG = "demo-project", "us-central1", "v1"
DEPLOY_SETTINGS = ("SERVICE", "MODEL_TYPE", "MIN_INSTANCES", "MAX_INSTANCES", "CONCURRENCY", "BUCKET", "HF_TOKEN")
DEPLOY_SETTINGS += ("MODELS_SOURCE", "MODELS_MOUNT", "SKIP_BUILD", "DRY_RUN", "WEBHOOK_SECRET", "CUSTOM_NODES")
DEPLOY_SETTINGS += ("BAKE_MODELS",)
DEPLOY_SETTINGS += ("SNAPSHOT", "CIVITAI", "CIVITAI_SECRET", "CIVITAI_TOKEN")

pytestmark = pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed here")


@pytest.fixture
def googleapis():
    fake = FakeGoogleAPIs()
    yield fake
    fake.close()


def gcloud_env(fake: FakeGoogleAPIs, config_dir: str) -> dict[str, str]:
    """A throwaway gcloud configuration whose every API is the stand-in, with a fake access token."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CLOUDSDK_", "GOOGLE_", "GCE_"))
        and k.lower() not in ("http_proxy", "https_proxy", "no_proxy", "all_proxy")
        and k not in DEPLOY_SETTINGS
    }
    env.update(
        CLOUDSDK_CONFIG=config_dir,
        CLOUDSDK_AUTH_ACCESS_TOKEN="ya29.fake-token",
        CLOUDSDK_CORE_DISABLE_PROMPTS="1",
        CLOUDSDK_CORE_DISABLE_USAGE_REPORTING="true",
        CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK="true",
        CLOUDSDK_CORE_CHECK_GCE_METADATA="false",
        GCE_METADATA_HOST="127.0.0.1:9",
        NO_GCE_CHECK="True",
        RETRY_DELAY_S="0",
    )
    # each gcloud property is also read from CLOUDSDK_<SECTION>_<NAME>
    env.update({f"CLOUDSDK_{k.upper().replace('/', '_')}": v for k, v in fake.gcloud_properties().items()})
    return env


def deploy(fake: FakeGoogleAPIs, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    before = len(fake.calls)
    proc = subprocess.run(
        ["bash", str(ROOT / "deploy.sh"), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=400
    )
    assert not fake.problems, "the APIs would refuse what gcloud sent:\n" + "\n".join(fake.problems)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert len(fake.calls) > before
    return proc


def bodies(fake: FakeGoogleAPIs, api_method: str) -> list[dict]:
    return [c.body for c in fake.calls if c.api_method == api_method]


def test_every_request_deploy_sh_sends_is_one_the_google_apis_accept(googleapis, tmp_path):
    env = gcloud_env(googleapis, tempfile.mkdtemp(prefix="gcloud-config-", dir=tmp_path))
    deploy(googleapis, {**env, "HF_TOKEN": "hf_x"}, PROJECT, REGION, TAG)

    methods = {c.api_method for c in googleapis.calls}
    for expected in (
        "serviceusage.services.batchEnable",
        "artifactregistry.projects.locations.repositories.create",
        "iam.projects.serviceAccounts.create",
        "secretmanager.projects.secrets.create",
        "storage.buckets.insert",
        "storage.buckets.setIamPolicy",
        "cloudtasks.projects.locations.queues.create",
        "cloudtasks.projects.locations.queues.setIamPolicy",
        "cloudresourcemanager.projects.setIamPolicy",
        "cloudbuild.projects.locations.builds.create",
        "run.namespaces.services.create",
        "run.projects.locations.services.setIamPolicy",
    ):
        assert expected in methods, f"deploy.sh never called {expected}"

    # The queues as the service's client library reads them: a 24-hour backstop, 1 s first retry.
    queues = [
        tasks_v2.Queue.from_json(json.dumps(b))
        for b in bodies(googleapis, "cloudtasks.projects.locations.queues.create")
    ]
    assert [q.name.rsplit("/", 1)[-1] for q in queues] == [
        "comfyui-high",
        "comfyui-normal",
        "comfyui-low",
        "comfyui-webhooks",
    ]
    for q in queues:
        assert q.retry_config.max_retry_duration == datetime.timedelta(hours=24)
        assert q.retry_config.min_backoff == datetime.timedelta(seconds=1) and q.retry_config.max_attempts == -1

    # The default model type's 17 GB exceed the 10 GB Google advises baking into a GPU image: a models
    # bucket (its body checked against the Storage API's schema), a models build that fills it after
    # the marker was not found, and an image built as `base`.
    models_bucket = {b["name"]: b for b in bodies(googleapis, "storage.buckets.insert")}[f"{PROJECT}-comfyui-models"]
    assert models_bucket["location"].lower() == REGION
    assert models_bucket["iamConfiguration"]["uniformBucketLevelAccess"] == {"enabled": True}
    marker = [c.path for c in googleapis.calls if c.api_method == "storage.objects.get"]
    assert len(marker) == 1 and marker[0].startswith(f"/storage/v1/b/{PROJECT}-comfyui-models/o/flux1-dev-fp8")
    models_build, build = bodies(googleapis, "cloudbuild.projects.locations.builds.create")
    assert [step["id"] for step in models_build["steps"]] == ["download", "upload"]
    assert models_build["substitutions"]["_MODEL_TYPE"] == "flux1-dev-fp8"
    models_uri = models_build["substitutions"]["_MODELS_URI"]
    assert models_uri.startswith(f"gs://{PROJECT}-comfyui-models/flux1-dev-fp8/")
    (secret,) = models_build["availableSecrets"]["secretManager"]  # Cloud Build substitutes it, as in cloudbuild.yaml
    assert secret["versionName"].endswith("/secrets/${_HF_SECRET}/versions/latest") and secret["env"] == "HF_TOKEN"
    assert models_build["substitutions"]["_HF_SECRET"] == "hf-token"
    assert build["substitutions"]["_MODEL_TYPE"] == "base"
    assert build["substitutions"]["_DEPLOY"] == "false" and build["options"]["machineType"] == "E2_HIGHCPU_32"
    for submitted in (models_build, build):
        assert submitted["serviceAccount"].endswith(f"/comfyui-build@{PROJECT}.iam.gserviceaccount.com")

    api, worker = bodies(googleapis, "run.namespaces.services.create")
    assert api["metadata"]["name"] == "comfyui-api" and worker["metadata"]["name"] == "comfyui"
    spec = worker["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"run.googleapis.com/accelerator": "nvidia-l4"}
    assert spec["containers"][0]["resources"]["limits"] == {"cpu": "8", "memory": "32Gi", "nvidia.com/gpu": "1"}
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert annotations["run.googleapis.com/cpu-throttling"] == "False"
    assert annotations["run.googleapis.com/gpu-zonal-redundancy-disabled"] == "True"
    (volume,) = spec["volumes"]
    assert volume["csi"]["volumeAttributes"] == {"bucketName": f"{PROJECT}-comfyui-models"}
    assert volume["csi"]["readOnly"] is True and volume["csi"]["driver"] == "gcsfuse.run.googleapis.com"
    assert spec["containers"][0]["volumeMounts"] == [{"name": volume["name"], "mountPath": "/mnt/models"}]
    env = {e["name"]: e.get("value") for e in spec["containers"][0]["env"]}
    assert env["MODEL_TYPE"] == "flux1-dev-fp8"
    assert env["MODELS_SOURCE"] == "/mnt/models" + models_uri.removeprefix(f"gs://{PROJECT}-comfyui-models")
    assert not api["spec"]["template"]["spec"].get("nodeSelector")


def test_updates_and_the_workers_other_shapes_are_accepted_too(googleapis, tmp_path):
    """A re-run's queue updates and service replacements, with the metrics sidecar, the models volume
    and zonal redundancy: deploy.sh's commands as the recording stub took them down (every resource
    already there), then sent through the real gcloud to the stand-in holding those resources."""
    stub = Stub(tmp_path)
    for lane in ("high", "normal", "low", "webhooks"):
        stub.put("queue", f"comfyui-{lane}")
    for name in ("comfyui-run", "comfyui-tasks", "comfyui-build"):
        stub.put("service-account", name)
    shapes = ("--metrics", "--gpu-zonal-redundancy", "--models-mount", "gs://model-store/comfy")
    shapes += ("--model-cache-bucket", "model-cache-store")
    proc, records = stub.deploy("--skip-build", *shapes, PROJECT, REGION, TAG)
    assert proc.returncode == 0, proc.stderr
    commands = [
        r["argv"]
        for r in records
        if r["argv"][:3] == ["tasks", "queues", "update"] or r["argv"][:2] == ["run", "deploy"]
    ]
    assert len(commands) == 6

    for lane in ("high", "normal", "low", "webhooks"):
        googleapis.seed(f"/v2/projects/{PROJECT}/locations/{REGION}/queues/comfyui-{lane}", {})
    for name in ("comfyui-api", "comfyui"):
        googleapis.seed(
            f"/apis/serving.knative.dev/v1/namespaces/{PROJECT}/services/{name}",
            {
                "apiVersion": "serving.knative.dev/v1",
                "kind": "Service",
                "metadata": {"name": name, "namespace": PROJECT},
                "spec": {"template": {"metadata": {}, "spec": {"containers": [{"image": "old"}]}}},
            },
        )
    env = gcloud_env(googleapis, tempfile.mkdtemp(prefix="gcloud-config-", dir=tmp_path))
    gcloud(env, commands[0])  # one first, so the configuration directory is set up once
    with ThreadPoolExecutor(max_workers=3) as pool:
        list(pool.map(lambda argv: gcloud(env, argv), commands[1:]))
    assert not googleapis.problems, "the APIs would refuse what gcloud sent:\n" + "\n".join(googleapis.problems)

    patched = bodies(googleapis, "cloudtasks.projects.locations.queues.patch")
    assert len(patched) == 4
    for body in patched:
        queue = tasks_v2.Queue.from_json(json.dumps(body))
        assert queue.retry_config.max_retry_duration == datetime.timedelta(hours=24)
    replaced = {b["metadata"]["name"]: b for b in bodies(googleapis, "run.namespaces.services.replaceService")}
    assert sorted(replaced) == ["comfyui", "comfyui-api"]
    worker = replaced["comfyui"]["spec"]["template"]
    assert {"app", "collector"} <= {c.get("name") for c in worker["spec"]["containers"]}
    models, cache = worker["spec"]["volumes"]
    assert models["csi"]["volumeAttributes"] == {"bucketName": "model-store"} and models["csi"]["readOnly"]
    # The model cache's store: read-write (no readOnly), mounted where MODEL_CACHE_STORE points.
    assert cache["csi"]["volumeAttributes"] == {"bucketName": "model-cache-store"}
    assert not cache["csi"].get("readOnly") and cache["csi"]["driver"] == "gcsfuse.run.googleapis.com"
    (app,) = [c for c in worker["spec"]["containers"] if c.get("name") == "app"]
    assert {"name": cache["name"], "mountPath": "/mnt/model-cache"} in app["volumeMounts"]
    assert {"name": "MODEL_CACHE_STORE", "value": "/mnt/model-cache"} in app["env"]
    assert worker["metadata"]["annotations"].get("run.googleapis.com/gpu-zonal-redundancy-disabled") != "True"


def gcloud(env: dict[str, str], argv: list[str]) -> None:
    proc = subprocess.run(["gcloud", *argv], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"gcloud {' '.join(argv)}\n{proc.stderr[-3000:]}"
