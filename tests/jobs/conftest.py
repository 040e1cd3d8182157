"""The stores the job tests run on: a local folder and a bucket on fake-gcs-server."""

from __future__ import annotations

import pytest

from handler.storage.gcs import GCSStore
from handler.storage.local import LocalStore


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    fake = request.getfixturevalue("fake_gcs")
    return GCSStore(fake.new_bucket("jobs"), emulator_host=fake.url)
