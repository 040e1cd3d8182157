"""One stand-in per module (its test gate on) and a fresh websocket client per test."""

from __future__ import annotations

import uuid

import pytest

from tests.fixtures.standin import WS, StandIn


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    server = StandIn(tmp_path_factory.mktemp("standin"), gate=True)
    yield server
    code = server.stop()
    assert code == 0, "".join(server.lines[-30:])


@pytest.fixture()
def ws(standin):
    client = WS(standin, client_id=str(uuid.uuid4()))
    client.wait_for(lambda f: f["type"] == "status")
    yield client
    client.close()
