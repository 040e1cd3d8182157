"""docs/templates.md's "Shipped templates" table names every template in workflows/ with its
MODEL_TYPE, and no template that is not there."""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def documented() -> dict[str, str]:
    text = (ROOT / "docs" / "templates.md").read_text()
    section = text.split("## Shipped templates", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^\| `([\w-]+)` \| `([\w-]+)` \|", section, re.M))


def test_the_shipped_templates_table_is_complete():
    shipped = {
        path.name.removesuffix(".manifest.json"): json.loads(path.read_text()).get("model_type")
        for path in (ROOT / "workflows").glob("*.manifest.json")
    }
    assert documented() == shipped
