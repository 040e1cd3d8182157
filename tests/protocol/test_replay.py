"""Every recorded scenario of a real ComfyUI 0.33.0 (test_resources/comfy/protocol, or
COMFY_PROTOCOL_DIR) replayed against the stand-in: the same requests, answered with the same
statuses, bodies and websocket frames, ids and file names matched by pattern."""

from __future__ import annotations

import copy
import io
import json
import re
import struct
import time
import uuid

from tests.fixtures.standin import (
    PROTOCOL,
    RESOURCES,
    WS,
    Image,
    StandIn,
    requests,
    types,
)

WAIT_LIMIT_S = 15.0


def scenarios() -> list[dict]:
    loaded = [json.loads(p.read_text()) for p in sorted((PROTOCOL / "scenarios").glob("*.json"))]
    return sorted(loaded, key=lambda s: s["started_at_unix"])


def recorded_frames(scenario: dict) -> list:
    out = []
    for message in scenario.get("ws_messages", []):
        if message["kind"] == "text":
            out.append(message["json"])
        elif message["kind"] == "binary":
            out.append(
                {"type": f"binary:{message['event_type']}", "data": message.get("metadata") or {}, "binary": message}
            )
    return out


def file_pattern(name: str) -> str:
    """An output file name without its counter and random part: `empty_#####_.png`."""
    name = re.sub(r"^ComfyUI_temp_[a-z]{5}_", "ComfyUI_temp_?????_", name)
    return re.sub(r"_\d{5}(_?\.)", r"_#####\1", name)


def frame_key(frame, ids: dict, files: dict) -> tuple:
    """The fields of a message that must match, with prompt ids and file names mapped."""
    if isinstance(frame, bytes):
        kind = struct.unpack(">I", frame[:4])[0]
        if kind == 4:
            (length,) = struct.unpack(">I", frame[4:8])
            meta = json.loads(frame[8 : 8 + length])
            return (
                f"binary:{kind}",
                meta["node_id"],
                ids.get(meta["prompt_id"], meta["prompt_id"]),
                meta["image_type"],
            )
        if kind == 1:
            return (f"binary:{kind}", struct.unpack(">I", frame[4:8])[0])
        return (f"binary:{kind}",)
    kind, data = frame["type"], frame["data"]
    if kind.startswith("binary:"):
        binary = frame["binary"]
        if kind == "binary:4":
            return (kind, data["node_id"], ids.get(data["prompt_id"], data["prompt_id"]), data["image_type"])
        if kind == "binary:1":
            return (kind, binary["image_format_code"])
        return (kind,)
    pid = ids.get(data.get("prompt_id"), data.get("prompt_id"))
    if kind == "status":
        return (kind, data["status"]["exec_info"]["queue_remaining"], "sid" in data)
    if kind in ("execution_start", "execution_success"):
        return (kind, pid)
    if kind == "execution_cached":
        return (kind, pid, tuple(data["nodes"]))
    if kind == "executing":
        return (kind, data["node"], "prompt_id" in data and pid)
    if kind == "executed":
        output = data["output"] or {}
        shape = tuple(sorted((k, len(v) if isinstance(v, list) else v) for k, v in output.items()))
        files_out = [
            (file_pattern(i["filename"]), i["subfolder"], i["type"])
            for key in ("images", "latents", "audio")
            for i in output.get(key, [])
        ]
        return (kind, data["node"], pid, shape, tuple(files_out))
    if kind == "progress_state":
        return (kind, pid, tuple(sorted((n, s["state"]) for n, s in data["nodes"].items())))
    if kind == "progress":
        return (kind, data["value"], data["max"], data["node"], pid)
    if kind in ("execution_error", "execution_interrupted"):
        return (
            kind,
            pid,
            data["node_id"],
            data["node_type"],
            tuple(sorted(data["executed"])),
            data.get("exception_type"),
        )
    if kind == "feature_flags":
        return (kind, json.dumps(data, sort_keys=True))
    return (kind,)


