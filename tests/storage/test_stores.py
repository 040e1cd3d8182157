"""One contract, two stores: a local folder and Cloud Storage (a real fake-gcs-server)."""

from __future__ import annotations

import hashlib
import threading

import pytest

from handler import storage
from handler.config import Settings
from handler.storage import PreconditionFailed, Store
from handler.storage.gcs import GCSStore
from handler.storage.local import LocalStore
from tests.fixtures.sections import sections


@pytest.fixture(params=["local", "gcs"])
def store(request, tmp_path) -> Store:
    if request.param == "local":
        return LocalStore(tmp_path / "store")
    fake = request.getfixturevalue("fake_gcs")
    return GCSStore(fake.new_bucket(), emulator_host=fake.url)


def test_bytes_round_trip_and_missing_keys(store):
    assert store.get_bytes("inputs/j1/a.png") is None
    store.put_bytes("inputs/j1/a.png", b"\x89PNG\x00\xff", "image/png")
    assert store.get_bytes("inputs/j1/a.png") == b"\x89PNG\x00\xff"
    store.put_bytes("inputs/j1/a.png", b"second")
    assert store.get_bytes("inputs/j1/a.png") == b"second"
    assert store.get_json("jobs/none.json") is None


def test_json_generations_grow_and_cas_refuses_stale_writes(store):
    g1 = store.cas_json("jobs/j1.json", {"state": "queued"}, generation=0)
    assert g1 > 0
    with pytest.raises(PreconditionFailed):  # already exists
        store.cas_json("jobs/j1.json", {"state": "queued"}, generation=0)
    got = store.get_json("jobs/j1.json")
    assert got.data == {"state": "queued"} and got.generation == g1

    g2 = store.cas_json("jobs/j1.json", {"state": "running"}, generation=g1)
    assert g2 > g1
    with pytest.raises(PreconditionFailed):  # a writer that still holds g1 loses
        store.cas_json("jobs/j1.json", {"state": "failed"}, generation=g1)
    assert store.get_json("jobs/j1.json").data == {"state": "running"}

    g3 = store.put_json("jobs/j1.json", {"state": "succeeded"})
    assert g3 > g2
    with pytest.raises(PreconditionFailed):
        store.cas_json("jobs/j1.json", {"state": "x"}, generation=g2)
    with pytest.raises(PreconditionFailed):  # absent objects have no generation but 0
        store.cas_json("jobs/missing.json", {}, generation=g3)


