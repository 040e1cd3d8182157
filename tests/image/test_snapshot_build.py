"""A ComfyUI-Manager snapshot in the build context (deploy/snapshot.json): its git node is
installed at the snapshot's commit, not the branch head; a disabled node is not fetched at all;
a pip the image's lock pins and a ComfyUI commit other than the image's are reported, not followed."""

from __future__ import annotations

import json
import secrets

from tests.image.conftest import Images
from tests.image.harness import NODE_NAME, build_context


def test_a_snapshot_installs_its_git_node_at_the_snapshots_commit(images: Images):
    other_comfyui = "0123456789abcdef0123456789abcdef01234567"
    # A name of its own each run: a snapshot equal to an earlier build's would be a cached layer,
    # whose installer prints nothing to check.
    disabled = f"ComfyUI-Disabled-{secrets.token_hex(4)}"
    snapshot = {
        "comfyui": other_comfyui,
        "git_custom_nodes": {
            images.node_url: {"hash": images.node_pinned, "disabled": False},
            # Nothing listens here: the build would fail if a disabled node were fetched.
            f"git://127.0.0.1:9/{disabled}": {"hash": "a" * 40, "disabled": True},
        },
        "cnr_custom_nodes": {},
        "file_custom_nodes": [{"filename": "single.py", "disabled": False}],
        "pips": {"torch==1.0.0": ""},
    }
    context = build_context(images.work / "context-snapshot", images.models_file(), json.dumps(snapshot, indent=4))
    # Only the snapshot names the node: no CUSTOM_NODES.
    args = {**images.build_args, "CUSTOM_NODES": ""}
    tag = "comfyrun-test-snapshot:latest"
    proc, _ = images.docker.build(context, tag, images.work / "build-snapshot.log", target="comfyui", **args)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert f"the snapshot was taken on ComfyUI {other_comfyui}" in out
    assert f"{disabled} is disabled in the snapshot: not installed" in out
    assert "the image pins torch==" in out and "single.py cannot be restored" in out
    folder = f"/comfyui/custom_nodes/{NODE_NAME}"
    shown = images.docker.sh(tag, f"cat {folder}/__init__.py; ls -a /comfyui/custom_nodes {folder}")
    assert shown.returncode == 0, shown.stderr
    assert 'PINNED = "pinned"' in shown.stdout  # the snapshot's commit, not the branch head ("head")
    assert disabled not in shown.stdout and ".git" not in shown.stdout.split()
