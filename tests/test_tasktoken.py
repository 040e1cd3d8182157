"""Cloud Tasks' OIDC token (handler/tasktoken.py): verified against Google's certificates (served
here by a local server), refused when absent, for another audience, expired, from another issuer,
for another account or tampered with."""

from __future__ import annotations

import time

import pytest


def test_task_tokens_are_verified(tmp_path):
    pytest.importorskip("cryptography")

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from google.auth import crypt, jwt

    from handler.errors import Forbidden, Unauthorized
    from handler.tasktoken import TaskTokenVerifier
    from tests.fixtures.dispatcher import certs_server

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    import datetime

    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    signer = crypt.RSASigner.from_string(pem, key_id="k1")

    def token(**claims) -> str:
        base = {
            "iss": "https://accounts.google.com",
            "aud": "https://svc.run.app",
            "email": "tasks@p.iam.gserviceaccount.com",
            "email_verified": True,
            "iat": int(time.time()),
            "exp": int(time.time()) + 300,
        }
        base.update(claims)
        return "Bearer " + jwt.encode(signer, base).decode()

    with certs_server({"k1": cert.public_bytes(serialization.Encoding.PEM).decode()}) as certs_url:
        verifier = TaskTokenVerifier("https://svc.run.app", "tasks@p.iam.gserviceaccount.com", certs_url=certs_url)
        assert verifier.verify(token())["email"] == "tasks@p.iam.gserviceaccount.com"
        with pytest.raises(Unauthorized):
            verifier.verify(None)
        with pytest.raises(Unauthorized):
            verifier.verify(token(aud="https://other.run.app"))
        with pytest.raises(Unauthorized):
            verifier.verify(token(exp=int(time.time()) - 600, iat=int(time.time()) - 900))
        with pytest.raises(Unauthorized):
            verifier.verify(token(iss="https://evil.example"))
        with pytest.raises(Forbidden):
            verifier.verify(token(email="someone@p.iam.gserviceaccount.com"))
        with pytest.raises(Unauthorized):
            verifier.verify(token()[:-4] + "AAAA")  # signature tampered
        with pytest.raises(Forbidden):
            TaskTokenVerifier("https://svc.run.app", None).verify(token())
