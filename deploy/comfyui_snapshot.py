#!/usr/bin/env python3
"""A ComfyUI-Manager snapshot, read at build time: which custom nodes to install at which commit.

The file is the JSON that ComfyUI-Manager's "Save snapshot" writes:

    {"comfyui": "<commit>",
     "git_custom_nodes": {"<git URL>": {"hash": "<commit>", "disabled": false}, ...},
     "cnr_custom_nodes": {"<registry id>": "<version>", ...},
     "file_custom_nodes": [{"filename": "x.py", "disabled": false}, ...],
     "pips": {"name==1.2.3": "", "name": "<url it came from>", ...}}

`load(path)` reads and checks it (`SnapshotError`, naming the file, when it is not such a JSON);
`plan(snapshot, constraints=..., comfyui_commit=...)` decides what the image gets:

* each enabled git node as `URL@<commit>` (install_custom_nodes.sh's spec, pinned); disabled
  ones are skipped; an scp-style `git@host:owner/repo` URL becomes `https://host/owner/repo`
  (the build has no SSH keys);
* `pips` entries of the form `name==version`, except packages the image's lock pins (PyTorch,
  ComfyUI's own requirements: the image's pin is kept and a different version is reported),
  installed by the caller under the same constraints as every custom node's requirements;
  URL, local and editable entries are skipped and reported;
* registry (`cnr_custom_nodes`) and single-file (`file_custom_nodes`) nodes cannot be restored
  from a snapshot (it holds neither their source nor a git URL): each is reported;
* a `comfyui` commit other than the image's is reported; the image's ComfyUI is kept.

Reports are `warnings`; nothing here touches the network. Standard library only: the command
line (`python comfyui_snapshot.py SNAPSHOT --nodes-out F --pips-out F`) runs in the Dockerfile's
custom-nodes step, and `--check` alone validates a file for deploy.sh.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_COMMIT = re.compile(r"^(?:[0-9a-fA-F]{40}|[0-9a-fA-F]{64})$")  # a full id: a commit is fetched by it
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([A-Za-z0-9][A-Za-z0-9.+!_-]*)$")
_SCP = re.compile(r"^[A-Za-z0-9._-]+@([A-Za-z0-9.-]+):(.+)$")


class SnapshotError(Exception):
    """The file is not a usable ComfyUI-Manager snapshot; the message names the file."""


@dataclass(frozen=True, kw_only=True)
class GitNode:
    url: str
    commit: str
    disabled: bool = False


@dataclass(frozen=True, kw_only=True)
class Snapshot:
    path: str
    comfyui: str | None
    git_nodes: tuple[GitNode, ...]
    cnr_nodes: tuple[tuple[str, str], ...] = ()
    file_nodes: tuple[tuple[str, bool], ...] = ()
    pips: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, kw_only=True)
class Plan:
    specs: tuple[str, ...]  # URL@commit, one per enabled git node
    pips: tuple[str, ...]  # name==version to install under the image's constraints
    warnings: tuple[str, ...] = field(default=())


def normalise(name: str) -> str:
    """A package name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _url(raw: str, where: str) -> str:
    url = raw.strip()
    scp = _SCP.match(url)
    if scp and "://" not in url:
        url = f"https://{scp.group(1)}/{scp.group(2)}"
    if not url or any(c.isspace() for c in url) or "://" not in url:
        raise SnapshotError(f"{where}: {raw!r} is not a git URL")
    last = url.rstrip("/").rsplit("/", 1)[-1]
    if "@" in last or not last or last in (".git",):
        raise SnapshotError(f"{where}: {raw!r} does not end in a repository name")
    return url.rstrip("/")


def parse(data: Any, path: str) -> Snapshot:
    """The snapshot `data` (decoded JSON) holds; `path` names it in errors."""
    if not isinstance(data, Mapping):
        raise SnapshotError(f"snapshot {path}: expected a JSON object, got {type(data).__name__}")
    if "git_custom_nodes" not in data and "comfyui" not in data:
        raise SnapshotError(f"snapshot {path}: no 'comfyui' or 'git_custom_nodes': not a ComfyUI-Manager snapshot")
    comfyui = data.get("comfyui")
    if comfyui is not None and not isinstance(comfyui, str):
        raise SnapshotError(f"snapshot {path}: 'comfyui' must be a commit id")
    git = data.get("git_custom_nodes") or {}
    if not isinstance(git, Mapping):
        raise SnapshotError(f"snapshot {path}: 'git_custom_nodes' must be an object of URL -> {{hash, disabled}}")
    nodes = []
    for raw, entry in git.items():
        where = f"snapshot {path}: git_custom_nodes[{raw!r}]"
        if not isinstance(entry, Mapping):
            raise SnapshotError(f'{where}: expected {{"hash": ..., "disabled": ...}}')
        commit, disabled = entry.get("hash"), entry.get("disabled", False)
        if not isinstance(commit, str) or not _COMMIT.match(commit):
            raise SnapshotError(f"{where}: 'hash' must be a full commit id (40 hexadecimal digits), got {commit!r}")
        if not isinstance(disabled, bool):
            raise SnapshotError(f"{where}: 'disabled' must be true or false")
        nodes.append(GitNode(url=_url(raw, where), commit=commit.lower(), disabled=disabled))
    cnr = data.get("cnr_custom_nodes") or {}
    if not isinstance(cnr, Mapping):
        raise SnapshotError(f"snapshot {path}: 'cnr_custom_nodes' must be an object of id -> version")
    files = data.get("file_custom_nodes") or []
    if not isinstance(files, list) or not all(isinstance(f, Mapping) and "filename" in f for f in files):
        raise SnapshotError(f"snapshot {path}: 'file_custom_nodes' must be a list of {{filename, disabled}}")
    pips = data.get("pips") or {}
    if not isinstance(pips, Mapping):
        raise SnapshotError(f"snapshot {path}: 'pips' must be an object of requirement -> source")
    return Snapshot(
        path=path,
        comfyui=comfyui,
        git_nodes=tuple(nodes),
        cnr_nodes=tuple((str(k), str(v)) for k, v in cnr.items()),
        file_nodes=tuple((str(f["filename"]), bool(f.get("disabled", False))) for f in files),
        pips=tuple((str(k), str(v or "")) for k, v in pips.items()),
    )


