"""The downloader's command line: fetch the model files of one MODEL_TYPE listed in models.txt,
verified by sha256 (the image's models stage, and operators)::

    python -m handler.models [--model-type T] [--dest /comfyui/models]
        [--source gs://bucket/prefix | /mounted/dir] [--models-file models.txt]

Defaults come from the environment through `Settings` (MODEL_TYPE, MODELS_FILE, COMFYUI_PATH,
MODELS_SOURCE, HF_TOKEN). A Hugging Face token may also come from a file (the BuildKit secret).
Exit status: 0 done, 1 a file could not be installed, 2 bad arguments or a bad models.txt.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from handler.models.install import FetchOptions, fetch_models
from handler.models.manifest import ModelFilesError, parse_models_file, select
from handler.models.sources import HF_TOKEN_HOSTS

log = logging.getLogger("handler.models")

DEFAULT_TOKEN_FILE = Path("/run/secrets/hf_token")


def read_token(token: str | None = None, token_file: Path | str | None = None) -> str | None:
    """The token from a file (if given and present) or the value given; blank means none."""
    if token_file is not None:
        path = Path(token_file)
        if path.is_file():
            value = path.read_text(encoding="utf-8").strip()
            return value or None
    value = (token or "").strip()
    return value or None


def _parser(defaults: dict[str, Any]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m handler.models",
        description="Fetch the model files of one MODEL_TYPE listed in models.txt, verified by sha256.",
    )
    p.add_argument("--model-type", default=defaults["model_type"], help="default: MODEL_TYPE or 'base'")
    p.add_argument(
        "--models-file", type=Path, default=defaults["models_file"], help="default: MODELS_FILE or models.txt"
    )
    p.add_argument(
        "--dest", type=Path, default=defaults["dest"], help="ComfyUI's models/ folder (default: COMFYUI_PATH/models)"
    )
    p.add_argument(
        "--source",
        default=defaults["source"],
        help="gs://bucket/prefix or a mounted folder laid out like models/ (default: the URLs)",
    )
    p.add_argument(
        "--hf-token-file",
        type=Path,
        default=None,
        help=f"file holding the Hugging Face token (default: HF_TOKEN, then {DEFAULT_TOKEN_FILE} if present)",
    )
    p.add_argument("--workers", type=int, default=4, help="parallel downloads (default 4)")
    p.add_argument(
        "--allow-unverified", action="store_true", help="fetch lines whose SHA256 is '-' and print their digest"
    )
    p.add_argument("--verify", action="store_true", help="also hash files linked from a mounted folder")
    p.add_argument("--list", action="store_true", help="print the model type's lines and exit")
    p.add_argument("--token-host", action="append", default=None, help=argparse.SUPPRESS)
    p.add_argument("--retry-backoff", type=float, default=2.0, help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None, env: dict[str, str] | None = None) -> int:
    from handler.config import ConfigError, Settings

    logging.basicConfig(level=logging.INFO, format="modelfiles: %(levelname)s %(message)s", stream=sys.stderr)
    try:
        settings = Settings.from_env(env)
    except ConfigError as exc:
        print(f"modelfiles: {exc}", file=sys.stderr)
        return 2
    defaults = {
        "model_type": settings.model_type,
        "models_file": settings.models_file,
        "dest": (settings.comfyui_path / "models") if settings.comfyui_path else None,
        "source": settings.models_source,
    }
    args = _parser(defaults).parse_args(argv)
    if args.dest is None and not args.list:
        print("modelfiles: --dest is required when COMFYUI_PATH is not set", file=sys.stderr)
        return 2
    try:
        files = select(parse_models_file(args.models_file), args.model_type)
        if args.list:
            for f in files:
                print(f"{f.dest}\t{f.sha256 or '-'}\t{f.size or '-'}\t{f.url}")
            return 0
        token_file = args.hf_token_file
        if token_file is None and not settings.hf_token and DEFAULT_TOKEN_FILE.is_file():
            token_file = DEFAULT_TOKEN_FILE
        if args.hf_token_file is not None and not args.hf_token_file.is_file():
            log.info("token file %s not present; continuing without it", args.hf_token_file)
        token = read_token(settings.hf_token, token_file)
        if not files:
            log.info("model type %s has no model files; nothing to do", args.model_type)
            args.dest.mkdir(parents=True, exist_ok=True)
            return 0
        options = FetchOptions(
            source=args.source,
            hf_token=token,
            workers=args.workers,
            allow_unverified=args.allow_unverified,
            verify_local=args.verify,
            token_hosts=tuple(args.token_host) if args.token_host else HF_TOKEN_HOSTS,
            backoff_s=args.retry_backoff,
        )
        result = fetch_models(files, args.dest, options)
    except ModelFilesError as exc:
        print(f"modelfiles: error: {exc}", file=sys.stderr)
        return exc.exit_code
    log.info(
        "%s: %d downloaded, %d linked, %d already present in %s",
        args.model_type,
        len(result.downloaded),
        len(result.linked),
        len(result.present),
        args.dest,
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
