"""What the image tests drive: a Docker engine (scripts/image-env.sh starts one), the build context,
local servers standing in for GitHub and Hugging Face (ComfyUI's tarball, a checkpoint, a custom
node's git repository), and containers run as Cloud Run runs them.

Cloud Run's way, as far as one machine shows it: the image's user (1000), PORT set, the host's
network (no bridge here), and on shutdown SIGTERM, then SIGKILL 10 s later (`docker stop -t 10`).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import os
import shutil
import signal
import socket
import subprocess
import tarfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import requests

from tests.fixtures.asyncjobs import BASE_ENV, quick
from tests.fixtures.comfy import free_port

ROOT = Path(__file__).resolve().parents[2]
STANDIN = ROOT / "tests" / "standin"
DOCKER_CLIENT = "/usr/bin/docker"  # the engine's own client (a newer one on PATH may want buildx)
CHECKPOINT = "tiny-sd15.safetensors"  # the test models file's one checkpoint
NO_ENGINE = (
    "no Docker engine for the image tests: run `eval $(scripts/image-env.sh start)` as root "
    "(it installs Debian's docker.io, starts a daemon of its own and makes the local base), as .ci/run does"
)


def comfyui_env() -> dict[str, str]:
    values = {}
    for line in (ROOT / "deploy" / "comfyui.env").read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, value = line.split("=", 1)
            values[key.strip()] = value.strip()
    return values


class Docker:
    def __init__(self, host: str):
        self.host = host

    def cmd(self, *args: object) -> list[str]:
        return [DOCKER_CLIENT, "-H", self.host, *(str(a) for a in args)]

    def run(self, *args: object, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(
                f"docker {' '.join(map(str, args))} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def build(
        self, context: Path, tag: str, log: Path, target: str | None = None, **build_args: str
    ) -> tuple[subprocess.CompletedProcess[str], float]:
        """`docker build` of the context's unmodified Dockerfile, BuildKit on, the host's network."""
        args: list[object] = ["build", "--progress", "plain", "--network", "host", "-t", tag]
        if target:
            args += ["--target", target]
        for key, value in build_args.items():
            args += ["--build-arg", f"{key}={value}"]
        started = time.monotonic()
        proc = subprocess.run(
            [*self.cmd(*args), str(context)],
            capture_output=True,
            text=True,
            timeout=1800,
            env={**os.environ, "DOCKER_BUILDKIT": "1"},
        )
        seconds = time.monotonic() - started
        log.write_text(proc.stdout + proc.stderr)
        return proc, seconds

    def sh(self, image: str, script: str, *run_args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """A shell command in a throwaway container of the image (its own user, no network)."""
        return self.run(
            "run",
            "--rm",
            "--network",
            "none",
            *run_args,
            "--entrypoint",
            "sh",
            image,
            "-c",
            script,
            timeout=timeout,
            check=False,
        )


def engine() -> Docker | None:
    host = os.environ.get("COMFYRUN_DOCKER_HOST")
    if not host or not Path(DOCKER_CLIENT).exists():
        return None
    docker = Docker(host)
    if docker.run("info", timeout=20, check=False).returncode != 0:
        return None
    return docker


def dockerignore_allowlist() -> list[str]:
    """The paths .dockerignore lets into the build context (it is an allowlist: `*`, then `!path`)."""
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    return [line[1:].rstrip("/") for line in lines if line.startswith("!")]


def build_context(dest: Path, models_file: str | None = None, snapshot: str | None = None) -> Path:
    """A copy of the repository's build context, with the operator's models.txt replaced by
    `models_file` when given, and `snapshot` as deploy/snapshot.json when given: what an operator
    who edits models.txt or adds a ComfyUI-Manager snapshot builds. The Dockerfile and
    .dockerignore are the repository's own, unchanged; allowlisted paths the repository lacks
    (the optional snapshot) are left out, as they are from the operator's context."""
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for name in ["Dockerfile", ".dockerignore", *dockerignore_allowlist()]:
        source = ROOT / name
        if not source.exists():
            continue
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    if models_file is not None:
        (dest / "models.txt").write_text(models_file)
    if snapshot is not None:
        (dest / "deploy" / "snapshot.json").write_text(snapshot)
    return dest


# --------------------------------------------------------------------------- local servers


