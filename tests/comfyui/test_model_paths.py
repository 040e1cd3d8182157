"""The supervisor shows ComfyUI the model cache's folders, and nothing else of the cache: an extra
model paths file (JSON, which YAML reads) passed with --extra-model-paths-config. Its parsing by
the real ComfyUI is shown by tests/models/test_ondemand_real.py."""

from __future__ import annotations

import json
from pathlib import Path

from handler.comfyui.supervisor import ComfySupervisor
from handler.config import Settings
from handler.models.refs import LOADERS
from tests.fixtures.sections import sections


def supervisor(tmp_path: Path, **kw: object) -> ComfySupervisor:
    settings = Settings(comfyui_path=tmp_path, state_dir=tmp_path / "state", **kw)  # type: ignore[arg-type]
    return ComfySupervisor(
        **sections(settings, "comfyui", "models", "http"), on_listening=lambda: None, on_exit=lambda code: None
    )


def test_the_cache_folders_are_passed_as_extra_model_paths(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, model_cache_dir=tmp_path / "cache")
    sup.write_model_paths()
    command = sup.command()
    assert command[command.index("--extra-model-paths-config") + 1] == str(sup.model_paths_file)
    (config,) = json.loads(sup.model_paths_file.read_text()).values()
    assert config.pop("base_path") == str((tmp_path / "cache").resolve())
    assert config == {folder: folder for folder in set(LOADERS.values())}  # no ".partial", no index


def test_without_model_urls_comfyui_gets_no_extra_paths(tmp_path: Path) -> None:
    sup = supervisor(tmp_path, model_urls=False)
    assert str(sup.model_paths_file) not in sup.command()  # the isolation extension's file is another
