"""ComfyUI as a supervised child process.

The supervisor starts ComfyUI on loopback with folders the service owns, forwards its log lines
to ours, tells the owner when it listens and when it exits, and restarts it with backoff.

ComfyUI and its custom nodes get only the environment they need to run (`comfy_env`): locale,
paths, Python, CUDA and cache settings. The service's secrets (WEBHOOK_SECRET, HF_TOKEN, cloud
credentials) stay out of the child, where any node could read them (/proc/<pid>/environ).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from handler import logs
from handler.comfyui import gpu
from handler.config.cloud import CloudSettings
from handler.config.comfyui import ComfyUISettings
from handler.config.http import HttpSettings
from handler.config.models import ModelSettings
from handler.errors import REQUEST_FOLDER
from handler.models.refs import LOADERS
from handler.runtime import Spawn, daemon_thread

log = logging.getLogger("handler.comfyui.supervisor")
comfy_log = logging.getLogger("comfyui")

# ComfyUI prints this once its HTTP server accepts connections: readiness is event-driven.
LISTENING_MARKER = "To see the GUI go to:"
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
# A run this long resets the backoff: the crash was not a boot loop.
STABLE_RUN_S = 60.0

# What ComfyUI inherits: exact names, and prefixes (ending in "_"). Everything else stays here.
ENV_NAMES = frozenset(
    {
        "PATH",
        "HOME",
        "USER",
        "LOGNAME",
        "LANG",
        "LANGUAGE",
        "TZ",
        "TMPDIR",
        "TERM",
        "LD_LIBRARY_PATH",
        "SSL_CERT_FILE",
        "SSL_CERT_DIR",
        "REQUESTS_CA_BUNDLE",
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_HUB_OFFLINE",
        "HF_HUB_DISABLE_TELEMETRY",
        "TRANSFORMERS_CACHE",
        "TORCH_HOME",
        "XDG_CACHE_HOME",
        "XDG_CONFIG_HOME",
        "XDG_DATA_HOME",
    }
)
ENV_PREFIXES = (
    "LC_",
    "PYTHON",
    "CUDA_",
    "NVIDIA_",
    "CUDNN_",
    "NCCL_",
    "PYTORCH_",
    "TORCH_",
    "OMP_",
    "MKL_",
    "OPENBLAS_",
    "TRITON_",
)
# Never passed, whatever the lists above or COMFYUI_ENV_PASSTHROUGH say: cloud credentials and
# anything named like a secret.
ENV_SECRET_WORDS = ("TOKEN", "SECRET", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE", "_KEY", "APIKEY")
ENV_NEVER_PREFIXES = ("GOOGLE_", "GCLOUD", "CLOUDSDK_", "AWS_", "AZURE_", "WEBHOOK_")
# Set for ComfyUI unless the operator sets them. PyTorch's OpenMP threads otherwise spin on every
# core after each parallel operation, taking the CPU this service needs on the same cores (it ran
# 1.3-1.5x slower for 50 queued jobs on 2 cores) while ComfyUI itself gains nothing measurable.
COMFY_ENV_DEFAULTS = {"OMP_WAIT_POLICY": "PASSIVE"}


def comfy_env(environ: dict[str, str], passthrough: tuple[str, ...] = ()) -> dict[str, str]:
    """The environment ComfyUI runs with: an allowlist of `environ`, COMFY_ENV_DEFAULTS where
    `environ` does not set them, and PYTHONUNBUFFERED."""
    extra_names = {name for name in passthrough if not name.endswith("*")}
    extra_prefixes = tuple(name[:-1] for name in passthrough if name.endswith("*"))
    env = {}
    for name, value in environ.items():
        allowed = (
            name in ENV_NAMES
            or name.startswith(ENV_PREFIXES)
            or name in extra_names
            or (extra_prefixes and name.startswith(extra_prefixes))
        )
        secret = name.upper().startswith(ENV_NEVER_PREFIXES) or any(word in name.upper() for word in ENV_SECRET_WORDS)
        if allowed and not secret:
            env[name] = value
    env = {**COMFY_ENV_DEFAULTS, **env}
    env["PYTHONUNBUFFERED"] = "1"
    return env


# Custom-node packages the service installs into ComfyUI: a `custom_nodes` search path given to
# ComfyUI in an extra paths file, so ComfyUI's own folder (read-only in the image) is untouched.
EXTENSIONS = Path(__file__).resolve().parent / "extension"
ISOLATION_EXTENSION = "comfyrun_isolation"


def extension_config(folder: Path) -> Path:
    """Write the extra paths file that adds EXTENSIONS to ComfyUI's custom node folders."""
    path = folder / "comfyrun_extensions.yaml"
    path.write_text(f"comfyrun:\n  custom_nodes: {json.dumps(str(EXTENSIONS))}\n", encoding="utf-8")
    return path


