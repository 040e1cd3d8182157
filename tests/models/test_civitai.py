"""Civitai models, where the operator allows them: `civitai://<id>` and Civitai's download URL are
refused (400, naming CIVITAI_MODELS) unless enabled; enabled, they are fetched from CIVITAI_URL (a
loopback server standing in for Civitai) with CIVITAI_TOKEN sent to that origin only, never to
the storage server its download redirects to, whose address the URL rules still vet."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest

from handler.config import Settings
from handler.errors import BadRequest, UnsafeURL
from handler.models.cache import ModelCache
from handler.models.download import ModelFetchFailed, _headers
from handler.models.refs import check_model_urls, parse_ref
from tests.fixtures.modelserver import serve
from tests.fixtures.sections import sections

TOKEN = "civ_s3cret"
DATA = bytes(range(256)) * 1024  # 256 KiB


def settings(civitai_port: int, **kw: object) -> Settings:
    values: dict[str, object] = {
        "url_allowlist": ("127.0.0.1",),
        "civitai_models": True,
        "civitai_url": f"http://127.0.0.1:{civitai_port}",
        **kw,
    }
    return Settings(**values)  # type: ignore[arg-type]


def cache(root: Path, s: Settings) -> ModelCache:
    return ModelCache(root=root, budget_bytes=10 << 20, **sections(s, "urls", "jobs", "cloud", "models"))


def soon() -> float:
    return time.monotonic() + 10


def lora_graph(value: object) -> dict:
    return {"1": {"class_type": "LoraLoader", "inputs": {"lora_name": value, "strength_model": 1.0}}}


def test_both_forms_name_a_civitai_model_version() -> None:
    ref = parse_ref("civitai://4242", "loras", "w")
    assert ref.url == "https://civitai.com/api/download/models/4242" and ref.civitai == "/api/download/models/4242"
    assert ref.filename == "civitai-4242.safetensors"
    same = parse_ref("https://civitai.com/api/download/models/4242", "loras", "w")
    assert same.key == ref.key  # one cache entry for either spelling
    typed = parse_ref(
        {"url": "https://civitai.com/api/download/models/7?type=Model&format=SafeTensor", "filename": "x.safetensors"},
        "checkpoints",
        "w",
    )
    assert typed.civitai == "/api/download/models/7?type=Model&format=SafeTensor" and typed.filename == "x.safetensors"
    assert parse_ref("https://example.com/api/download/models/7.safetensors", "loras", "w").civitai is None
    for bad in ("civitai://abc", "civitai://", "https://civitai.com/models/4242"):
        with pytest.raises(BadRequest) as caught:
            parse_ref(bad, "loras", "w")
        assert caught.value.status_code == 400 and "model version id" in str(caught.value)


def test_civitai_models_are_refused_unless_the_operator_allows_them(tmp_path: Path) -> None:
    with serve() as civitai, serve({"m.safetensors": DATA}) as storage:
        civitai.civitai, civitai.civitai_storage = {"4242": "m.safetensors"}, f"http://127.0.0.1:{storage.port}"
        off = settings(civitai.port, civitai_models=False)
        for value in ("civitai://4242", "https://civitai.com/api/download/models/4242"):
            with pytest.raises(BadRequest) as caught:
                check_model_urls(lora_graph(value), **sections(off, "models", "urls", "cloud"))
            assert caught.value.status_code == 400 and "CIVITAI_MODELS" in str(caught.value)
        with pytest.raises(BadRequest) as caught:  # the worker refuses too, before any request
            cache(tmp_path, off).acquire(parse_ref("civitai://4242", "loras", "w"), deadline=soon())
        assert "CIVITAI_MODELS" in str(caught.value)
        assert not civitai.requests and not storage.requests
        check_model_urls(
            lora_graph("civitai://4242"), **sections(settings(civitai.port), "models", "urls", "cloud")
        )  # on: accepted


def test_the_token_goes_to_civitai_and_not_to_the_storage_it_redirects_to(tmp_path: Path) -> None:
    with serve() as civitai, serve({"m.safetensors": DATA}) as storage:
        civitai.token = TOKEN
        civitai.civitai, civitai.civitai_gated = {"4242": "m.safetensors"}, {"4242"}
        civitai.civitai_storage = f"http://127.0.0.1:{storage.port}"
        models = cache(tmp_path, settings(civitai.port, civitai_token=TOKEN))
        ref = parse_ref("https://civitai.com/api/download/models/4242?type=Model", "loras", "w")
        got = models.acquire(ref, deadline=soon())
        assert (tmp_path / "loras" / got.entry.name).read_bytes() == DATA
        assert got.entry.sha256 == hashlib.sha256(DATA).hexdigest()
        assert got.entry.source == "https://civitai.com/api/download/models/4242"  # queries are redacted
        assert list(civitai.requests) == ["/api/download/models/4242?type=Model"]
        assert civitai.headers[0].get("Authorization") == f"Bearer {TOKEN}"
        assert list(storage.requests) == ["/plain/m.safetensors?X-Amz-Signature=s1gned"]
        assert "Authorization" not in storage.headers[0]
        assert TOKEN not in repr(models.entries()) and TOKEN not in repr(got.describe())


def test_without_the_token_a_gated_model_says_which_setting_is_missing(tmp_path: Path) -> None:
    with serve() as civitai:
        civitai.token = TOKEN
        civitai.civitai, civitai.civitai_gated = {"9": "m.safetensors"}, {"9"}
        with pytest.raises(ModelFetchFailed) as caught:
            cache(tmp_path, settings(civitai.port)).acquire(parse_ref("civitai://9", "loras", "w"), deadline=soon())
        assert caught.value.status_code == 400 and "CIVITAI_TOKEN" in str(caught.value)
        assert "Authorization" not in civitai.headers[0]


def test_the_redirect_target_is_vetted_by_the_url_rules(tmp_path: Path) -> None:
    with serve() as civitai:
        civitai.civitai = {"5": "m.safetensors"}
        civitai.civitai_storage = "http://169.254.169.254"  # the metadata server, not allowlisted
        with pytest.raises(UnsafeURL):
            cache(tmp_path, settings(civitai.port, civitai_token=TOKEN)).acquire(
                parse_ref("civitai://5", "loras", "w"), deadline=soon()
            )
        assert sum(civitai.requests.values()) == 1


def test_the_token_is_sent_to_the_configured_origin_only() -> None:
    civitai = ("https://civitai.com", TOKEN)
    assert (
        _headers("https://civitai.com/api/download/models/1", 0, None, civitai=civitai)["Authorization"]
        == f"Bearer {TOKEN}"
    )
    for elsewhere in (
        "https://civitai-delivery-worker-prod.example.r2.cloudflarestorage.com/m?sig=1",
        "http://civitai.com/api/download/models/1",  # another scheme is another origin
        "https://civitai.com:8443/api/download/models/1",
        "https://civitai.com.evil.example/api/download/models/1",
    ):
        assert "Authorization" not in _headers(elsewhere, 0, None, civitai=civitai), elsewhere
    assert "Authorization" not in _headers(
        "https://civitai.com/api/download/models/1", 0, None, civitai=("https://civitai.com", None)
    )
