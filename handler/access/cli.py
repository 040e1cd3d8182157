"""Make an API key: `python -m handler.access.cli create --file keys.jsonl --role caller`.

The secret is printed once, on stdout, and never stored: the file gets a line with its SHA-256
(handler/access/keys.py), created readable by its owner only. `list` shows the stored keys'
ids, roles and limits. In the cloud the file's text is the Secret Manager secret (docs/security.md,
"Access").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from handler.access.keys import Role, new_key, parse


def create(args: argparse.Namespace) -> int:
    secret, key = new_key(
        role=Role(args.role),
        name=args.name,
        workflows=args.workflows,
        rate_per_minute=args.rate_per_minute,
        max_jobs=args.max_jobs,
    )
    path = Path(args.file)
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(descriptor, "a") as out:
        out.write(key.to_line() + "\n")
    print(secret)
    print(
        f"stored key {key.key_id} ({key.role.value}) in {path.name}; the secret is not kept anywhere", file=sys.stderr
    )
    return 0


def show(args: argparse.Namespace) -> int:
    for key in parse(Path(args.file).read_text(), args.file).values():
        line = {"id": key.key_id, "role": key.role.value, "name": key.name, "workflows": key.workflows}
        print(json.dumps({**line, "rate_per_minute": key.rate_per_minute, "max_jobs": key.max_jobs}))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handler.access.cli", description="API keys of comfyrun")
    commands = parser.add_subparsers(dest="command", required=True)
    made = commands.add_parser("create", help="make a key: prints its secret once, stores its hash")
    made.add_argument("--file", required=True, help="the key file (API_KEYS_FILE); created if missing")
    made.add_argument("--role", choices=[role.value for role in Role], default=Role.CALLER.value)
    made.add_argument("--name", default="", help="who holds it (shown in logs and `list`)")
    made.add_argument("--workflows", action="store_true", help="a caller key may send raw workflows")
    made.add_argument("--rate-per-minute", type=float, default=None, help="its /predict requests a minute")
    made.add_argument("--max-jobs", type=int, default=None, help="its runs at once (sync and async)")
    made.set_defaults(run=create)
    listed = commands.add_parser("list", help="the stored keys, without secrets")
    listed.add_argument("--file", required=True)
    listed.set_defaults(run=show)
    args = parser.parse_args(argv)
    if args.command == "create" and (
        (args.rate_per_minute is not None and args.rate_per_minute <= 0)
        or (args.max_jobs is not None and args.max_jobs < 1)
    ):
        parser.error("--rate-per-minute and --max-jobs must be positive")
    run = args.run
    return int(run(args))


if __name__ == "__main__":
    sys.exit(main())
