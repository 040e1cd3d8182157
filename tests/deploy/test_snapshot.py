"""ComfyUI-Manager snapshots at build time (deploy/comfyui_snapshot.py and the custom-node
installer's --snapshot): a real snapshot's git nodes become specs pinned to their commits, disabled
ones are left out, pips the image pins are kept at the image's version, what cannot be restored is
reported, bad files are refused naming the file; and the installer, on real git repositories,
checks out the snapshot's commit rather than the branch head and refuses one node from two
sources."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "install_custom_nodes.sh"
_spec = importlib.util.spec_from_file_location("comfyui_snapshot", ROOT / "deploy" / "comfyui_snapshot.py")
assert _spec is not None and _spec.loader is not None
snap = importlib.util.module_from_spec(_spec)
sys.modules["comfyui_snapshot"] = snap  # dataclasses look their module up
_spec.loader.exec_module(snap)

IMPACT = "https://github.com/ltdrdata/ComfyUI-Impact-Pack"
# The shape ComfyUI-Manager's "Save snapshot" writes (json.dump(..., indent=4)).
MANAGER_SNAPSHOT = {
    "comfyui": "f2a6f7a8b3e3b4c4c5d6e7f8a9b0c1d2e3f4a5b6",
    "git_custom_nodes": {
        IMPACT: {"hash": "4e2e4d2f2b8a9e1c0d3f5a6b7c8d9e0f1a2b3c4d", "disabled": False},
        "https://github.com/ltdrdata/ComfyUI-Manager": {
            "hash": "1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
            "disabled": False,
        },
        "https://github.com/cubiq/ComfyUI_essentials.git": {
            "hash": "64e38fd0f3b2e925573684f4a43727be80dc7d5b",
            "disabled": True,
        },
        "git@github.com:owner/ComfyUI-Private.git": {
            "hash": "ABCDEF0123456789abcdef0123456789abcdef01",
            "disabled": False,
        },
    },
    "cnr_custom_nodes": {"comfyui-kjnodes": "1.0.5"},
    "file_custom_nodes": [
        {"filename": "websocket_image_save.py", "disabled": False},
        {"filename": "old.py.disabled", "disabled": True},
    ],
    "pips": {
        "torch==2.1.2+cu121": "",
        "Pillow==9.5.0": "",
        "piexif==1.1.3": "",
        "segment-anything==1.0": "",
        "clip": "git+https://github.com/openai/CLIP.git@a1d0717",
        "-e git+https://github.com/x/y@abc#egg=y": "",
    },
}


def write(tmp_path: Path, data: object, name: str = "snapshot.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data, indent=4) if not isinstance(data, str) else data)
    return path


def test_a_manager_snapshot_pins_each_enabled_git_node_to_its_commit(tmp_path):
    loaded = snap.load(write(tmp_path, MANAGER_SNAPSHOT))
    result = snap.plan(
        loaded,
        constraints={"torch": "2.5.1", "pillow": "11.0.0"},
        comfyui_commit="f2a6f7a8b3e3b4c4c5d6e7f8a9b0c1d2e3f4a5b6",
    )
    assert result.specs == (
        f"{IMPACT}@4e2e4d2f2b8a9e1c0d3f5a6b7c8d9e0f1a2b3c4d",
        "https://github.com/ltdrdata/ComfyUI-Manager@1a2b3c4d5e6f7a8b9c0d1e2f3a4b5c6d7e8f9a0b",
        "https://github.com/owner/ComfyUI-Private.git@abcdef0123456789abcdef0123456789abcdef01",  # https: no SSH keys
    )
    # The lock's pins win (torch, Pillow); URL and editable installs are not restored.
    assert result.pips == ("piexif==1.1.3", "segment-anything==1.0")
    warnings = "\n".join(result.warnings)
    assert "ComfyUI_essentials.git is disabled in the snapshot: not installed" in warnings
    assert "pip torch==2.1.2+cu121: the image pins torch==2.5.1, which is kept" in warnings
    assert "pip Pillow==9.5.0: the image pins Pillow==11.0.0" in warnings
    assert "pip clip git+https://github.com/openai/CLIP.git@a1d0717: not a name==version" in warnings
    assert "-e git+https://github.com/x/y@abc#egg=y" in warnings
    assert "registry node comfyui-kjnodes 1.0.5 cannot be restored" in warnings
    assert "websocket_image_save.py cannot be restored" in warnings and "old.py" not in warnings
    assert "taken on ComfyUI" not in warnings


def test_a_snapshot_of_another_comfyui_is_reported_and_the_images_kept(tmp_path):
    loaded = snap.load(write(tmp_path, {"comfyui": "a" * 40, "git_custom_nodes": {}}))
    result = snap.plan(loaded, constraints={}, comfyui_commit="b" * 40)
    assert result.specs == () and result.pips == ()
    assert result.warnings == (
        f"the snapshot was taken on ComfyUI {'a' * 40}; this image has {'b' * 40} (deploy/comfyui.env), which is kept",
    )


def test_the_constraints_file_is_read_as_pip_reads_names(tmp_path):
    lock = tmp_path / "constraints.txt"
    lock.write_text("torch==2.5.1\nPillow==11.0.0 ; python_version >= '3'\n# comment\nnumpy>=1\n")
    assert snap.read_constraints(lock) == {"torch": "2.5.1", "pillow": "11.0.0"}
    loaded = snap.parse({"git_custom_nodes": {}, "pips": {"pillow==11.0.0": "", "Zope.Interface==6": ""}}, "s")
    assert snap.plan(loaded, constraints=snap.read_constraints(lock), comfyui_commit=None).pips == (
        "Zope.Interface==6",
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"comfyui": "abc", "git_custom_nodes": {', "not valid JSON (line 1, column"),
        ("[1, 2]", "expected a JSON object, got list"),
        ('{"custom_nodes": {}}', "not a ComfyUI-Manager snapshot"),
        ('{"git_custom_nodes": ["https://github.com/o/n"]}', "'git_custom_nodes' must be an object"),
        ('{"git_custom_nodes": {"https://github.com/o/n": {"hash": "main"}}}', "'hash' must be a full commit id"),
        ('{"git_custom_nodes": {"https://github.com/o/n": "abcdef0"}}', 'expected {"hash"'),
        ('{"git_custom_nodes": {"https://github.com/o/n": {"hash": "abcdef0"}}}', "a full commit id"),
        (
            '{"git_custom_nodes": {"https://github.com/o/n": {"hash": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "disabled": "no"}}}',
            "'disabled'",
        ),
        (
            '{"git_custom_nodes": {"not a url": {"hash": "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"}}}',
            "is not a git URL",
        ),
        ('{"git_custom_nodes": {}, "pips": ["torch"]}', "'pips' must be an object"),
    ],
)
def test_a_bad_snapshot_is_refused_naming_the_file(tmp_path, content, message):
    path = write(tmp_path, content, "my-snapshot.json")
    with pytest.raises(snap.SnapshotError) as caught:
        snap.load(path)
    assert str(caught.value).startswith(f"snapshot {path}: ") and message in str(caught.value)


def test_the_command_line_checks_a_file_and_says_what_is_wrong(tmp_path):
    good, bad = write(tmp_path, MANAGER_SNAPSHOT), write(tmp_path, "{oops", "bad.json")
    cli = [sys.executable, ROOT / "deploy" / "comfyui_snapshot.py"]
    assert subprocess.run([*cli, good, "--check"], capture_output=True, text=True).returncode == 0
    proc = subprocess.run([*cli, bad, "--check"], capture_output=True, text=True)
    assert proc.returncode == 2 and f"custom nodes: snapshot {bad}: not valid JSON" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = subprocess.run([*cli, tmp_path / "absent.json", "--check"], capture_output=True, text=True)
    assert proc.returncode == 2 and "absent.json: cannot be read" in proc.stderr


# --------------------------------------------------------------------------- the installer, on real repositories


def _git(*args, cwd):
    return subprocess.run(
        ["git", "-c", "user.email=t@example.com", "-c", "user.name=t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()


def _repo(tmp_path: Path, name: str) -> tuple[Path, str]:
    """A repository of two commits; returns it and the first (not the branch head)."""
    repo = tmp_path / "src" / name
    repo.mkdir(parents=True)
    _git("init", "-q", cwd=repo)
    (repo / "nodes.py").write_text("version = 1\n")
    _git("add", ".", cwd=repo)
    _git("commit", "-qm", "one", cwd=repo)
    first = _git("rev-parse", "HEAD", cwd=repo)
    (repo / "nodes.py").write_text("version = 2\n")
    _git("commit", "-qam", "two", cwd=repo)
    return repo, first


def install(*args: object) -> subprocess.CompletedProcess:
    # `python` as the image has it (/opt/comfy/bin first on PATH): this interpreter.
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("PIP_CONSTRAINT", None)
    return subprocess.run(["bash", SCRIPT, *map(str, args)], capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_the_installer_checks_out_the_snapshots_commit_not_the_head(tmp_path):
    node_a, first_a = _repo(tmp_path, "NodeA")
    node_b, _ = _repo(tmp_path, "NodeB")
    snapshot = write(
        tmp_path,
        {
            "comfyui": "c" * 40,
            "git_custom_nodes": {
                f"file://{node_a}": {"hash": first_a, "disabled": False},
                f"file://{tmp_path}/src/Gone": {"hash": "d" * 40, "disabled": True},  # never fetched
            },
            "file_custom_nodes": [],
            "pips": {},
        },
    )
    listing = tmp_path / "custom_nodes.txt"
    listing.write_text(f"file://{node_b}\n")
    nodes = tmp_path / "custom_nodes"
    proc = install("--snapshot", snapshot, nodes, listing)
    assert proc.returncode == 0, proc.stderr
    assert (nodes / "NodeA" / "nodes.py").read_text() == "version = 1\n"  # the snapshot's commit
    assert (nodes / "NodeB" / "nodes.py").read_text() == "version = 2\n"  # the list's, at its head
    assert sorted(p.name for p in nodes.iterdir()) == ["NodeA", "NodeB"]
    assert "Gone is disabled in the snapshot: not installed" in proc.stderr


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_one_node_from_two_sources_must_agree(tmp_path):
    node_a, first_a = _repo(tmp_path, "NodeA")
    snapshot = write(tmp_path, {"git_custom_nodes": {f"file://{node_a}": {"hash": first_a, "disabled": False}}})
    nodes = tmp_path / "custom_nodes"
    listing = tmp_path / "custom_nodes.txt"
    listing.write_text(f"file://{node_a}.git@{first_a}\n")  # the same pin, spelt with .git: one install
    proc = install("--snapshot", snapshot, nodes, listing)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("custom nodes: NodeA from") == 1
    shutil.rmtree(nodes)
    proc = install("--snapshot", snapshot, nodes, "", f"file://{node_a}@main")
    assert proc.returncode == 2 and "NodeA is given twice" in proc.stderr and f"@{first_a}" in proc.stderr
    assert not nodes.exists()  # refused before anything was cloned
    proc = install("--snapshot", write(tmp_path, "{", "broken.json"), nodes)
    assert proc.returncode == 2 and "broken.json: not valid JSON" in proc.stderr
