"""`URL_ALLOWLIST`'s `gs://bucket/prefix` entries match whole path segments (issue 20): an entry
`gs://bucket/inputs` admitted `inputs-private/…` and `inputsx` too."""

from __future__ import annotations

import pytest

from handler.config import Settings
from handler.errors import UnsafeURL
from handler.net.gcsinput import check_gcs_uri


@pytest.mark.parametrize("entry", ["gs://bucket/inputs", "gs://bucket/inputs/"])
def test_a_prefix_entry_admits_only_objects_below_that_folder(entry):
    settings = Settings(url_allowlist=(entry,))
    for admitted in ("inputs/a.png", "inputs/sub/b.png"):
        assert check_gcs_uri(f"gs://bucket/{admitted}", urls=settings.urls, purpose="image").name == admitted
    for refused in ("inputs-private/a.png", "inputsx", "inputs", "inputs.png", "other/inputs/a.png"):
        with pytest.raises(UnsafeURL):
            check_gcs_uri(f"gs://bucket/{refused}", urls=settings.urls, purpose="image")
    with pytest.raises(UnsafeURL):
        check_gcs_uri("gs://bucket2/inputs/a.png", urls=settings.urls, purpose="image")


def test_a_bucket_entry_admits_every_object_of_that_bucket_only():
    settings = Settings(url_allowlist=("gs://bucket",))
    assert check_gcs_uri("gs://bucket/any/thing.png", urls=settings.urls, purpose="image").bucket == "bucket"
    with pytest.raises(UnsafeURL):
        check_gcs_uri("gs://bucket-private/a.png", urls=settings.urls, purpose="image")
