"""TestGate: a test-only custom node that holds a prompt 'running' until the test releases it.

Loaded like a custom node, only when the environment has STANDIN_TEST_GATE=1 (and not with
`--disable-all-custom-nodes`): then `object_info` lists TestGate (python_module
`custom_nodes.comfyrun_test_gate`) and these routes exist, with and without the `/api` prefix:

* `GET /test/gate/{name}`: `{"entered", "waiting", "passed", "released"}` for that gate. With
  `?entered=N&timeout=S` the answer waits (up to S seconds) until N executions have entered it.
* `POST /test/gate/{name}/release`: opens the gate for good; waiting and later executions pass.

The node passes its `image` input through. While it waits it is an interrupt point every 20 ms,
like a progress tick, so `/interrupt` stops it as it would stop a long-running node; with
`interruptible: false` it is not (like a node without progress ticks: the interrupt then takes
effect at the next node). It is never
a cache hit (its is-changed value is new every time), so a held graph really waits each time.
Tests use a fresh gate name per job they want to hold, instead of real work that takes long enough.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid

from aiohttp import web

CLASS_TYPE = "TestGate"
POLL_S = 0.02

NODE_INFO = {
    "input": {
        "required": {"image": ["IMAGE"], "gate": ["STRING", {"default": "gate", "multiline": False}]},
        "optional": {"interruptible": ["BOOLEAN", {"default": True}]},
    },
    "input_order": {"required": ["image", "gate"], "optional": ["interruptible"]},
    "is_input_list": False,
    "output": ["IMAGE"],
    "output_is_list": [False],
    "output_name": ["IMAGE"],
    "name": CLASS_TYPE,
    "display_name": "Test Gate",
    "description": "Holds execution until POST /test/gate/{gate}/release (comfyrun's test stand-in).",
    "python_module": "custom_nodes.comfyrun_test_gate",
    "category": "testing",
    "output_node": False,
    "has_intermediate_output": False,
}


class Gate:
    def __init__(self) -> None:
        self.released = False
        self.entered = 0
        self.waiting = 0
        self.passed = 0

    def state(self) -> dict:
        return {"entered": self.entered, "waiting": self.waiting, "passed": self.passed, "released": self.released}


class Gates:
    def __init__(self) -> None:
        self._changed = threading.Condition()
        self._gates: dict[str, Gate] = {}

    def _gate(self, name: str) -> Gate:
        return self._gates.setdefault(name, Gate())

    def state(self, name: str) -> dict:
        with self._changed:
            return self._gate(name).state()

    def release(self, name: str) -> dict:
        with self._changed:
            gate = self._gate(name)
            gate.released = True
            self._changed.notify_all()
            return gate.state()

    def wait_entered(self, name: str, count: int, timeout_s: float) -> dict:
        deadline = time.monotonic() + timeout_s
        with self._changed:
            gate = self._gate(name)
            while gate.entered < count and (left := deadline - time.monotonic()) > 0:
                self._changed.wait(left)
            return gate.state()

    def hold(self, name: str, check_interrupt) -> None:
        """Block until the gate is released; `check_interrupt` raises to abandon the wait."""
        with self._changed:
            gate = self._gate(name)
            gate.entered += 1
            gate.waiting += 1
            self._changed.notify_all()
        try:
            while True:
                with self._changed:
                    if gate.released:
                        gate.passed += 1
                        return
                    self._changed.wait(POLL_S)
                check_interrupt()
        finally:
            with self._changed:
                gate.waiting -= 1
                self._changed.notify_all()


GATES = Gates()


class TestGate:
    @classmethod
    def is_changed(cls, ctx, **constants):
        return uuid.uuid4().hex

    @staticmethod
    def run(ctx, image, gate, interruptible=True):
        GATES.hold(str(gate), ctx.check_interrupt if interruptible else lambda: None)
        return (image,)


async def get_gate(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    query = request.rel_url.query
    if "entered" in query:
        count, timeout_s = int(query["entered"]), min(float(query.get("timeout", "30")), 300.0)
        state = await asyncio.get_running_loop().run_in_executor(None, GATES.wait_entered, name, count, timeout_s)
        return web.json_response(state)
    return web.json_response(GATES.state(name))


async def release_gate(request: web.Request) -> web.Response:
    return web.json_response(GATES.release(request.match_info["name"]))


def install(catalog, registry: dict, app: web.Application) -> None:
    """Register the node in the catalog and the registry, and its routes on the server."""
    catalog.nodes[CLASS_TYPE] = NODE_INFO
    registry[CLASS_TYPE] = TestGate
    for prefix in ("", "/api"):
        app.router.add_get(prefix + "/test/gate/{name}", get_gate)
        app.router.add_post(prefix + "/test/gate/{name}/release", release_gate)
