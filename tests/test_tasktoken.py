"""Cloud Tasks' OIDC token (handler/tasktoken.py): verified against Google's certificates (served
here by a local server), refused when absent, for another audience, expired, from another issuer,
for another account or tampered with."""

from __future__ import annotations

import threading
import time

import pytest


def test_task_tokens_are_verified(tmp_path):
    pytest.importorskip("cryptography")
    import json
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID
    from google.auth import crypt, jwt

    from handler.errors import Forbidden, Unauthorized
    from handler.tasktoken import TaskTokenVerifier

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
    certs = json.dumps({"k1": cert.public_bytes(serialization.Encoding.PEM).decode()}).encode()

    class Certs(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(len(certs)))
            self.end_headers()
            self.wfile.write(certs)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Certs)
    threading.Thread(target=server.serve_forever, daemon=True).start()
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

    verifier = TaskTokenVerifier(
        "https://svc.run.app",
        "tasks@p.iam.gserviceaccount.com",
        certs_url=f"http://127.0.0.1:{server.server_address[1]}/certs",
    )
    try:
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
    finally:
        server.shutdown()
        server.server_close()
