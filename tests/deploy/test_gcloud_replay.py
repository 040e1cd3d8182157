"""Every command deploy.sh records (tests/fixtures/deploy.py's stub) replayed through the real gcloud
CLI with no credentials: a misspelled flag or a bad value fails there with an argument error, a
valid command only for lack of an account. When it runs is decided in tests/conftest.py."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.fixtures.deploy import DEPLOY_ENV, PROJECT, REGION, TAG

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
# Each gcloud start costs a second or more of Python imports; ~100 commands on a loaded 2-core
# machine can pass the suite-wide 300 s limit.
@pytest.mark.timeout(600)
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
        (("--metrics", "--civitai-secret", "civ", "--skip-build", PROJECT, REGION, TAG), {"CIVITAI_TOKEN": "t"}),
        (("--public", "--skip-build", PROJECT, REGION, TAG), {}),
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
