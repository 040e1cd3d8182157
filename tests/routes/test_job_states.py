"""The states a user sees follow priority end to end (issue 22): `queued` in the service's line,
`placed` in ComfyUI's queue, `running` only while ComfyUI executes the job, on the stand-in and
on a real ComfyUI (skipped without one, saying why).

A job holds ComfyUI (the stand-in's TestGate; on a real ComfyUI the slow blur graph); low, normal
and high jobs submitted one after another wait `placed` behind it, a second low one `queued`
(every place in ComfyUI is taken); then high runs first, normal next, the lows last, as the
execution start times in the job records say, and the webhooks carry those times.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import requests

from handler.jobs.worker import LOCAL_SLOTS
from tests.fixtures.asyncjobs import BASE_ENV, FINAL, medium, quick, slow, status, submit, wait_for
from tests.fixtures.comfy import ComfyTarget, ServiceProcess
from tests.fixtures.receiver import Receiver
from tests.fixtures.waiting import wait_until

HOLD_PX = 640  # about 5 s on a real ComfyUI on 2 shared CPU cores (1024² × 6 took over 90 s)
ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z")


@pytest.fixture(scope="module")
def svc(comfy_target: ComfyTarget, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    service = ServiceProcess(comfy_target, tmp_path_factory.mktemp(f"states-{comfy_target.name}"), env=dict(BASE_ENV))
    service.start().wait_ready(300)
    yield service
    service.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def held_long(color: int) -> dict:
    """The blur graph at a size that keeps a real ComfyUI on CPU busy for a few seconds."""
    workflow = slow(color)
    workflow["1"]["inputs"].update(width=HOLD_PX, height=HOLD_PX, batch_size=1)
    return workflow


def gauge(service: ServiceProcess, name: str, priority: str) -> float:
    text = service.get("/metrics").text
    found = re.search(rf'^{name}\{{priority="{priority}"\}} (\S+)$', text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


def test_low_normal_high_wait_placed_and_run_high_first(svc: ServiceProcess, receiver: Receiver) -> None:
    assert LOCAL_SLOTS == 4  # one executing, three placed: the fourth job waits in the line
    real = svc.target.is_real
    gate = svc.gate()
    # On a real ComfyUI the holder is real work: long enough to submit and look at the others.
    holder = submit(svc, held_long(0x123456) if real else gate.workflow(), priority="low")
    gate.wait_entered()
    held = wait_for(svc, holder, lambda s: s["state"] != "placed")  # ComfyUI started it: running
    hook = {"url": receiver.url}
    order = [("l1", "low"), ("n1", "normal"), ("h1", "high"), ("l2", "low")]
    # Each runs a tenth of a second or more: their start times lie well apart.
    ids = {name: submit(svc, medium(22000 + i), priority=prio, webhook=hook) for i, (name, prio) in enumerate(order)}

    def settled() -> dict[str, dict] | None:  # h1 is queued until the dispatcher's place takes it
        now = {name: status(svc, job_id) for name, job_id in ids.items()}
        return now if [now[name]["state"] for name, _ in order] == ["placed", "placed", "placed", "queued"] else None

    try:
        seen = wait_until(
            settled, timeout_s=10, message=lambda: str({n: status(svc, j)["state"] for n, j in ids.items()})
        )
        assert status(svc, holder)["state"] == "running"  # all the while: ComfyUI executes only the holder
        assert held["state"] == "running" and ISO.match(held["started_at"]), held
        assert all(
            seen[name]["started_at"] is None and ISO.match(seen[name]["placed_at"]) for name in ("l1", "n1", "h1")
        )
        assert seen["l2"]["placed_at"] is None
        if not real:  # held for as long as the test likes: what the dashboard and the metrics say
            counts = svc.get("/dashboard/data").json()["counts"]
            assert counts == {"waiting": 1, "placed": 3, "running": 1}, counts
            assert gauge(svc, "comfyrun_jobs_placed", "high") == 1 and gauge(svc, "comfyrun_jobs_placed", "low") == 1
            assert gauge(svc, "comfyrun_jobs_running", "low") == 1 and gauge(svc, "comfyrun_jobs_running", "high") == 0
    finally:
        gate.release()  # a no-op on a real ComfyUI

    finals = {
        name: wait_for(svc, job_id, lambda s: s["state"] in FINAL and s["webhook"].get("delivered_at"))
        for name, job_id in ids.items()
    }
    assert all(f["state"] == "succeeded" for f in finals.values()), finals
    assert wait_for(svc, holder)["state"] == "succeeded"
    started = sorted(finals, key=lambda name: finals[name]["started_at"])
    assert started == ["h1", "n1", "l1", "l2"], {n: (f["placed_at"], f["started_at"]) for n, f in finals.items()}
    for final in finals.values():
        assert final["created_at"] <= final["placed_at"] <= final["started_at"] <= final["finished_at"], final
    delivered = {d["payload"]["data"]["job_id"]: d["payload"]["data"] for d in receiver.received}
    for name, job_id in ids.items():
        assert delivered[job_id]["started_at"] == finals[name]["started_at"]
        assert delivered[job_id]["placed_at"] == finals[name]["placed_at"]


def test_a_placed_job_is_cancelled_out_of_comfyuis_queue(svc: ServiceProcess) -> None:
    if svc.target.is_real:
        pytest.skip("needs the stand-in's TestGate node to hold ComfyUI for as long as the test takes")
    gate = svc.gate()
    holder = submit(svc, gate.workflow())
    gate.wait_entered()
    placed = submit(svc, quick(22100))
    assert wait_for(svc, placed, lambda s: s["state"] != "queued")["state"] == "placed"
    answer = svc.post(f"/cancel/{placed}").json()
    assert answer["cancel"] == "interrupting" and answer["state"] == "placed", answer
    final = wait_for(svc, placed)
    assert final["state"] == "cancelled" and final["started_at"] is None, final
    pending = requests.get(f"{svc.comfy_url}/queue", timeout=10).json()["queue_pending"]
    assert pending == [], pending  # its prompt left ComfyUI's queue: it never runs
    assert status(svc, holder)["state"] == "running"
    gate.release()
    assert wait_for(svc, holder)["state"] == "succeeded"
    wait_until(lambda: gate.state()["passed"] == 1, message=lambda: str(gate.state()))


def test_the_states_are_one_enum_in_the_openapi_document(svc: ServiceProcess) -> None:
    if svc.target.is_real:
        pytest.skip("the document does not depend on ComfyUI")
    schemas = svc.get("/openapi.json").json()["components"]["schemas"]
    found = [
        s["properties"]["state"]["enum"] for s in schemas.values() if "enum" in s.get("properties", {}).get("state", {})
    ]
    assert found and all(enum == ["queued", "placed", "running", "succeeded", "failed", "cancelled"] for enum in found)
