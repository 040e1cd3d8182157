"""Shared test wiring. Fixtures live in tests/fixtures/, one module per real component."""

pytest_plugins = [
    "tests.fixtures.comfy",
    "tests.fixtures.gcs",
    "tests.fixtures.cloudtasks",
]
