"""The package layout is the architecture (docs/architecture.md): imports point down the layers
only, no module imports itself back through another, no module grows past the size a reader
takes in at once, and only the composition roots hold the whole `Settings` (every other module
takes the sections it reads). Read from the source with `ast`, type-only imports included."""

from __future__ import annotations

import ast
from pathlib import Path

HANDLER = Path(__file__).resolve().parents[1] / "handler"
MAX_LINES = 420

# Lowest first: a module may import from its own layer's other parts and from layers below.
LAYERS: list[set[str]] = [
    {"handler", "config", "errors", "failpoints", "benchtrace", "logs", "runtime"},
    {"storage", "taskqueue", "net", "models", "access"},
    {"comfyui"},
    {"body", "predict_request", "templates"},
    {"pipeline", "tasktoken"},
    {"jobs"},
    {"metrics", "collector"},
    {"services"},
    {"routes"},
    {"app"},
    {"server"},
    {"__main__"},
]
LAYER_OF = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}

# Where the process is put together from the whole `Settings` (read from the environment) and each
# collaborator is handed `settings.<section>`: the wiring, the app, the server, the entry points.
COMPOSITION_ROOTS = {"handler.services", "handler.app", "handler.server", "handler.__main__", "handler.models.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(HANDLER.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The handler modules `path` imports (a name imported from a package counts as its module
    when one exists)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "handler":
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (HANDLER.parent / (candidate.replace(".", "/") + ".py")).exists() or (
                    HANDLER.parent / candidate.replace(".", "/")
                ).is_dir():
                    found.add(candidate)
        elif isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names if alias.name.split(".")[0] == "handler"}
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(path): imports(path) for path in HANDLER.rglob("*.py")}


def part(module: str) -> str:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 1 else "handler"


def test_every_part_of_the_package_has_a_layer() -> None:
    unplaced = {part(module) for module in graph()} - LAYER_OF.keys()
    assert not unplaced, f"place these in LAYERS (tests/test_architecture.py): {sorted(unplaced)}"


def test_imports_point_down_the_layers_only() -> None:
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph().items()
        for target in targets
        if LAYER_OF[part(target)] > LAYER_OF[part(module)]
    )
    assert not upward, "imports from a lower layer to a higher one:\n" + "\n".join(upward)


def test_no_import_cycles() -> None:
    edges = graph()
    known = set(edges)
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[list[str]] = []

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(t for t in edges[module] if t in known and t != module):
            if state.get(target) == 1:
                cycles.append(path[path.index(target) :] + [target])
            elif target not in state:
                visit(target, [*path, target])
        state[module] = 2

    for module in sorted(edges):
        if module not in state:
            visit(module, [module])
    # A package's __init__ re-exporting its own modules is not a cycle a reader follows.
    cycles = [c for c in cycles if not all(m.startswith(c[0] + ".") or m == c[0] for m in c[1:])]
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_no_module_outgrows_a_reading() -> None:
    long = {
        str(path.relative_to(HANDLER.parent)): n
        for path in HANDLER.rglob("*.py")
        if (n := len(path.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines (split them along their seams): {long}"


def takes_settings(path: Path) -> bool:
    """Whether the module names `Settings` from handler.config: imported, or as an attribute."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("handler.config"):
            if any(alias.name == "Settings" for alias in node.names):
                return True
        if isinstance(node, ast.Attribute) and node.attr == "Settings" and "config" in ast.unparse(node.value):
            return True
    return False


def test_only_the_composition_roots_take_the_whole_settings() -> None:
    holders = sorted(
        module_name(path)
        for path in HANDLER.rglob("*.py")
        if not module_name(path).startswith("handler.config")
        and module_name(path) not in COMPOSITION_ROOTS
        and takes_settings(path)
    )
    assert not holders, (
        "these modules take the whole Settings; give them the sections they read "
        f"(settings.http, settings.urls, ...), passed by handler/services.py or app.py: {holders}"
    )


def test_the_checker_sees_the_whole_settings_taken(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    for source in (
        "from handler.config import ConfigError, Settings\n",
        "from handler.config.settings import Settings\n",
        "if TYPE_CHECKING:\n    from handler.config import Settings\n",
        "import handler.config\nx: handler.config.Settings\n",
    ):
        probe.write_text(source)
        assert takes_settings(probe), source
    probe.write_text("from handler.config.urls import UrlSettings\n")
    assert not takes_settings(probe)


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    # The checks above must be able to fail: both import forms are seen, a name as its module.
    probe = tmp_path / "probe.py"
    probe.write_text("from handler.routes import jobs\nimport handler.app\n")
    assert {"handler.routes.jobs", "handler.app"} <= imports(probe)
