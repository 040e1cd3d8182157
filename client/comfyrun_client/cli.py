"""The `comfyrun` command: submit a workflow (sync or async), follow it, save its outputs.
Run `comfyrun --help` for every option; the library it uses is `comfyrun_client.Client`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

from comfyrun_client.client import Client, ClientError, identity_token, image_entry, write_new


def _param(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"--param wants key=value, got {text!r}")
    try:
        return key, json.loads(value)  # numbers, booleans, lists stay typed
    except ValueError:
        return key, value


def _image(text: str) -> dict[str, str]:
    if text.startswith(("http://", "https://")):
        return image_entry(text)
    name, sep, path = text.partition("=")
    try:
        if sep and name and path:
            return image_entry(path, name)  # --image uploads/in.png=photos/cat.png
        return image_entry(text)
    except OSError as exc:  # argparse turns this into a usage error naming the option
        raise argparse.ArgumentTypeError(f"cannot read {exc.filename}: {exc.strerror}") from None


def _workflow_file(path: str) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except OSError as exc:
        raise ValueError(f"cannot read the workflow file {path}: {exc.strerror}") from None
    except ValueError as exc:
        raise ValueError(f"{path} is not JSON: {exc}") from None


def _summary(answer: dict[str, Any]) -> dict[str, Any]:
    """The answer without base64 payloads, for printing."""

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (f"<{len(v)} base64 chars>" if k in ("image", "base64") and isinstance(v, str) else strip(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    stripped: dict[str, Any] = strip(answer)
    return stripped


def _safe_relative(name: str) -> PurePosixPath:
    relative = PurePosixPath(name)
    return PurePosixPath(relative.name) if relative.is_absolute() or ".." in relative.parts else relative


def _mib(n: Any) -> str:
    return f"{n / 2**20:.1f} MiB" if isinstance(n, int | float) else "?"


def _download_line(data: dict[str, Any]) -> str:
    """A model download, as the service reports it (`download` events, a placed job's progress)."""
    percent = data.get("percent")
    share = (percent or 0.0) / 100
    filled = int(share * ProgressBar.WIDTH)
    amount = _mib(data.get("bytes_done")) + (f" / {_mib(data['bytes_total'])}" if data.get("bytes_total") else "")
    which = f" ({data.get('model')}/{data.get('models')})" if (data.get("models") or 1) > 1 else ""
    bar = f"[{'#' * filled}{'.' * (ProgressBar.WIDTH - filled)}] {share * 100:5.1f}% " if percent is not None else ""
    return f"{bar}downloading {data.get('file')}{which} {amount}"


class ProgressBar:
    """Progress events drawn as one line that rewrites itself."""

    WIDTH = 30

    def __init__(self, out: Any):
        self.out = out
        self.drawn = False

    def update(self, kind: str, data: dict[str, Any]) -> None:
        if kind == "queued":
            line = f"queued (position {data.get('position', 0)})"
        elif kind == "started":
            line = "running" + (f": {data['stage']}" if data.get("stage") else "")
        elif kind == "progress":
            share = (data.get("percent") or 0.0) / 100
            filled = int(share * self.WIDTH)
            line = (
                f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {share * 100:5.1f}% "
                f"node {data.get('node')} {data.get('class_type') or ''} {data.get('step')}/{data.get('max')}"
            )
        elif kind == "download":
            line = _download_line(data)
        elif kind == "executed":
            line = f"node {data.get('node')} {data.get('class_type') or ''} done"
        else:
            return
        self.out.write("\r\033[K" + line)
        self.out.flush()
        self.drawn = True

    def done(self) -> None:
        if self.drawn:
            self.out.write("\n")
            self.out.flush()
            self.drawn = False


# What a state means where its name alone may puzzle: a placed job waits, it does not run yet.
_STATE_NOTES = {"placed": " (in ComfyUI's queue, not executing yet)"}


class JobFollower:
    """An async job's status as `Client.wait` reads it (streamed, or polled), drawn for a person:
    a line at each change of state, and while it runs the progress bar the SSE mode draws (from
    the status's `progress`)."""

    def __init__(self, job_id: str, bar: ProgressBar):
        self.job_id = job_id
        self.bar = bar
        self.state: str | None = None

    def update(self, status: dict[str, Any]) -> None:
        state = status.get("state")
        if state != self.state:
            self.bar.done()
            self.state = state
            self.bar.out.write(f"job {self.job_id}: {state}{_STATE_NOTES.get(str(state), '')}\n")
            self.bar.out.flush()
        progress = status.get("progress")
        if isinstance(progress, dict) and progress.get("stage") == "downloading models":
            self.bar.update("download", progress)
        elif state == "running" and isinstance(progress, dict):
            self.bar.update("progress" if progress.get("max") else "started", progress)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="comfyrun", description=__doc__.split("\n\n")[0])
    parser.add_argument("url", help="the service's base URL")
    parser.add_argument("workflow", nargs="?", help="an API-format workflow JSON file")
    parser.add_argument("--workflow-id", help="a named workflow instead of a file")
    parser.add_argument(
        "--param",
        action="append",
        type=_param,
        default=[],
        metavar="K=V",
        help="a parameter of the named workflow (JSON values allowed)",
    )
    parser.add_argument(
        "--image",
        action="append",
        type=_image,
        default=[],
        metavar="[NAME=]PATH|URL",
        help="an input image: a local file, an http(s) URL or a gs:// URI",
    )
    parser.add_argument(
        "--async", dest="run_async", action="store_true", help="queue a job and follow it (state changes, progress)"
    )
    parser.add_argument("--priority", choices=("high", "normal", "low"), default="normal")
    parser.add_argument("--webhook", help="a URL to be told when the job ends (async)")
    parser.add_argument("--no-wait", action="store_true", help="async: print the job id and return")
    parser.add_argument(
        "--out",
        default="outputs",
        help="where to save outputs (default: outputs/); an existing file is never overwritten: name-2.png, …",
    )
    parser.add_argument("--timeout", type=float, help="the job's timeout in seconds")
    parser.add_argument("--token", help="a bearer token to send")
    parser.add_argument("--id-token", action="store_true", help="mint a Google identity token for the URL")
    parser.add_argument(
        "--api-key",
        default=os.environ.get("COMFYRUN_API_KEY"),
        help="an API key, sent as X-API-Key (default: $COMFYRUN_API_KEY)",
    )
    parser.add_argument("--stream", action="store_true", help="sync: show live progress (Server-Sent Events)")
    parser.add_argument(
        "--raw",
        nargs="?",
        const="image/*",
        metavar="TYPE",
        help="sync: get the one output file itself (Accept: TYPE, default image/*)",
    )
    parser.add_argument(
        "--url", dest="url_delivery", action="store_true", help="sync: store the outputs and answer links"
    )
    args = parser.parse_args(argv)

    if bool(args.workflow) == bool(args.workflow_id):
        parser.error("give a workflow file or --workflow-id (one of them)")
    try:
        workflow = _workflow_file(args.workflow) if args.workflow else None
    except ValueError as exc:
        parser.error(str(exc))
    token = args.token or (identity_token(args.url.rstrip("/")) if args.id_token else None)
    client = Client(args.url, token=token, api_key=args.api_key)
    request = dict(workflow_id=args.workflow_id, params=dict(args.param), images=args.image, timeout=args.timeout)
    try:
        if args.run_async or args.webhook or args.no_wait:
            job_id = client.submit(workflow, priority=args.priority, webhook=args.webhook, **request)
            print(f"job {job_id} queued ({args.priority})", file=sys.stderr)
            if args.no_wait:
                print(json.dumps({"job_id": job_id}))
                return 0
            follower = JobFollower(job_id, ProgressBar(sys.stderr))
            answer = client.wait(job_id, timeout_s=(args.timeout or 3600) + 600, on_status=follower.update)
            follower.bar.done()
            ok = answer["state"] == "succeeded"
        elif args.raw:
            raw = client.predict_raw(workflow, accept=args.raw, **request)
            path = write_new(Path(args.out).joinpath(*_safe_relative(raw.filename).parts), raw.data)
            print(
                json.dumps(
                    {
                        "prompt_id": raw.prompt_id,
                        "content_type": raw.content_type,
                        "size": len(raw.data),
                        "node_id": raw.node_id,
                        "outputs": raw.outputs,
                    },
                    indent=2,
                )
            )
            print(f"saved {path}", file=sys.stderr)
            return 0
        elif args.stream:
            bar = ProgressBar(sys.stderr)
            answer = client.predict_stream(
                workflow, on_event=bar.update, delivery="url" if args.url_delivery else None, **request
            )
            bar.done()
            ok = True
        else:
            answer = client.predict(workflow, delivery="url" if args.url_delivery else None, **request)
            ok = True
        saved = client.save_outputs(answer, args.out) if ok else []
    except ClientError as exc:
        print(f"error: {exc}", file=sys.stderr)
        if exc.error:
            print(json.dumps(exc.error, indent=2), file=sys.stderr)
        return 1
    print(json.dumps(_summary(answer), indent=2))
    for path in saved:
        print(f"saved {path}", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