# Fixed ports where free: the URLs are build arguments, and the same ones from one session to the
# next keep every layer of the last build cached (another URL would rebuild from the step using it).
FILES_PORT, GIT_PORT = 38471, 38472


def preferred_port(port: int) -> int:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return free_port()
    return port


class FileServer:
    """A directory over HTTP on loopback (GitHub's archive URLs, a model host)."""

    def __init__(self, directory: Path):
        handler = functools.partial(_QuietHandler, directory=str(directory))
        self.server = ThreadingHTTPServer(("127.0.0.1", preferred_port(FILES_PORT)), handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


def comfyui_archive(served: Path, commit: str, version: str, source: Path | None) -> tuple[str, str]:
    """GitHub's archive tarball (top folder ComfyUI-<commit>) of the ComfyUI tree at `source`, or of
    the stand-in (tests/standin/) with the comfyui_version.py the Dockerfile checks and the recorded
    catalogue it serves. It lands at `<served>/<digest>/archive/<commit>.tar.gz`; returns the
    repository path to give COMFYUI_REPO (`/<digest>`) and what the tarball holds, in words.

    The path names the content because the build's cache keys a step by its command and arguments,
    not by what it downloads: another tree at the same URL would reuse the last one's layer."""
    top = f"ComfyUI-{commit}"

    def skip(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
        parts = Path(info.name).parts
        return None if "__pycache__" in parts or ".git" in parts else info

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        if source is not None:
            tar.add(source, arcname=top, filter=skip)
            note = f"the ComfyUI tree at {source}"
        else:
            tar.add(STANDIN, arcname=top, filter=skip)
            for name, data in {
                "comfyui_version.py": f'__version__ = "{version}"\n'.encode(),
                "object_info.json": (ROOT / "test_resources" / "comfy" / "object_info.json").read_bytes(),
            }.items():
                info = tarfile.TarInfo(f"{top}/{name}")
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))
            note = "the project's ComfyUI stand-in (tests/standin/): no ComfyUI tree given (COMFYUI_SOURCE)"
    digest = hashlib.sha256(raw.getvalue()).hexdigest()[:16]
    folder = served / digest / "archive"
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(folder / f"{commit}.tar.gz", "wb", compresslevel=1, mtime=0) as out:
        out.write(raw.getvalue())
    return f"/{digest}", note


NODE_NAME = "ComfyUI-ImageTierNode"
NODE_INIT = '''"""A custom node for the image tests: which commit it is, in a node ComfyUI lists."""
PINNED = "{marker}"


class ImageTierPinned:
    @classmethod
    def INPUT_TYPES(cls):
        return {{"required": {{"text": ("STRING", {{"default": PINNED}})}}}}

    RETURN_TYPES = ("STRING",)
    FUNCTION = "run"
    CATEGORY = "testing"

    def run(self, text):
        return (text,)


NODE_CLASS_MAPPINGS = {{"ImageTierPinned": ImageTierPinned}}
'''


