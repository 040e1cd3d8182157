"""The image tier: both targets of the unmodified Dockerfile, built once per session on the engine
scripts/image-env.sh starts (Docker 20.10, a local Debian base), around local servers:

* ComfyUI's source: COMFYUI_SOURCE (a ComfyUI tree of deploy/comfyui.env's commit) or, where none is
  given (CI cannot reach GitHub), the project's stand-in, served as GitHub's archive tarball
  through the COMFYUI_REPO build argument. The session says which in its output.
* the models: a test models.txt (one `test` model type) whose checkpoint a local HTTP server
  serves: with a real ComfyUI, the tiny SD1.5 checkpoint, made in the image's own ComfyUI stage
  (test_resources/models/make_checkpoint.py); with the stand-in, 1 MiB of seeded bytes.
* a custom node: a local git repository (git daemon) pinned to its first commit, HEAD a second.

Without an engine (COMFYRUN_DOCKER_HOST) the tier skips and says why; in CI it fails instead.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.image.harness import (
    CHECKPOINT,
    NO_ENGINE,
    ROOT,
    Docker,
    FileServer,
    GitDaemon,
    build_context,
    comfyui_archive,
    comfyui_env,
    engine,
    sha256_of,
)

API_TAG, WORKER_TAG, COMFYUI_TAG = (
    "comfyrun-test-api:latest",
    "comfyrun-test-worker:latest",
    "comfyrun-test-comfyui:latest",
)


@dataclass
class Images:
    docker: Docker
    work: Path
    api: str
    worker: str
    real: bool  # the worker's ComfyUI is a real tree (COMFYUI_SOURCE), not the stand-in
    source: str  # what the worker's ComfyUI is, in words
    build_args: dict[str, str]
    checkpoint_sha256: str
    checkpoint_size: int
    checkpoint_url: str
    node_url: str
    node_pinned: str
    seconds: dict[str, float] = field(default_factory=dict)

    def models_file(self, sha256: str | None = None) -> str:
        return (
            f"test {self.checkpoint_url} checkpoints/{CHECKPOINT} {sha256 or self.checkpoint_sha256} "
            f"{self.checkpoint_size}\n"
        )


def _report(config: pytest.Config, line: str) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(f"image tier: {line}")


@pytest.fixture(scope="session")
def docker() -> Docker:
    found = engine()
    if found is None:
        if os.environ.get("CI", "").lower() not in ("", "0", "false"):
            pytest.fail(f"CI must run the image tier: {NO_ENGINE}")
        pytest.skip(NO_ENGINE)
    return found


@pytest.fixture(scope="session")
def images(docker: Docker, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest):
    work = tmp_path_factory.mktemp("image")
    pins = comfyui_env()
    commit = pins["COMFYUI_COMMIT"]
    given = os.environ.get("COMFYUI_SOURCE")
    repo_path, source = comfyui_archive(
        work / "served", commit, pins["COMFYUI_VERSION"], Path(given) if given else None
    )
    _report(request.config, f"the worker image's ComfyUI is {source}")
    files = FileServer(work / "served")
    node = GitDaemon(work / "git").start()
    build_args = {
        "PYTHON_IMAGE": os.environ.get("COMFYRUN_PYTHON_IMAGE", "comfyrun-test-base:bookworm"),
        "COMFYUI_REPO": files.url + repo_path,
        "MODEL_TYPE": "test",
        "CUSTOM_NODES": f"{node.url}@{node.pinned}",
    }
    models = work / "served" / "models"
    models.mkdir()
    seconds: dict[str, float] = {}
    try:
        if given:
            # The tiny SD1.5 checkpoint, made by the image's own ComfyUI and PyTorch.
            context = build_context(work / "context-comfyui")
            proc, seconds["comfyui stage"] = docker.build(
                context, COMFYUI_TAG, work / "build-comfyui.log", target="comfyui", **build_args
            )
            assert proc.returncode == 0, f"comfyui stage failed:\n{proc.stderr[-4000:]}"
            shutil.copy(ROOT / "test_resources" / "models" / "make_checkpoint.py", work / "make_checkpoint.py")
            made = docker.run(
                "run",
                "--rm",
                "--network",
                "none",
                "--user",
                f"{os.getuid()}:{os.getgid()}",
                "-v",
                f"{work}:/work",
                "--entrypoint",
                "/opt/comfy/bin/python",
                COMFYUI_TAG,
                "/work/make_checkpoint.py",
                "/work/made",
                "--comfyui-path",
                "/comfyui",
                timeout=600,
                check=False,
            )
            assert made.returncode == 0, made.stdout + made.stderr
            shutil.move(work / "made" / "checkpoints" / CHECKPOINT, models / CHECKPOINT)
        else:
            (models / CHECKPOINT).write_bytes(random.Random(18).randbytes(1 << 20))
        checkpoint = models / CHECKPOINT
        built = Images(
            docker=docker,
            work=work,
            api=API_TAG,
            worker=WORKER_TAG,
            real=bool(given),
            source=source,
            build_args=build_args,
            checkpoint_sha256=sha256_of(checkpoint),
            checkpoint_size=checkpoint.stat().st_size,
            checkpoint_url=f"{files.url}/models/{CHECKPOINT}",
            node_url=node.url,
            node_pinned=node.pinned,
            seconds=seconds,
        )
        context = build_context(work / "context", built.models_file())
        for target, tag in (("api", API_TAG), ("worker", WORKER_TAG)):
            proc, seconds[target] = docker.build(
                context, tag, work / f"build-{target}.log", target=target, **build_args
            )
            assert proc.returncode == 0, f"{target} build failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"
        _report(request.config, "build seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in seconds.items()))
        yield built
    finally:
        node.stop()
        files.close()


@pytest.fixture(scope="session")
def docker_cleanup(docker: Docker):
    """Containers a test left behind (a failure before its own stop) are removed at the end."""
    yield
    names = subprocess.run(
        docker.cmd("ps", "-aq", "--filter", "name=comfyrun-test-"), capture_output=True, text=True
    ).stdout.split()
    if names:
        docker.run("rm", "-f", *names, check=False)
