"""The stand-in's queue and clients, against what a real ComfyUI 0.33.0 does: messages go only to
the prompt's client, a test gate holds a prompt running, an interrupt takes effect at the next
node or tick, the queue's order with front/delete/clear and the history, and a client that
reconnects mid-run with its id."""

from __future__ import annotations

import time
import uuid

from tests.fixtures.standin import (
    WS,
    run,
    types,
    workflow,
)
from tests.fixtures.waiting import stays, wait_until


def test_messages_go_only_to_the_prompts_client(standin, ws):
    other = WS(standin, client_id=str(uuid.uuid4()))
    prompt = workflow("empty_save")
    prompt["1"]["inputs"]["color"] = 31337
    prompt_id, _ = run(standin, ws, prompt)
    # Frames reach each socket in the order they were sent. The last one of a run is the status after
    # task_done: with the connect status, a client sees 4 statuses once the first run is over.
    statuses = lambda client, n: lambda: types(client.frames).count("status") >= n  # noqa: E731
    wait_until(statuses(other, 4))
    assert set(types(other.frames)) == {"status"}, "a second client only sees status"

    response = standin.post_prompt(
        dict(prompt, **{"1": {**prompt["1"], "inputs": {**prompt["1"]["inputs"], "color": 31338}}})
    )
    orphan = response.json()["prompt_id"]
    standin.wait_history(orphan)
    wait_until(statuses(ws, 7))  # ...and 3 more (put, get, done) once the orphan's run is over
    wait_until(statuses(other, 7))
    assert set(types(ws.frames)) - {"status", "progress_state"} == {
        "execution_start",
        "execution_cached",
        "executing",
        "executed",
        "execution_success",
    }
    orphan_types = {f["type"] for f in ws.frames if isinstance(f, dict) and f["data"].get("prompt_id") == orphan}
    assert orphan_types == {"progress_state"}, "without client_id only status and progress_state are sent"
    assert set(types(other.frames)) == {"status", "progress_state"}, "...to every client"
    assert "client_id" not in standin.history(orphan)["prompt"][3]
    other.close()


