"""The tests are laid out like the code (docs/architecture.md): a test module lives in the folder
of the handler/ package it tests (tests/jobs/ for handler/jobs/, ...), or in one of the folders
for what is not in handler/ (the client, the deploy files, the stand-in's protocol, the shared
fixtures), or at the top for handler/'s top-level modules and the whole service. Every folder is
a package, so two modules may share a name (comfyui/test_client.py, client/test_client.py);
helpers are shared through tests/fixtures/, not imported from another test module; and no test
module grows past the size a reader takes in at once."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent
HANDLER = TESTS.parent / "handler"
MAX_LINES = 600
# Test folders with no handler/ package of the same name, and what each holds.
OTHER_FOLDERS = {
    "client": "the client package (client/comfyrun_client)",
    "deploy": "deploy.sh and the build files",
    "protocol": "the ComfyUI stand-in against the recorded protocol",
    "fixtures": "the real components and harnesses the tests share",
    "image": "the Docker images, built and run (scripts/image-env.sh's engine)",
}
# Folders that hold no test modules of their own.
NOT_TESTS = {"standin", "deploy_fixtures", "__pycache__"}


def modules_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("test_*.py") if not NOT_TESTS & set(p.relative_to(root).parts))


def too_long(root: Path, limit: int = MAX_LINES) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): n for p in modules_under(root) if (n := len(p.read_text().splitlines())) > limit
    }


def test_no_test_module_outgrows_a_reading() -> None:
    long = too_long(TESTS)
    assert not long, f"test modules over {MAX_LINES} lines (split them along their seams): {long}"


def test_the_length_check_sees_a_long_module(tmp_path: Path) -> None:
    (tmp_path / "routes").mkdir()
    (tmp_path / "routes" / "test_long.py").write_text("x = 1\n" * (MAX_LINES + 1))
    (tmp_path / "test_short.py").write_text("x = 1\n" * MAX_LINES)
    assert too_long(tmp_path) == {"routes/test_long.py": MAX_LINES + 1}


def test_test_folders_mirror_handler_packages() -> None:
    packages = {p.name for p in HANDLER.iterdir() if (p / "__init__.py").exists()}
    folders = {p.name for p in TESTS.iterdir() if p.is_dir() and p.name not in NOT_TESTS and not p.name.startswith(".")}
    strays = sorted(folders - packages - OTHER_FOLDERS.keys())
    assert not strays, f"test folders that mirror no handler/ package (name one, or add it to OTHER_FOLDERS): {strays}"
    without_init = sorted(f for f in folders if not (TESTS / f / "__init__.py").exists())
    assert not without_init, f"test folders without __init__.py (modules would clash by name): {without_init}"


def imports_of_test_modules(path: Path) -> set[str]:
    """The test modules `path` imports (tests.….test_x), which should be fixtures instead."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found |= {n for n in names if n.startswith("tests.") and n.rsplit(".", 1)[-1].startswith("test_")}
    return found


def test_test_modules_share_helpers_through_fixtures_only(tmp_path: Path) -> None:
    shared = {m.relative_to(TESTS).as_posix(): i for m in modules_under(TESTS) if (i := imports_of_test_modules(m))}
    assert not shared, f"test modules importing other test modules (move the helper to tests/fixtures/): {shared}"
    probe = tmp_path / "test_probe.py"
    probe.write_text(
        "from tests.routes.test_jobs import quick\nimport tests.test_inprocess\nfrom tests.fixtures import waiting\n"
    )
    assert imports_of_test_modules(probe) == {"tests.routes.test_jobs", "tests.test_inprocess"}
