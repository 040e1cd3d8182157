#!/usr/bin/env bash
# Installs ComfyUI custom nodes into a custom_nodes/ folder.
#
#   install_custom_nodes.sh CUSTOM_NODES_DIR [LIST_FILE] [SPEC...]
#
# SPEC is a git URL with an optional @ref (tag, branch or commit) after the repository name:
#   https://github.com/owner/ComfyUI-Some-Node@v1.2.0
# LIST_FILE ("" for none) holds one SPEC a line; '#' starts a comment. Each node's requirements.txt is
# installed with pip (set PIP_CONSTRAINT to keep pinned packages such as torch in place).
set -euo pipefail

if [[ $# -lt 1 ]]; then
    echo "usage: $0 CUSTOM_NODES_DIR [LIST_FILE] [SPEC...]" >&2
    exit 2
fi
nodes_dir=$1
shift
specs=()
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

if [[ ${#specs[@]} -eq 0 ]]; then
    echo "custom nodes: none"
    exit 0
fi

mkdir -p "$nodes_dir"
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
