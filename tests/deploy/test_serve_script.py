"""scripts/serve.sh on a first run without COMFYUI_PATH: a ComfyUI download that fails says what
failed and what to do instead, exits 1, and leaves nothing half-made behind.

Each test runs the real script in a copy of the two files it reads first (scripts/serve.sh and
deploy/comfyui.env), with COMFYUI_REPO pointing at a local address: nothing here reaches GitHub, and
the script must stop before it installs anything (the download comes first).
"""

from __future__ import annotations

import gzip
import http.server
import io
import os
import shutil
import socket
import subprocess
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def comfyui_commit() -> str:
    for line in (ROOT / "deploy" / "comfyui.env").read_text().splitlines():
        if line.startswith("COMFYUI_COMMIT="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("deploy/comfyui.env names no COMFYUI_COMMIT")


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    (tmp_path / "scripts").mkdir()
    (tmp_path / "deploy").mkdir()
    shutil.copy(ROOT / "scripts" / "serve.sh", tmp_path / "scripts" / "serve.sh")
    shutil.copy(ROOT / "deploy" / "comfyui.env", tmp_path / "deploy" / "comfyui.env")
    return tmp_path


@pytest.fixture
def archive_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """An HTTP server answering GET <path> with the bytes put in its dict (404 otherwise)."""
    files: dict[str, bytes] = {}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            body = files.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/ComfyUI", files
    finally:
        server.shutdown()
        server.server_close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve(checkout: Path, repo: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("COMFYUI_")}
    env["COMFYUI_REPO"] = repo
    return subprocess.run(
        ["bash", str(checkout / "scripts" / "serve.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=checkout,
    )


def assert_told_what_to_do(result: subprocess.CompletedProcess[str], url: str, why: str) -> None:
    assert result.returncode == 1, (result.returncode, result.stderr)
    err = result.stderr
    assert "could not fetch ComfyUI 0." in err and url in err and why in err, err
    # the ways around it, spelled as commands
    assert "COMFYUI_PATH=/path/to/ComfyUI COMFYUI_PYTHON=" in err and "./scripts/serve.sh" in err, err
    assert "COMFYUI_URL=http://" in err, err


def assert_nothing_half_made(checkout: Path) -> None:
    assert not (checkout / ".comfyui" / "ComfyUI").exists()
    assert not list(checkout.glob(".comfyui/.fetching*"))
    assert not (checkout / ".venv").exists(), "it installed before it knew it had a ComfyUI"


def test_an_unreachable_download_says_what_to_do_and_leaves_nothing(checkout: Path) -> None:
    repo = f"http://127.0.0.1:{closed_port()}/ComfyUI"
    result = serve(checkout, repo)
    url = f"{repo}/archive/{comfyui_commit()}.tar.gz"
    assert_told_what_to_do(result, url, "the download failed")
    assert "fetching ComfyUI" in result.stderr  # it said what it was doing before it failed
    assert_nothing_half_made(checkout)
    assert not (checkout / ".comfyui").exists()  # it made the folder, so it took it away again


def test_a_cut_archive_is_not_kept_and_an_old_empty_folder_goes(checkout: Path, archive_server) -> None:
    repo, files = archive_server
    tree = io.BytesIO()
    with tarfile.open(fileobj=tree, mode="w") as tar:
        data = b"print('ComfyUI')\n" * 4000
        info = tarfile.TarInfo(f"ComfyUI-{comfyui_commit()}/main.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    whole = gzip.compress(tree.getvalue())
    files[f"/ComfyUI/archive/{comfyui_commit()}.tar.gz"] = whole[: len(whole) // 2]  # cut mid-stream
    (checkout / ".comfyui" / "ComfyUI").mkdir(parents=True)  # what an earlier failed run left

    result = serve(checkout, repo)
    assert_told_what_to_do(result, f"{repo}/archive/{comfyui_commit()}.tar.gz", "not a whole .tar.gz")
    assert_nothing_half_made(checkout)


def test_an_archive_that_is_not_comfyui_is_refused(checkout: Path, archive_server) -> None:
    repo, files = archive_server
    tree = io.BytesIO()
    with tarfile.open(fileobj=tree, mode="w:gz") as tar:
        info = tarfile.TarInfo("something-else/README.md")
        tar.addfile(info, io.BytesIO(b""))
    files[f"/ComfyUI/archive/{comfyui_commit()}.tar.gz"] = tree.getvalue()

    result = serve(checkout, repo)
    assert_told_what_to_do(result, f"{repo}/archive/{comfyui_commit()}.tar.gz", "not a ComfyUI source tree")
    assert_nothing_half_made(checkout)
