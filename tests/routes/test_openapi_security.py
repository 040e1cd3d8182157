"""The OpenAPI document says how to authenticate (docs/security.md, "Access"): an API key as
`X-API-Key` or `Authorization: Bearer`, or none where Cloud Run's IAM alone lets callers in."""

from __future__ import annotations

from openapi_spec_validator import validate

from handler.routes import openapi


def test_the_document_names_the_key_headers_and_stays_valid():
    doc = openapi.document(None)
    validate(doc)
    schemes = doc["components"]["securitySchemes"]
    assert schemes["apiKey"] == {**schemes["apiKey"], "type": "apiKey", "in": "header", "name": "X-API-Key"}
    assert schemes["bearer"]["scheme"] == "bearer"
    assert {"apiKey": []} in doc["security"] and {} in doc["security"]  # optional: IAM-only deployments