def with_isolation_whitelisted(args: tuple[str, ...]) -> list[str]:
    """COMFYUI_ARGS, with the isolation extension loaded even under `--disable-all-custom-nodes`:
    added to the operator's `--whitelist-custom-nodes` (ComfyUI keeps only the last one given)."""
    words = list(args)
    if "--whitelist-custom-nodes" in words:
        words.insert(words.index("--whitelist-custom-nodes") + 1, ISOLATION_EXTENSION)
    elif "--disable-all-custom-nodes" in words:
        words += ["--whitelist-custom-nodes", ISOLATION_EXTENSION]
    return words


def _die_with_parent() -> None:
    """In the child, before exec: if the service dies hard, ComfyUI goes too (Linux only)."""
    try:
        import ctypes

        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass


@dataclass(frozen=True)
class ComfyFolders:
    input: Path
    output: Path
    temp: Path  # where ComfyUI's type="temp" files land

    @classmethod
    def under(cls, base: Path) -> ComfyFolders:
        # ComfyUI appends "temp" to --temp-directory itself.
        return cls(input=base / "input", output=base / "output", temp=base / "temp" / "temp")

    def create(self) -> None:
        for folder in (self.input, self.output, self.temp, self.temp.parent.parent / "user"):
            folder.mkdir(parents=True, exist_ok=True)

    def remove_request_folders(self) -> int:
        """Remove what earlier runs left (a `kill -9` runs no cleanup): every request folder
        (`errors.REQUEST_FOLDER`) under input, output and temp. The operator's files stay."""
        removed = 0
        for root in (self.input, self.output, self.temp):
            try:
                entries = list(root.iterdir())
            except OSError:
                continue
            for entry in entries:
                if REQUEST_FOLDER.fullmatch(entry.name) and entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry, ignore_errors=True)
                    removed += 1
        return removed

    def placeholders(self) -> dict[Path, str]:
        """How answers name these folders instead of their absolute paths."""
        return {self.input: "<input>", self.output: "<output>", self.temp: "<temp>"}


def private_paths(
    folders: ComfyFolders | None, *, comfyui: ComfyUISettings, models: ModelSettings, http: HttpSettings
) -> dict[Path, str]:
    """Folders of this machine that no answer may name, with what answers say instead."""
    paths = {http.state_dir: "<server>", Path(__file__).resolve().parents[1]: "<server>"}
    if comfyui.comfyui_path:
        paths[comfyui.comfyui_path] = "<comfyui>"
    if models.model_urls:
        paths[models.cache_root(http.comfyui_base_dir).resolve()] = "<models>"
        if models.model_cache_store is not None:
            paths[models.model_cache_store.resolve()] = "<models>"
    if folders:
        paths[folders.input.parent] = "<server>"
        paths.update(folders.placeholders())
    return paths


