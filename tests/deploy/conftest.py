"""A recording `gcloud` stub per test (tests/fixtures/deploy.py)."""

from __future__ import annotations

import pytest

from tests.fixtures.deploy import Stub


@pytest.fixture
def stub(tmp_path):
    return Stub(tmp_path)