def load(path: Path | str) -> Snapshot:
    """The snapshot in file `path` (SnapshotError naming it when it cannot be read or used)."""
    try:
        text = Path(path).read_text(encoding="utf-8-sig")  # Windows editors add a BOM
    except OSError as exc:
        raise SnapshotError(f"snapshot {path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise SnapshotError(f"snapshot {path}: not UTF-8 text") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SnapshotError(
            f"snapshot {path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    return parse(data, str(path))


def read_constraints(path: Path | str | None) -> dict[str, str]:
    """`name==version` lines of a constraints file, by normalised name."""
    pins: dict[str, str] = {}
    if not path:
        return pins
    for line in Path(path).read_text().splitlines():
        match = _PIN.match(line.split("#", 1)[0].split(";", 1)[0].strip())
        if match:
            pins[normalise(match.group(1))] = match.group(2)
    return pins


def plan(snapshot: Snapshot, *, constraints: Mapping[str, str], comfyui_commit: str | None) -> Plan:
    """What to install from `snapshot` into an image whose lock pins `constraints` (normalised
    name -> version) and whose ComfyUI is `comfyui_commit`."""
    warnings = []
    if snapshot.comfyui and comfyui_commit and snapshot.comfyui.lower() != comfyui_commit.lower():
        warnings.append(
            f"the snapshot was taken on ComfyUI {snapshot.comfyui}; this image has {comfyui_commit} "
            "(deploy/comfyui.env), which is kept"
        )
    specs = []
    for node in snapshot.git_nodes:
        if node.disabled:
            warnings.append(f"{node.url} is disabled in the snapshot: not installed")
        else:
            specs.append(f"{node.url}@{node.commit}")
    for name, version in snapshot.cnr_nodes:
        warnings.append(
            f"registry node {name} {version} cannot be restored from a snapshot: not installed "
            "(add its git URL@commit to deploy/custom_nodes.txt)"
        )
    for filename, disabled in snapshot.file_nodes:
        if not disabled:
            warnings.append(
                f"single-file node {filename} cannot be restored (a snapshot holds no source): not installed"
            )
    pips = []
    for requirement, source in snapshot.pips:
        match = _PIN.match(requirement.strip())
        if source or match is None:
            warnings.append(f"pip {requirement} {source}".rstrip() + ": not a name==version from an index, skipped")
            continue
        name, version = match.group(1), match.group(2)
        pinned = constraints.get(normalise(name))
        if pinned is not None:
            if pinned != version:
                warnings.append(f"pip {name}=={version}: the image pins {name}=={pinned}, which is kept")
            continue
        pips.append(f"{name}=={version}")
    return Plan(specs=tuple(specs), pips=tuple(pips), warnings=tuple(warnings))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="What a ComfyUI-Manager snapshot installs into the image.")
    parser.add_argument("snapshot", help="the snapshot's JSON file")
    parser.add_argument("--check", action="store_true", help="only check that the file is a usable snapshot")
    parser.add_argument("--constraints", default="", help="the image's pins (name==version lines)")
    parser.add_argument("--comfyui-commit", default="", help="the image's ComfyUI commit")
    parser.add_argument("--nodes-out", help="write URL@commit specs here, one a line")
    parser.add_argument("--pips-out", help="write name==version requirements here, one a line")
    args = parser.parse_args(argv)
    try:
        snapshot = load(args.snapshot)
    except SnapshotError as exc:
        print(f"custom nodes: {exc}", file=sys.stderr)
        return 2
    if args.check:
        return 0
    result = plan(snapshot, constraints=read_constraints(args.constraints), comfyui_commit=args.comfyui_commit)
    for line in result.warnings:
        print(f"custom nodes: warning: {line}", file=sys.stderr)
    print(
        f"custom nodes: snapshot {args.snapshot}: {len(result.specs)} git node(s), {len(result.pips)} pip package(s)",
        file=sys.stderr,
    )
    if args.nodes_out:
        Path(args.nodes_out).write_text("".join(f"{s}\n" for s in result.specs))
    if args.pips_out:
        Path(args.pips_out).write_text("".join(f"{p}\n" for p in result.pips))
    return 0


if __name__ == "__main__":
    sys.exit(main())