@dataclass
class GitDaemon:
    """A custom node's repository over git://, two commits: the pinned one, then a newer HEAD."""

    base: Path
    port: int = 0
    pinned: str = ""
    process: subprocess.Popen[bytes] | None = None
    url: str = field(init=False, default="")

    def start(self) -> GitDaemon:
        repo = self.base / NODE_NAME
        repo.mkdir(parents=True)
        git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.com"]
        # Fixed dates: the same commits, so the same CUSTOM_NODES build argument, every session.
        dated = {**os.environ, "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z"}
        subprocess.run([*git, "init", "-q", "-b", "main"], check=True)
        for marker in ("pinned", "head"):
            (repo / "__init__.py").write_text(NODE_INIT.format(marker=marker))
            subprocess.run([*git, "add", "-A"], check=True)
            subprocess.run([*git, "commit", "-q", "-m", marker], check=True, env=dated)
            if marker == "pinned":
                self.pinned = subprocess.run(
                    [*git, "rev-parse", "HEAD"], check=True, capture_output=True, text=True
                ).stdout.strip()
        # A shallow fetch of a commit by its id (install_custom_nodes.sh pins with @<commit>).
        subprocess.run([*git, "config", "uploadpack.allowAnySHA1InWant", "true"], check=True)
        self.port = preferred_port(GIT_PORT)
        self.process = subprocess.Popen(
            [
                "git",
                "daemon",
                "--export-all",
                f"--base-path={self.base}",
                "--listen=127.0.0.1",
                f"--port={self.port}",
                "--reuseaddr",
                str(self.base),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # `git daemon` runs git-daemon as a child: stop() ends the group
        )
        self.url = f"git://127.0.0.1:{self.port}/{NODE_NAME}"
        deadline = time.monotonic() + 20
        while subprocess.run(["git", "ls-remote", self.url], capture_output=True).returncode != 0:
            assert time.monotonic() < deadline, "git daemon did not answer in 20 s"
            time.sleep(0.1)
        return self

    def stop(self) -> None:
        if self.process is not None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(10)


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------- containers


@dataclass
class Container:
    """One container of an image, run as Cloud Run runs it, with the service's HTTP API on PORT."""

    docker: Docker
    image: str
    env: dict[str, str]
    port: int = 0
    name: str = field(default_factory=lambda: f"comfyrun-test-{uuid.uuid4().hex[:8]}")
    started_at: float = 0.0
    ready_s: float = 0.0  # docker run -> /healthz 200, once wait_ready has seen it

    def start(self) -> Container:
        self.port = self.port or free_port()
        args: list[object] = ["run", "-d", "--name", self.name, "--network", "host", "--user", "1000:1000"]
        for key, value in {**self.env, "PORT": str(self.port)}.items():
            args += ["-e", f"{key}={value}"]
        self.started_at = time.monotonic()
        self.docker.run(*args, self.image, timeout=60)
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def get(self, path: str, **kw: object) -> requests.Response:
        return requests.get(self.url + path, timeout=kw.pop("timeout", 30), **kw)  # type: ignore[arg-type]

    def post(self, path: str, **kw: object) -> requests.Response:
        return requests.post(self.url + path, timeout=kw.pop("timeout", 120), **kw)  # type: ignore[arg-type]

    def running(self) -> bool:
        proc = self.docker.run("inspect", "-f", "{{.State.Running}}", self.name, check=False)
        return proc.stdout.strip() == "true"

    def wait_ready(self, timeout: float = 180) -> float:
        """Polls /healthz every 50 ms; returns seconds from `docker run` to the first 200."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.get("/healthz", timeout=2).status_code == 200:
                    self.ready_s = time.monotonic() - self.started_at
                    return self.ready_s
            except requests.RequestException:
                pass
            if not self.running() or time.monotonic() > deadline:
                raise AssertionError(f"{self.image} not ready (running: {self.running()}):\n{self.logs()[-4000:]}")
            time.sleep(0.05)

    def logs(self) -> str:
        proc = self.docker.run("logs", self.name, check=False)
        return proc.stdout + proc.stderr

    def stop(self) -> tuple[float, int]:
        """SIGTERM, SIGKILL 10 s later if still running: (seconds to exit, exit code)."""
        started = time.monotonic()
        self.docker.run("stop", "-t", "10", self.name, timeout=60)
        seconds = time.monotonic() - started
        code = int(self.docker.run("inspect", "-f", "{{.State.ExitCode}}", self.name).stdout.strip())
        return seconds, code

    def remove(self) -> None:
        self.docker.run("rm", "-f", self.name, check=False)


def worker_env(real: bool, **extra: str) -> dict[str, str]:
    """A worker container's environment on CPU (`real`: its ComfyUI is a real tree, not the stand-in)."""
    env = {**BASE_ENV, "COMFYUI_ARGS": "--cpu", "REQUIRE_GPU": "false", "COMFYUI_PORT": str(free_port()), **extra}
    if not real:
        # The stand-in serves the recorded catalogue; the service passes it only allowlisted variables.
        env.update(STANDIN_OBJECT_INFO="/comfyui/object_info.json", COMFYUI_ENV_PASSTHROUGH="STANDIN_*")
    return env


def txt2img_request(real: bool, seed: int, size: int = 64) -> dict:
    """The shipped sd15 template on the tiny checkpoint, or with the stand-in a graph it runs."""
    if real:
        params = {
            "prompt": "a lighthouse",
            "checkpoint": CHECKPOINT,
            "width": size,
            "height": size,
            "steps": 2,
            "seed": seed,
            "sampler": "euler",
            "batch_size": 1,
        }
        return {"workflow_id": "sd15-txt2img", "params": params}
    return {"workflow": quick(seed)}