def upload_payload(spec: dict) -> bytes:
    png = (RESOURCES / "test_input.png").read_bytes()
    if spec["length"] == len(png):
        return png
    if spec["content_type"].startswith("text/"):
        return b"x" * spec["length"]
    buffer = io.BytesIO()
    if "mask" in spec["filename"]:  # a mask for test_input.png: same size
        Image.new("RGBA", (64, 48), (0, 0, 0, 128)).save(buffer, format="PNG")
    else:
        Image.new("RGB", (4, 4), (9, 8, 7)).save(buffer, format="PNG")
    return buffer.getvalue()


def shrink_long_blurs(prompt: dict) -> dict:
    """The recorded 2048x2048x4 blur chain takes ~12 s a node; the protocol is the same on a smaller one.

    (queue_ops keeps its full size: its interrupt must land while the big EmptyImage still runs.)
    """
    prompt = copy.deepcopy(prompt)
    for node in prompt.values():
        inputs = node["inputs"]
        if node["class_type"] == "EmptyImage" and inputs.get("width", 0) >= 2048:
            inputs.update(width=1536, height=1536, batch_size=2)
    return prompt


def status_moved(got: list[str], want: list[str]) -> bool:
    """The same frames, except that `status` frames sit elsewhere among the others."""
    others = lambda kinds: [k for k in kinds if k != "status"]  # noqa: E731
    return others(got) == others(want) and got.count("status") == want.count("status")


