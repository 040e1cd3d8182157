"""`python -m handler.config --markdown`: print docs/configuration.md as the declarations make it."""

from __future__ import annotations

import argparse
import sys

from handler.config.docs import COMMAND, markdown


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m handler.config", description=f"Regenerate: {COMMAND}")
    parser.add_argument("--markdown", action="store_true", required=True, help="print docs/configuration.md")
    parser.parse_args(argv)
    sys.stdout.write(markdown())
    return 0


if __name__ == "__main__":
    sys.exit(main())
