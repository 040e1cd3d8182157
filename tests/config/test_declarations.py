"""The settings are declared once (handler/config/): every field of `Settings` carries its
variable, default and one line of help, belongs to exactly one section, is read from the variable
it names, and a secret says so."""

from __future__ import annotations

import dataclasses
import re
import typing
from pathlib import Path

import pytest

from handler.config import SECTIONS, ConfigError, ServiceRole, Settings
from handler.config.declare import choices_of, declarations

FIELDS = list(declarations(Settings))


def test_every_field_is_declared_with_a_variable_and_one_line_of_help() -> None:
    for f, declared, _ in FIELDS:
        assert declared.env and all(re.fullmatch(r"[A-Z][A-Z0-9_]*", name) for name in declared.env), f.name
        assert declared.help.strip() and "\n" not in declared.help, f"{f.name}: help must be one line"
        assert f.default is not dataclasses.MISSING, f"{f.name} has no default"


def test_no_variable_is_declared_twice() -> None:
    names = [name for _, declared, _ in FIELDS for name in declared.env]
    assert len(names) == len(set(names)), sorted(name for name in names if names.count(name) > 1)


def test_settings_are_the_sections_in_order() -> None:
    in_sections = [f.name for section in SECTIONS for f in dataclasses.fields(section)]
    assert [f.name for f, _, _ in FIELDS] == in_sections
    assert all(issubclass(Settings, section) for section in SECTIONS)


def test_secrets_are_declared_as_such_and_kept_out_of_repr() -> None:
    secrets = {f.name for f, declared, _ in FIELDS if declared.secret}
    assert secrets == {"job_id_secret", "webhook_secret", "hf_token", "civitai_token", "api_keys", "api_keys_file"}
    assert all(not f.repr for f, declared, _ in FIELDS if declared.secret)
    # A new setting whose name says "secret", "token", "password" or "key" must say whether it is one.
    named_like_one = {
        f.name
        for f, _, kind in FIELDS
        if kind is not bool and re.search(r"secret|token|password|credential|private|key", f.name)
    }
    assert named_like_one <= secrets


def example(kind: typing.Any, declared_choices: tuple[str, ...]) -> tuple[str, typing.Any]:
    """A value of a field's type as a variable's text, and the value it must become."""
    if declared_choices:
        value = declared_choices[-1]
        return value, ServiceRole(value) if kind is ServiceRole else value
    if type(None) in typing.get_args(kind):  # `X | None`: an X
        kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
    samples: dict[typing.Any, tuple[str, typing.Any]] = {
        bool: ("yes", True),
        int: ("7", 7),
        float: ("2.5", 2.5),
        str: ("A", "A"),  # as it is after `upper` and `url` too
        Path: ("/some/where", Path("/some/where")),
        tuple[str, ...]: ("a", ("a",)),  # split by commas, or as a shell would
    }
    return samples[kind]


@pytest.mark.parametrize("name", [f.name for f, _, _ in FIELDS])
def test_each_variable_sets_its_own_field(name: str) -> None:
    f, declared, kind = next(entry for entry in FIELDS if entry[0].name == name)
    text, value = example(kind, choices_of(kind, declared))
    env = {declared.env[-1]: text}
    if name == "service_role" and value is ServiceRole.API:
        env["QUEUE_BACKEND"] = "cloudtasks"  # the api role needs Cloud Tasks
    if name == "storage_backend":
        env["GCS_BUCKET"] = "b"
    if name == "public_service":
        env["API_KEYS"] = "keys"  # a public service needs keys
    settings = Settings.from_env(env)
    assert getattr(settings, name) == value
    assert getattr(Settings(), name) == f.default  # and nothing else moved to that field


def test_a_lower_case_debug_level_turns_on_the_access_log() -> None:
    # LOG_LEVEL is read case-blind; the access log's default now follows the level it gives.
    assert Settings.from_env({"LOG_LEVEL": "debug"}).access_log


def test_arguments_a_shell_cannot_split_are_named() -> None:
    with pytest.raises(ConfigError, match=r"^COMFYUI_ARGS cannot be read \(No closing quotation\)"):
        Settings.from_env({"COMFYUI_ARGS": "--cpu 'unbalanced"})


def test_each_section_is_reached_by_its_own_name_and_holds_its_fields_alone() -> None:
    settings = Settings(port=9001, url_allowlist=("example.com",), webhook_secret="s")
    by_name = {
        "http": "HttpSettings",
        "comfyui": "ComfyUISettings",
        "cloud": "CloudSettings",
        "access": "AccessSettings",
        "jobs": "JobSettings",
        "webhooks": "WebhookSettings",
        "urls": "UrlSettings",
        "models": "ModelSettings",
        "observability": "ObservabilitySettings",
    }
    assert sorted(by_name.values()) == sorted(section.__name__ for section in SECTIONS)
    for name, section_name in by_name.items():
        section = getattr(settings, name)
        assert type(section).__name__ == section_name and not isinstance(section, Settings), name
        for f in dataclasses.fields(section):
            assert getattr(section, f.name) == getattr(settings, f.name), f"{name}.{f.name}"
    assert (settings.http.port, settings.urls.url_allowlist, settings.webhooks.webhook_secret) == (
        9001,
        ("example.com",),
        "s",
    )