class Replay:
    def __init__(self, server: StandIn, scenario: dict):
        self.server = server
        self.scenario = scenario
        self.ids: dict[str, str] = {}
        self.files: dict[str, str] = {}
        self.client_id = str(uuid.uuid4())
        self.recorded = recorded_frames(scenario)
        self.ws_times = [m["t_ms"] for m in scenario.get("ws_messages", []) if m["kind"] in ("text", "binary")]
        self.ws: WS | None = None
        self.problems: list[str] = []

    def map_id(self, value):
        if isinstance(value, str) and value in self.ids:
            return self.ids[value]
        return value

    def rewrite(self, value):
        if isinstance(value, str):
            return self.files.get(value, self.map_id(value))
        if isinstance(value, list):
            return [self.rewrite(v) for v in value]
        if isinstance(value, dict):
            return {k: self.rewrite(v) for k, v in value.items()}
        return value

    def learn_files(self) -> None:
        """Pair the recorded output file names with ours, in message order."""
        ours = [f for f in self.ws.frames if isinstance(f, dict) and f["type"] == "executed"]
        theirs = [f for f in self.recorded if f["type"] == "executed"]
        for recorded in theirs:
            same_node = [f for f in ours if f["data"]["node"] == recorded["data"]["node"]]
            rank = [f for f in theirs if f["data"]["node"] == recorded["data"]["node"]].index(recorded)
            if rank >= len(same_node):
                continue
            mine = same_node[rank]
            a, b = mine["data"]["output"] or {}, recorded["data"]["output"] or {}
            for key in ("images", "latents"):
                for x, y in zip(a.get(key, []), b.get(key, [])):
                    self.files[y["filename"]] = x["filename"]

    def send(self, step: dict) -> requests.Response:
        request = step["request"]
        path = "/".join(self.map_id(part) for part in request["path"].split("/"))
        url = self.server.url + path
        params = self.rewrite(request.get("params"))
        if "files" in request:
            files = {
                field: (spec["filename"], upload_payload(spec), spec["content_type"])
                for field, spec in request["files"].items()
            }
            return self.server.http.post(url, files=files, data=request.get("form"), params=params)
        if "raw_body" in request:
            return self.server.http.request(request["method"], url, data=request["raw_body"], params=params)
        body = request.get("json")
        if body is not None and path.endswith("/prompt") and request["method"] == "POST":
            body = copy.deepcopy(body)
            if "client_id" in body:
                body["client_id"] = self.client_id
            if isinstance(body.get("prompt_id"), str) and body["prompt_id"] != "not-a-uuid":
                body["prompt_id"] = self.ids.setdefault(body["prompt_id"], str(uuid.uuid4()))
            if "prompt" in body and self.scenario["scenario"] == "interrupt":
                body["prompt"] = shrink_long_blurs(body["prompt"])
        elif body is not None:
            body = self.rewrite(body)
        if body is None and request["method"] == "POST":
            return self.server.http.post(url, params=params)
        return self.server.http.request(request["method"], url, json=body, params=params)

    def check_response(self, step: dict, response: requests.Response) -> None:
        label = step["label"]
        expected = step["response"]
        if response.status_code != expected["status"]:
            self.problems.append(f"{label}: HTTP {response.status_code}, recorded {expected['status']}")
            return
        recorded_type = expected["headers"].get("Content-Type", "").split(";")[0]
        ours = response.headers.get("Content-Type", "").split(";")[0]
        if recorded_type and ours != recorded_type:
            self.problems.append(f"{label}: Content-Type {ours}, recorded {recorded_type}")
        if "body" in expected and expected["body"]["length"] == 0 and response.content:
            self.problems.append(f"{label}: body should be empty")
        if "json" not in expected:
            return
        want, got = expected["json"], response.json()
        if isinstance(want, dict) and "error" in want and isinstance(got, dict):
            if got.get("error", {}).get("type") != want["error"]["type"]:
                self.problems.append(f"{label}: error {got.get('error')}, recorded {want['error']}")
            want_nodes = {n: sorted(e["type"] for e in v["errors"]) for n, v in want["node_errors"].items()}
            got_nodes = {n: sorted(e["type"] for e in v["errors"]) for n, v in got.get("node_errors", {}).items()}
            if want_nodes != got_nodes:
                self.problems.append(f"{label}: node_errors {got_nodes}, recorded {want_nodes}")

            # The whole body must match; only the order of a node's errors may differ (ComfyUI's follows
            # set iteration).
            def canonical(body):
                body = copy.deepcopy(body)
                for entry in body.get("node_errors", {}).values():
                    entry["errors"].sort(key=lambda e: json.dumps(e, sort_keys=True))
                return body

            if canonical(got) != canonical(want):
                self.problems.append(f"{label}: body {json.dumps(got)[:800]}, recorded {json.dumps(want)[:800]}")
        elif isinstance(want, dict) and "prompt_id" in want and "number" in want:
            self.ids[want["prompt_id"]] = got["prompt_id"]
            if (want["number"] < 0) != (got["number"] < 0):
                self.problems.append(f"{label}: number sign {got['number']} vs recorded {want['number']}")
        elif request_path(step).startswith("/history/") and isinstance(want, dict):
            self.check_history(label, want, got)
        elif isinstance(want, dict) and isinstance(got, dict) and request_path(step) not in CONTENT_KEYED:
            if set(want) - set(got):
                self.problems.append(f"{label}: keys missing {sorted(set(want) - set(got))}")

    def check_history(self, label: str, want: dict, got: dict) -> None:
        if not want:
            if got:
                self.problems.append(f"{label}: expected no history entry")
            return
        (entry,) = want.values()
        if len(got) != 1:
            self.problems.append(f"{label}: no history entry")
            return
        (mine,) = got.values()
        if list(mine) != list(entry):
            self.problems.append(f"{label}: history keys {list(mine)}, recorded {list(entry)}")
        for field in ("status_str", "completed"):
            if mine["status"][field] != entry["status"][field]:
                self.problems.append(
                    f"{label}: status.{field} {mine['status'][field]}, recorded {entry['status'][field]}"
                )
        if [m[0] for m in mine["status"]["messages"]] != [m[0] for m in entry["status"]["messages"]]:
            self.problems.append(f"{label}: history messages differ")
        shape = lambda outputs: {n: sorted(v) for n, v in outputs.items()}  # noqa: E731
        if shape(mine["outputs"]) != shape(entry["outputs"]) or sorted(mine["meta"]) != sorted(entry["meta"]):
            self.problems.append(f"{label}: outputs {mine['outputs']}, recorded {entry['outputs']}")
        if sorted(mine["prompt"][3]) != sorted(entry["prompt"][3]) or sorted(mine["prompt"][4]) != sorted(
            entry["prompt"][4]
        ):
            self.problems.append(f"{label}: prompt item {mine['prompt'][3:]}, recorded {entry['prompt'][3:]}")

    def play(self) -> list[str]:
        messages = self.scenario.get("ws_messages", [])
        if any(m["kind"] == "ws_open" for m in messages):
            sent = next((m["json"] for m in messages if m["kind"] == "ws_sent"), None)
            self.ws = WS(self.server, self.client_id, feature_flags=(sent or {}).get("data") if sent else None)
        for step in self.scenario["http"]:
            if self.ws is not None:
                before = sum(1 for t in self.ws_times if t < step["t_request_ms"])
                self.ws.wait_count(before, WAIT_LIMIT_S)
                self.learn_files()
            if self.scenario["scenario"] == "interrupt" and request_path(step) == "/interrupt":
                # The recording interrupts a node well inside its run; on a busy machine the message
                # `executing` can reach us before the node has passed its own interrupt check.
                time.sleep(0.3)
            response = self.send(step)
            self.check_response(step, response)
        if self.ws is not None:
            self.ws.wait_count(len(self.recorded), WAIT_LIMIT_S)
            time.sleep(0.1)
            self.learn_files()
            self.compare_frames()
            self.ws.close()
        return self.problems

    def compare_frames(self) -> None:
        ours = list(self.ws.frames)
        want_types = [f["type"] for f in self.recorded]
        got_types = types(ours)
        recorded = self.recorded
        if got_types != want_types and status_moved(got_types, want_types):
            # `status` is broadcast by whichever of the HTTP handler and the worker changes the
            # queue first: under load it can land on either side of an event of the worker's, in
            # a real ComfyUI as here. Compare the status frames and the others each in order.
            ours = [f for f in ours if f["type"] == "status"] + [f for f in ours if f["type"] != "status"]
            recorded = [f for f in recorded if f["type"] == "status"] + [f for f in recorded if f["type"] != "status"]
        elif got_types != want_types:
            self.problems.append(f"WS types {got_types}, recorded {want_types}")
            return
        want = [frame_key(f, self.ids, self.files) for f in recorded]
        got = [frame_key(f, {}, {}) for f in ours]
        # The queue size a `status` carries depends on the same race, except in the last one.
        last_status = max((i for i, k in enumerate(want) if k[0] == "status"), default=None)
        got = [
            w if w != g and w[0] == g[0] == "status" and i != last_status else g
            for i, (w, g) in enumerate(zip(want, got))
        ]
        if want == got:
            return
        outputs = [n for n in (self.scenario_prompt() or {}).values() if n.get("class_type") in OUTPUT_NODES]
        if len(outputs) > 1:
            # Independent output branches may run in either order: compare node-level facts as a multiset.
            keep = lambda keys: sorted(repr(k) for k in keys if k[0] != "progress_state")  # noqa: E731
            if keep(want) == keep(got):
                return
        diffs = [(i, w, g) for i, (w, g) in enumerate(zip(want, got)) if w != g]
        self.problems.append(f"WS fields differ (index, recorded, ours): {diffs[:5]}")

    def scenario_prompt(self) -> dict | None:
        for step in self.scenario["http"]:
            body = step["request"].get("json") or {}
            if isinstance(body.get("prompt"), dict):
                return body["prompt"]
        return None


# Answers keyed by content (history entries, frontend data) rather than by field names.
CONTENT_KEYED = {"/history", "/node_replacements", "/global_subgraphs"}
OUTPUT_NODES = {
    "SaveImage",
    "PreviewImage",
    "SaveLatent",
    "SaveImageWebsocket",
    "PreviewAny",
    "SaveAnimatedWEBP",
    "SaveAnimatedPNG",
}


def request_path(step: dict) -> str:
    return step["request"]["path"]


def test_replays_every_recorded_scenario(tmp_path):
    recorded = scenarios()
    assert len(recorded) >= 21, f"the recorded scenarios are missing from {PROTOCOL}"
    server = StandIn(tmp_path)
    report = {}
    try:
        for scenario in recorded:
            problems = Replay(server, scenario).play()
            if problems:
                report[scenario["scenario"]] = problems
    finally:
        assert server.stop() == 0
    assert not report, json.dumps(report, indent=1)[:6000]