def held_prompt(gate: str, interruptible: bool = True) -> dict:
    """EmptyImage -> TestGate (held until released) -> ImageInvert -> SaveImage."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 16, "height": 16, "batch_size": 1, "color": int(time.time() * 1000) % 9999},
        },
        "2": {"class_type": "TestGate", "inputs": {"image": ["1", 0], "gate": gate, "interruptible": interruptible}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "held/s"}},
    }


def test_gate_holds_a_prompt_running_until_released(standin, ws):
    gate = f"g-{uuid.uuid4().hex}"
    prompt_id = standin.post_prompt(held_prompt(gate), ws.client_id).json()["prompt_id"]
    assert standin.gate_entered(gate) == {"entered": 1, "waiting": 1, "passed": 0, "released": False}
    assert stays(
        lambda: [i[1] for i in standin.http.get(f"{standin.url}/queue").json()["queue_running"]] == [prompt_id], 0.2
    )
    assert standin.history(prompt_id) == {}
    assert standin.release(gate)["released"] is True
    frames = ws.wait_done(prompt_id)
    assert "execution_success" in types(frames)
    assert standin.http.get(f"{standin.url}/test/gate/{gate}").json() == {
        "entered": 1,
        "waiting": 0,
        "passed": 1,
        "released": True,
    }
    # Never a cache hit: the same graph runs through the (now open) gate again.
    again, frames = run(standin, ws, held_prompt(gate))
    cached = next(f for f in frames if f["type"] == "execution_cached")["data"]["nodes"]
    assert "2" not in cached and standin.gate_entered(gate)["passed"] == 2


def test_interrupt_takes_effect_at_the_next_node(standin, ws):
    # Node 2 has no interrupt point of its own (interruptible: false): the interrupt asked for while
    # it runs stops the prompt when node 3 starts.
    gate = f"g-{uuid.uuid4().hex}"
    prompt_id = standin.post_prompt(held_prompt(gate, interruptible=False), ws.client_id).json()["prompt_id"]
    standin.gate_entered(gate)
    running = standin.http.get(f"{standin.url}/queue").json()["queue_running"]
    assert [item[1] for item in running] == [prompt_id]
    assert standin.http.post(f"{standin.url}/interrupt", json={"prompt_id": prompt_id}).status_code == 200
    standin.release(gate)
    frames = ws.wait_done(prompt_id)
    assert types(frames)[-5:] == ["progress_state", "executing", "execution_interrupted", "status", "executing"]
    data = next(f for f in frames if f["type"] == "execution_interrupted")["data"]
    assert data["node_id"] == "3" and data["node_type"] == "ImageInvert" and sorted(data["executed"]) == ["1", "2"]
    entry = standin.history(prompt_id)
    assert entry["status"]["status_str"] == "error" and entry["outputs"] == {}
    assert standin.http.get(f"{standin.url}/api/jobs/{prompt_id}").json()["status"] == "cancelled"


def test_interrupt_stops_a_node_at_its_next_tick(standin, ws):
    gate = f"g-{uuid.uuid4().hex}"
    prompt_id = standin.post_prompt(held_prompt(gate), ws.client_id).json()["prompt_id"]
    standin.gate_entered(gate)
    assert standin.http.post(f"{standin.url}/interrupt").status_code == 200
    frames = ws.wait_done(prompt_id)
    data = next(f for f in frames if f["type"] == "execution_interrupted")["data"]
    assert data["node_id"] == "2" and data["node_type"] == "TestGate" and data["executed"] == ["1"]
    assert standin.gate_entered(gate) == {"entered": 1, "waiting": 0, "passed": 0, "released": False}


def test_queue_order_front_delete_clear_and_history(standin, ws):
    gate = f"g-{uuid.uuid4().hex}"
    blocker = standin.post_prompt(held_prompt(gate), ws.client_id).json()["prompt_id"]
    standin.gate_entered(gate)
    ids = []
    for color in (1, 2, 3):
        prompt = workflow("empty_save")
        prompt["1"]["inputs"].update(width=16, height=16, color=1000 + color)
        ids.append(standin.post_prompt(prompt, ws.client_id).json()["prompt_id"])
    chosen = str(uuid.uuid4())
    prompt = workflow("empty_save")
    prompt["1"]["inputs"].update(width=16, height=16, color=2000)
    front = standin.post_prompt(prompt, ws.client_id, front=True, prompt_id=chosen).json()
    assert front["prompt_id"] == chosen and front["number"] < 0
    pending = [item[1] for item in standin.http.get(f"{standin.url}/queue").json()["queue_pending"]]
    assert set(pending) == {chosen, *ids}
    assert standin.http.post(f"{standin.url}/queue", json={"delete": [ids[2]]}).content == b""
    assert standin.http.post(f"{standin.url}/api/jobs/{ids[1]}/cancel").json() == {"cancelled": True}
    standin.http.post(f"{standin.url}/interrupt")
    ws.wait_done(blocker)
    ws.wait_done(ids[0])
    starts = [f["data"]["prompt_id"] for f in ws.frames if f["type"] == "execution_start"]
    assert starts[-2:] == [chosen, ids[0]], "front:true runs first"
    assert standin.history(ids[1]) == {} and standin.history(ids[2]) == {}

    history = standin.http.get(f"{standin.url}/history", params={"max_items": 2}).json()
    assert list(history) == [chosen, ids[0]]
    standin.http.post(f"{standin.url}/history", json={"delete": [chosen]})
    assert standin.history(chosen) == {}

    again = standin.post_prompt(prompt, ws.client_id, prompt_id=ids[0]).json()
    assert again["prompt_id"] == ids[0]
    # resubmitting an id overwrites its history entry
    standin.wait_history(ids[0], lambda entry: entry and entry["prompt"][0] == again["number"])
    standin.http.post(f"{standin.url}/queue", json={"clear": True})


def test_reconnect_with_same_client_id_mid_run(standin):
    client_id = str(uuid.uuid4())
    first = WS(standin, client_id=client_id)
    first.wait_for(lambda f: f["type"] == "status")
    gate = f"g-{uuid.uuid4().hex}"
    prompt_id = standin.post_prompt(held_prompt(gate), client_id).json()["prompt_id"]
    first.wait_for(lambda f: isinstance(f, dict) and f["type"] == "executing" and f["data"].get("node") == "2")
    standin.gate_entered(gate)
    first.close()
    # The server drops a clientId when its old socket closes: reconnect once that close is through.
    wait_until(lambda: first.closed, 10)
    second = WS(standin, client_id=client_id)
    second.wait_for(lambda f: f["type"] == "status")
    standin.release(gate)
    second.wait_for(
        lambda f: (
            isinstance(f, dict)
            and f["type"] == "executing"
            and f["data"].get("node") is None
            and f["data"].get("prompt_id") == prompt_id
        ),
        30,
    )
    head = second.frames[:2]
    assert head[0]["type"] == "status" and head[0]["data"]["sid"] == client_id
    assert head[1] == {"type": "executing", "data": {"node": "2"}}
    assert "execution_start" not in types(second.frames), "messages sent while disconnected are lost"
    assert "execution_success" in types(second.frames)
    watcher = WS(standin)
    minted = watcher.wait_for(lambda f: f["type"] == "status")["data"]["sid"]
    assert len(minted) == 32 and int(minted, 16) >= 0
    second.close()
    watcher.close()