# ComfyUI arguments the service sets itself (`ComfySupervisor.command`), and what to use instead:
# given in COMFYUI_ARGS they would move ComfyUI away from where the service looks for it.
OWN_ARGS = {
    "--port": "set COMFYUI_PORT instead (the port the service starts ComfyUI on and connects to)",
    "--listen": "ComfyUI listens on 127.0.0.1 for this service only; to use a ComfyUI elsewhere, set COMFYUI_URL",
    "--tls-keyfile": "the service talks plain HTTP to ComfyUI on 127.0.0.1; TLS ends in front of the service",
    "--tls-certfile": "the service talks plain HTTP to ComfyUI on 127.0.0.1; TLS ends in front of the service",
    "--input-directory": "set STATE_DIR instead (ComfyUI's input/, output/, temp/ and user/ are under it)",
    "--output-directory": "set STATE_DIR instead (ComfyUI's input/, output/, temp/ and user/ are under it)",
    "--temp-directory": "set STATE_DIR instead (ComfyUI's input/, output/, temp/ and user/ are under it)",
    "--user-directory": "set STATE_DIR instead (ComfyUI's input/, output/, temp/ and user/ are under it)",
    "--database-url": "the service gives ComfyUI an in-memory database",
    "--models-directory": "set MODELS_DIR instead (the folder models are downloaded to and listed from)",
    "--base-directory": "set MODELS_DIR (models) and STATE_DIR (ComfyUI's folders) instead",
    "--verbose": "set COMFY_LOG_LEVEL instead",
}


def refuse_own_args(args: tuple[str, ...] | list[str]) -> None:
    """ValueError (a configuration error at start) for a COMFYUI_ARGS flag that `OWN_ARGS` names."""
    for arg in args:
        flag = arg.split("=", 1)[0]
        if flag in OWN_ARGS:
            raise ValueError(f"COMFYUI_ARGS must not contain {flag}: {OWN_ARGS[flag]}")