def test_only_one_of_many_racing_writers_wins(store):
    gen = store.put_json("jobs/race.json", {"owner": None})
    wins, losses = [], []
    barrier = threading.Barrier(8)

    def contender(i: int) -> None:
        barrier.wait()
        try:
            store.cas_json("jobs/race.json", {"owner": i}, generation=gen)
            wins.append(i)
        except PreconditionFailed:
            losses.append(i)

    threads = [threading.Thread(target=contender, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and len(losses) == 7
    assert store.get_json("jobs/race.json").data == {"owner": wins[0]}


def test_a_recreated_object_does_not_match_an_old_generation(store):
    old = store.put_json("jobs/again.json", {"n": 1})
    store.delete_prefix("jobs/again")
    store.put_json("jobs/again.json", {"n": 2})
    with pytest.raises(PreconditionFailed):
        store.cas_json("jobs/again.json", {"n": 3}, generation=old)


def test_list_and_delete_prefix(store):
    for key in ["outputs/a/1.png", "outputs/a/sub/2.png", "outputs/ab/3.png", "jobs/a.json"]:
        store.put_bytes(key, b"x")
    store.put_json("jobs/b.json", {})
    assert store.list("outputs/a/") == ["outputs/a/1.png", "outputs/a/sub/2.png"]
    assert store.list("outputs/a") == ["outputs/a/1.png", "outputs/a/sub/2.png", "outputs/ab/3.png"]
    assert store.list("jobs/") == ["jobs/a.json", "jobs/b.json"]
    assert store.list("nothing/") == []
    assert store.delete_prefix("outputs/a/") == 2
    assert store.list("outputs/") == ["outputs/ab/3.png"]
    assert store.get_bytes("outputs/a/1.png") is None


def test_json_prefixes_are_exact_at_their_edges(store):
    # JSON objects are listed by key range locally: the range must hold exactly the prefix's keys.
    keys = ["in/a/1.json", "in/a/z\u00e9.json", "in/a0.json", "in/a.json", "in/b.json", "in/a/\U0001f600.json"]
    for key in keys:
        store.put_json(key, {})
    assert store.list("in/a/") == sorted(["in/a/1.json", "in/a/z\u00e9.json", "in/a/\U0001f600.json"])
    assert store.list("in/a") == sorted(k for k in keys if k.startswith("in/a"))
    assert store.list("") == sorted(keys)
    assert store.delete_prefix("in/a/") == 3
    assert store.list("in/") == sorted(["in/a0.json", "in/a.json", "in/b.json"])


@pytest.mark.parametrize("key", ["../x", "/abs", "a/../b", "a//b", "", "a/", "a\\b"])
def test_keys_cannot_escape(store, key):
    with pytest.raises(ValueError):
        store.put_bytes(key, b"x")


def test_uris_and_signing(store):
    store.put_bytes("outputs/j/img.png", b"png")
    uri = store.uri("outputs/j/img.png")
    if isinstance(store, GCSStore):
        assert uri == f"gs://{store.bucket_name}/outputs/j/img.png"
        # The emulator runs without credentials: nothing can sign, and the store says so.
        assert store.signed_url("outputs/j/img.png", 3600) is None
    else:
        assert uri == "local://outputs/j/img.png"  # a name, never a server path
        assert store.signed_url("outputs/j/img.png", 3600) is None


def test_a_store_says_whether_it_serves_its_files_from_this_disk(store):
    store.put_bytes("outputs/j/img.png", b"png")
    path = store.local_file("outputs/j/img.png")
    if store.on_local_disk:
        assert path is not None and path.read_bytes() == b"png"
    else:
        assert path is None  # in a bucket: callers are given signed URLs instead
    with pytest.raises(ValueError):
        store.local_file("../escape")


def signing_store(fake_gcs):
    """A GCSStore whose service-account key signs locally (no network), and that key."""
    pytest.importorskip("cryptography")
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.cloud import storage as gcs
    from google.oauth2 import service_account

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    creds = service_account.Credentials.from_service_account_info(
        {
            "type": "service_account",
            "client_email": "runner@demo.iam.gserviceaccount.com",
            "private_key": pem,
            "private_key_id": "k1",
            "token_uri": "https://oauth2.googleapis.com/token",
        }
    )
    client = gcs.Client(project="demo", credentials=creds, client_options={"api_endpoint": fake_gcs.url})
    return GCSStore("results", client=client), key.public_key()


def grants(url: str, public_key, method: str = "GET") -> bool:
    """Whether Cloud Storage would honour `url` for `method`: its V4 signature checked over the
    canonical request the URL stands for (Google's "Signature V4 signing process"). This is
    the check a caller cannot get past: any change to the path, the query or the method
    changes the canonical request."""
    from urllib.parse import parse_qsl, quote, urlsplit

    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    signature = bytes.fromhex(query.pop("X-Goog-Signature"))
    canonical_query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in sorted(query.items()))
    signed = query["X-Goog-SignedHeaders"]
    headers = {"host": parts.netloc}
    canonical = "\n".join(
        [
            method,
            parts.path,
            canonical_query,
            "".join(f"{name}:{headers[name]}\n" for name in signed.split(";")),
            signed,
            "UNSIGNED-PAYLOAD",
        ]
    )
    scope = query["X-Goog-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        ["GOOG4-RSA-SHA256", query["X-Goog-Date"], scope, hashlib.sha256(canonical.encode()).hexdigest()]
    )
    try:
        public_key.verify(signature, to_sign.encode(), padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def test_gcs_signed_urls_with_signing_credentials(fake_gcs):
    store, _ = signing_store(fake_gcs)
    url = store.signed_url("outputs/j/img.png", 600)
    assert url and "X-Goog-Algorithm=GOOG4-RSA-SHA256" in url and "X-Goog-Expires=600" in url
    assert "/results/outputs/j/img.png" in url


def test_a_signed_url_grants_one_read_of_one_object_for_a_bounded_time(fake_gcs):
    """Issue 20's second pass on signed URLs: what a caller holding one of its outputs' links
    could make of it. Checked against the signature, as Cloud Storage checks it."""
    store, public_key = signing_store(fake_gcs)
    url = store.signed_url("outputs/job-a/run-a/img.png", 3600)
    assert url is not None and grants(url, public_key)
    assert "X-Goog-SignedHeaders=host&" in url or url.endswith("X-Goog-SignedHeaders=host")
    for changed in (
        url.replace("/job-a/run-a/", "/job-b/run-b/"),  # another caller's object
        url.replace("/run-a/img.png", "/run-a/../../job-b/run-b/img.png"),
        url.replace("/results/", "/other-bucket/"),
        url.replace("X-Goog-Expires=3600", "X-Goog-Expires=604800"),  # a longer life
    ):
        assert not grants(changed, public_key), changed
    for method in ("PUT", "DELETE", "POST"):
        assert not grants(url, public_key, method)  # reading only: no overwrite, no delete
    # However long the caller asks links to live, V4's seven days at most.
    longest = store.signed_url("outputs/job-a/run-a/img.png", 10 * 365 * 24 * 3600)
    assert longest is not None and "X-Goog-Expires=604800" in longest and grants(longest, public_key)


def test_from_settings_picks_the_backend(tmp_path, fake_gcs):
    local = storage.from_settings(**sections(Settings(), "jobs", "cloud"), state_dir=tmp_path)
    assert isinstance(local, LocalStore) and local.root == (tmp_path / "store").resolve()
    bucket = fake_gcs.new_bucket()
    gcs = Settings(storage_backend="gcs", gcs_bucket=bucket, storage_emulator_host=fake_gcs.url)
    remote = storage.from_settings(**sections(gcs, "jobs", "cloud"), state_dir=tmp_path)
    remote.put_json("jobs/x.json", {"ok": True})
    assert remote.get_json("jobs/x.json").data == {"ok": True}


def test_two_local_stores_on_one_folder_share_the_lease(tmp_path):
    a, b = LocalStore(tmp_path / "s"), LocalStore(tmp_path / "s")
    gen = a.cas_json("jobs/j.json", {"lease": "a"}, generation=0)
    with pytest.raises(PreconditionFailed):
        b.cas_json("jobs/j.json", {"lease": "b"}, generation=0)
    assert b.get_json("jobs/j.json").generation == gen
