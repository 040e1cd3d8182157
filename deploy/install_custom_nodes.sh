#!/usr/bin/env bash
# Installs ComfyUI custom nodes into a custom_nodes/ folder.
#
#   install_custom_nodes.sh [--snapshot SNAPSHOT] CUSTOM_NODES_DIR [LIST_FILE] [SPEC...]
#
# SPEC is a git URL with an optional @ref (tag, branch or commit) after the repository name:
#   https://github.com/owner/ComfyUI-Some-Node@v1.2.0
# LIST_FILE ("" for none) holds one SPEC a line; '#' starts a comment. SNAPSHOT is a ComfyUI-Manager
# snapshot (JSON): each enabled git node in it is a SPEC pinned to the snapshot's commit, and its
# pips are installed too (comfyui_snapshot.py, beside this script, says which and why). A node given
# twice (same folder name) must have the same URL and ref each time, or nothing is installed.
# Each node's requirements.txt is installed with pip (set PIP_CONSTRAINT to keep pinned packages
# such as torch in place; the snapshot's pips are checked against it too). COMFYUI_COMMIT, when set,
# is the image's ComfyUI: a snapshot taken on another is reported, not followed.
set -euo pipefail

usage="usage: $0 [--snapshot SNAPSHOT] CUSTOM_NODES_DIR [LIST_FILE] [SPEC...]"
snapshot=""
if [[ ${1:-} == --snapshot ]]; then
    [[ $# -ge 2 ]] || { echo "$usage" >&2; exit 2; }
    snapshot=$2
    shift 2
fi
if [[ $# -lt 1 ]]; then
    echo "$usage" >&2
    exit 2
fi
nodes_dir=$1
shift
specs=()
snapshot_pips=""
if [[ -n $snapshot ]]; then
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    python "$(dirname "${BASH_SOURCE[0]}")/comfyui_snapshot.py" "$snapshot" \
        --constraints "${PIP_CONSTRAINT:-}" --comfyui-commit "${COMFYUI_COMMIT:-}" \
        --nodes-out "$work/nodes.txt" --pips-out "$work/pips.txt"
    mapfile -t from_snapshot <"$work/nodes.txt"
    specs+=("${from_snapshot[@]}")
    if [[ -s $work/pips.txt ]]; then
        snapshot_pips=$work/pips.txt
    fi
fi
if [[ $# -gt 0 ]]; then
    list=$1
    shift
    if [[ -n $list ]]; then
        if [[ ! -f $list ]]; then
            echo "custom nodes: list file '$list' not found" >&2
            exit 2
        fi
        while IFS= read -r line || [[ -n $line ]]; do
            line=${line%%#*}
            read -r -a words <<<"$line"
            if [[ ${#words[@]} -gt 0 ]]; then
                specs+=("${words[@]}")
            fi
        done <"$list"
    fi
fi
specs+=("$@")

if [[ ${#specs[@]} -eq 0 && -z $snapshot_pips ]]; then
    echo "custom nodes: none"
    exit 0
fi

# Every spec is checked before anything is cloned: a bad one, or one folder from two sources.
declare -A seen=()
unique=()
for spec in "${specs[@]}"; do
    url=$spec
    ref=""
    last=${spec##*/}
    if [[ $last == *@* ]]; then
        ref=${last##*@}
        url=${spec%@*}
    fi
    name=${url##*/}
    name=${name%.git}
    if [[ -z $name || $url != *://* ]]; then
        echo "custom nodes: bad spec '$spec' (expected https://host/owner/repo[@ref])" >&2
        exit 2
    fi
    same=${url%.git}@$ref
    if [[ -n ${seen[$name]:-} ]]; then
        if [[ ${seen[$name]} != "$same" ]]; then
            echo "custom nodes: $name is given twice, as ${seen[$name]%@} and ${same%@}" \
                "(deploy/custom_nodes.txt, CUSTOM_NODES and the snapshot must agree; keep one)" >&2
            exit 2
        fi
        continue
    fi
    seen[$name]=$same
    unique+=("$spec")
done

mkdir -p "$nodes_dir"
for spec in "${unique[@]}"; do
    url=$spec
    ref=""
    last=${spec##*/}
    if [[ $last == *@* ]]; then
        ref=${last##*@}
        url=${spec%@*}
    fi
    name=${url##*/}
    name=${name%.git}
    dest=$nodes_dir/$name
    if [[ -e $dest ]]; then
        echo "custom nodes: $name is already present; skipping" >&2
        continue
    fi
    echo "custom nodes: $name from $url${ref:+ at $ref}"
    git init -q "$dest"
    git -C "$dest" remote add origin "$url"
    git -C "$dest" fetch -q --depth 1 origin "${ref:-HEAD}"
    git -C "$dest" checkout -q FETCH_HEAD
    rm -rf "$dest/.git"
    if [[ -f $dest/requirements.txt ]]; then
        python -m pip install --no-cache-dir --requirement "$dest/requirements.txt"
    fi
done
if [[ -n $snapshot_pips ]]; then
    echo "custom nodes: the snapshot's pip packages: $(paste -sd ' ' "$snapshot_pips")"
    python -m pip install --no-cache-dir --requirement "$snapshot_pips"
fi