class ComfySupervisor:
    def __init__(
        self,
        *,
        comfyui: ComfyUISettings,
        models: ModelSettings,
        http: HttpSettings,
        on_listening: Callable[[], None],
        on_exit: Callable[[int], None],
        spawn: Spawn = daemon_thread,
        started: subprocess.Popen[bytes] | None = None,
    ):
        """`started`: the first ComfyUI, already spawned by `boot_early` (`python -m handler`
        starts it before it loads the web stack); the supervisor adopts it as its first run."""
        if comfyui.comfyui_path is None:
            raise ValueError("COMFYUI_PATH is not set")
        refuse_own_args(comfyui.comfyui_args)
        self.comfyui, self.models = comfyui, models
        self.base_dir = http.comfyui_base_dir
        self.folders = ComfyFolders.under(self.base_dir)
        self.url = f"http://127.0.0.1:{comfyui.comfyui_port}"
        self._on_listening = on_listening
        self._on_exit = on_exit
        self._spawn = spawn
        self._stopping = threading.Event()
        self._process: subprocess.Popen[bytes] | None = None
        self._started = started
        self._thread: threading.Thread | None = None
        self.restarts = 0

    def command(self) -> list[str]:
        base = self.base_dir
        return [
            self.comfyui.comfyui_python,
            "main.py",
            "--listen",
            "127.0.0.1",
            "--port",
            str(self.comfyui.comfyui_port),
            "--input-directory",
            str(self.folders.input),
            "--output-directory",
            str(self.folders.output),
            "--temp-directory",
            str(base / "temp"),
            # Keep ComfyUI's user data and database out of its source tree (read-only in the image).
            "--user-directory",
            str(base / "user"),
            "--database-url",
            "sqlite:///:memory:",
            "--disable-auto-launch",
            "--verbose",
            self.comfyui.comfy_log_level,
            *(["--models-directory", str(self.models.models_dir)] if self.models.models_dir else []),
            *(["--extra-model-paths-config", str(self.model_paths_file)] if self.models.model_urls else []),
            # The isolation extension (docs/security.md): each prompt sees only its request's folders.
            "--extra-model-paths-config",
            str(base / "comfyrun_extensions.yaml"),
            *with_isolation_whitelisted(self.comfyui.comfyui_args),
        ]

    @property
    def model_paths_file(self) -> Path:
        return self.base_dir / "extra_model_paths.yaml"

    def write_model_paths(self) -> None:
        """Show ComfyUI the model cache's folders (and nothing else of it: not its part files).
        JSON is YAML, and needs no quoting rules of its own for the path."""
        folders = {folder: folder for folder in sorted(set(LOADERS.values()))}
        config = {
            "comfyrun_model_cache": {"base_path": str(self.models.cache_root(self.base_dir).resolve()), **folders}
        }
        self.model_paths_file.parent.mkdir(parents=True, exist_ok=True)
        self.model_paths_file.write_text(json.dumps(config, indent=1) + "\n")

    def prepare(self) -> None:
        """The folders and files ComfyUI's command line names."""
        self.folders.create()
        if self.models.model_urls:
            self.write_model_paths()
        extension_config(self.base_dir)
        removed = self.folders.remove_request_folders()  # before ComfyUI runs: no run of ours is in flight
        if removed:
            log.info("removed %d request folders left by an earlier run", removed)
        if self.models.models_dir:
            self.models.models_dir.mkdir(parents=True, exist_ok=True)  # ComfyUI wants it to exist

    def start(self) -> None:
        self.prepare()
        self._thread = self._spawn("comfyui-supervisor", self._supervise)

    def spawn_process(self) -> subprocess.Popen[bytes]:
        command = self.command()
        log.info("starting ComfyUI: %s", " ".join(command))
        env = comfy_env(dict(os.environ), self.comfyui.comfyui_env_passthrough)
        return subprocess.Popen(
            command,
            cwd=self.comfyui.comfyui_path,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # our SIGTERM handling decides when it stops
            preexec_fn=_die_with_parent,
        )

    @property
    def pid(self) -> int | None:
        process = self._process
        return process.pid if process and process.poll() is None else None

    def _supervise(self) -> None:
        backoff = self.comfyui.comfyui_restart_backoff_s
        while not self._stopping.is_set():
            started = time.monotonic()
            code = self._run_once()
            self._on_exit(code)
            if self._stopping.is_set():
                break
            if time.monotonic() - started > STABLE_RUN_S:
                backoff = self.comfyui.comfyui_restart_backoff_s
            log.warning("ComfyUI exited with code %s; restarting in %.1f s", code, backoff)
            if self._stopping.wait(backoff):
                break
            backoff = min(backoff * 2, self.comfyui.comfyui_restart_backoff_max_s)
            self.restarts += 1

    def _run_once(self) -> int:
        try:
            process, self._started = self._started or self.spawn_process(), None
        except OSError as exc:
            log.error("cannot start ComfyUI: %s", exc)
            return -1
        self._process = process
        assert process.stdout is not None
        announced = False
        for raw in iter(process.stdout.readline, b""):
            line = ANSI_ESCAPE.sub("", raw.decode("utf-8", "replace")).rstrip()
            if line:
                comfy_log.log(logs.comfy_level(line), "%s", line)  # the line's own level, if it says one
            if not announced and LISTENING_MARKER in line:
                announced = True
                self._on_listening()
        return process.wait()

    def kill(self) -> None:
        """Kill ComfyUI hard (tests and operators use it to exercise recovery)."""
        process = self._process
        if process and process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)

    def stop(self, timeout_s: float = 10.0) -> None:
        self._stopping.set()
        process = self._process
        if process and process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("ComfyUI did not stop in %.0f s; killing it", timeout_s)
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            except ProcessLookupError:
                pass
        if self._thread:
            self._thread.join(timeout_s)


def boot_early(
    *, cloud: CloudSettings, comfyui: ComfyUISettings, models: ModelSettings, http: HttpSettings
) -> subprocess.Popen[bytes] | None:
    """Spawn ComfyUI at once, before the service imports its web stack and builds its app, so
    that ComfyUI's boot overlaps the service's own (`python -m handler`). None where the service
    does not boot ComfyUI itself, or must do something first: fetch runtime models, or stop
    because REQUIRE_GPU finds no GPU (the regular start says why)."""
    if not cloud.service_role.runs_comfy or comfyui.comfyui_url or comfyui.comfyui_path is None:
        return None
    if models.models_source or (comfyui.require_gpu and gpu.probe() is None):
        return None
    supervisor = ComfySupervisor(
        comfyui=comfyui, models=models, http=http, on_listening=lambda: None, on_exit=lambda code: None
    )
    supervisor.prepare()
    try:
        return supervisor.spawn_process()
    except OSError as exc:
        log.error("cannot start ComfyUI: %s", exc)  # the regular start tries again and says so
        return None
