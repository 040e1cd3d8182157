"""What the builds put in the images: the verified checkpoint, the pinned custom node, nothing of
ComfyUI or CUDA in the api image, a CUDA stack the L4's driver 535 runs, and a layer cache that
makes a service change a rebuild of seconds that leaves the models layer as it was."""

from __future__ import annotations

import json
import re
import uuid

from tests.image.conftest import Images
from tests.image.harness import CHECKPOINT, NODE_NAME, ROOT, build_context


def test_the_models_stage_downloaded_the_checkpoint_and_checked_its_sha256(images: Images):
    path = f"/comfyui/models/checkpoints/{CHECKPOINT}"
    proc = images.docker.sh(images.worker, f"sha256sum {path} && stat -c '%u %s' {path}")
    assert proc.returncode == 0, proc.stderr
    digest, owner = proc.stdout.splitlines()
    assert digest.split()[0] == images.checkpoint_sha256
    assert owner == f"1000 {images.checkpoint_size}"  # the service's user owns the models


def test_a_wrong_sha256_fails_the_build_and_says_so(images: Images):
    wrong = "0" * 64
    context = build_context(images.work / "context-wrong-sha", images.models_file(sha256=wrong))
    proc, _ = images.docker.build(
        context,
        "comfyrun-test-models-wrong:latest",
        images.work / "build-wrong.log",
        target="models",
        **images.build_args,
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"checkpoints/{CHECKPOINT}: sha256 mismatch: expected {wrong}, got {images.checkpoint_sha256}" in out, out[
        -3000:
    ]


def test_the_custom_node_is_installed_at_its_pinned_commit(images: Images):
    folder = f"/comfyui/custom_nodes/{NODE_NAME}"
    proc = images.docker.sh(images.worker, f"cat {folder}/__init__.py; ls -a {folder}")
    assert proc.returncode == 0, proc.stderr
    assert 'PINNED = "pinned"' in proc.stdout  # the pinned commit, not HEAD ("head")
    assert ".git" not in proc.stdout.split()


# CUDA's libraries, PyTorch, ComfyUI: by file, wherever they are, and by import.
FIND_HEAVY = (
    "find / -xdev \\( -name 'libcudart*' -o -name 'libcuda.so*' -o -name 'libcublas*' -o -name 'libcudnn*' "
    "-o -path '*-packages/torch' -o -path '*-packages/nvidia' -o -path '*-packages/comfy_kitchen' "
    "-o -name comfyui_version.py \\) -print; "
    'python3 -c \'import importlib.util as u; print([m for m in ("torch", "comfy") if u.find_spec(m)])\''
)


def test_the_api_image_has_no_torch_cuda_or_comfyui(images: Images):
    proc = images.docker.sh(images.api, FIND_HEAVY, "--user", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "[]", proc.stdout
    # The same look into the worker image finds them all: the check can tell.
    worker = images.docker.sh(
        images.worker, FIND_HEAVY.replace("python3 -c", "/opt/comfy/bin/python -c"), "--user", "0"
    )
    found = worker.stdout
    for expected in (
        "libcudart.so.12",
        "-packages/torch\n",
        "-packages/comfy_kitchen\n",
        "comfyui_version.py",
        "['torch']",
    ):
        assert expected in found, (expected, found[-2000:])


def test_every_cuda_object_in_the_worker_targets_cuda_12(images: Images):
    """Cloud Run's L4 has driver 535 (CUDA 12.2): a CUDA 13 object there would not run. The scan
    (tests/image/cuda_scan.py) reads each shared object's linked CUDA libraries and the toolkit
    release named in its GPU code."""
    scan = images.docker.run(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        f"{ROOT / 'tests' / 'image' / 'cuda_scan.py'}:/tmp/cuda_scan.py:ro",
        "--entrypoint",
        "python3",
        images.worker,
        "/tmp/cuda_scan.py",
        "/opt/comfy",
        timeout=600,
    )
    found = json.loads(scan.stdout)
    objects = found["objects"]
    # PyTorch's CUDA libraries are there and are read: the scan sees CUDA 12 where it is.
    assert any(release.startswith("12.") for o in objects for release in o["built_with"]), objects[:5]
    # Only these sonames carry CUDA's major version (cuDNN, cuFFT and others count their own).
    majors = [
        int(lib.rsplit(".", 1)[1])
        for o in objects
        for lib in o["needs"]
        if lib.startswith(("libcudart.so.", "libcublas.so.", "libcublasLt.so.", "libnvrtc.so.", "libnvJitLink.so."))
    ]
    assert majors and set(majors) == {12}, sorted(set(majors))
    cuda13 = [o for o in objects if any(int(release.split(".")[0]) >= 13 for release in o["built_with"])]
    assert cuda13 == [], json.dumps(cuda13, indent=1)
    torch = images.docker.sh(images.worker, "/opt/comfy/bin/python -c 'import torch; print(torch.version.cuda)'")
    assert torch.stdout.strip().startswith("12."), torch.stdout + torch.stderr


def cached_steps(log: str) -> set[str]:
    """The steps of a `--progress plain` build log that came from the cache, by their description."""
    names = dict(re.findall(r"^#(\d+) (\[.*)$", log, re.M))
    return {names[n] for n in re.findall(r"^#(\d+) CACHED$", log, re.M) if n in names}


def test_a_service_change_rebuilds_only_the_service_and_keeps_the_models_layer(images: Images):
    """A change in handler/ (here a module the models stage does not copy) reuses every layer below
    the service's: no ComfyUI or PyTorch install, no model download, the same models layer."""
    context = build_context(images.work / "context-changed", images.models_file())
    changed = context / "handler" / "errors.py"
    # New each session: the same change made by an earlier session would be in the cache already.
    changed.write_text(changed.read_text() + f"# changed by the image tier's rebuild test, {uuid.uuid4()}\n")
    tag = "comfyrun-test-worker-changed:latest"
    log = images.work / "build-changed.log"
    proc, seconds = images.docker.build(context, tag, log, **images.build_args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    images.seconds["rebuild after a handler/ change"] = seconds
    cached = cached_steps(log.read_text())
    for step in ("pip install --require-hashes --requirement /opt/comfyui.lock", "python -m handler.models"):
        assert any(step in name for name in cached), (step, sorted(cached))
    assert not any("COPY handler/ /app/handler/" in name for name in cached)  # the change was seen

    def layers(image: str) -> list[str]:
        return json.loads(images.docker.run("image", "inspect", "-f", "{{json .RootFS.Layers}}", image).stdout)

    before, after = layers(images.worker), layers(tag)
    # The base (its import and its RUN), then the models: the same layers, not rebuilt.
    assert before[:3] == after[:3] and before != after
    print("build seconds: " + ", ".join(f"{name} {value:.1f}" for name, value in images.seconds.items()))
