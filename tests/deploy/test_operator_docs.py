"""docs/operators.md's cost table follows from deploy.sh's sizes and its own rates, every
MODEL_TYPE has its licence there, and the default's licence is said where the default is chosen
(deploy.sh's help, the Dockerfile)."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = (ROOT / "docs" / "operators.md").read_text()
DEPLOY = (ROOT / "deploy.sh").read_text()
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def section(title: str) -> str:
    return DOC.split(f"## {title}", 1)[1].split("\n## ", 1)[0]


def model_types() -> set[str]:
    types = {"base"}
    for line in (ROOT / "models.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            types.update(line.split()[0].split(","))
    return types


def default_model_type() -> str:
    (default,) = set(re.findall(r"^ARG MODEL_TYPE=(\S+)$", DOCKERFILE, re.M))
    assert re.search(rf"^MODEL_TYPE=\$\{{MODEL_TYPE:-{re.escape(default)}\}}$", DEPLOY, re.M)
    return default


def test_every_model_type_has_its_licence_and_the_default_says_so():
    rows = dict(re.findall(r"^\| `([\w-]+)`[^|]*\| [^|]+\| ([^|]+) \|", section("Model licences"), re.M))
    assert set(rows) == model_types()
    default = default_model_type()
    assert re.search(rf"^\| `{default}` \(\*\*the default\*\*\)", section("Model licences"), re.M)
    assert "Non-Commercial" in rows[default]
    help_text = DEPLOY.split("--model-type TYPE", 1)[1].split("\n  --", 1)[0]
    assert default in help_text and "non-commercial" in help_text
    assert "Non-Commercial" in DOCKERFILE.split(f"ARG MODEL_TYPE={default}")[-2].rsplit("FROM", 1)[-1]


def test_the_cost_table_follows_from_the_deployed_size():
    costs = section("Cost per hour and per image")
    cpu = int(re.search(r"^CPU=\$\{CPU:-(\d+)\}$", DEPLOY, re.M).group(1))
    memory = int(re.search(r"^MEMORY=\$\{MEMORY:-(\d+)Gi\}$", DEPLOY, re.M).group(1))
    gpu_rate = float(re.search(r"NVIDIA L4, no zonal redundancy \| \$([\d.]+) / s", costs).group(1))
    vcpu = re.search(r"\| (\d+) vCPU, instance-based billing \| (\d+) × \$([\d.]+) / vCPU-s", costs)
    gib = re.search(r"\| (\d+) GiB, instance-based billing \| (\d+) × \$([\d.]+) / GiB-s", costs)
    assert int(vcpu.group(1)) == int(vcpu.group(2)) == cpu
    assert int(gib.group(1)) == int(gib.group(2)) == memory
    rate = gpu_rate + cpu * float(vcpu.group(3)) + memory * float(gib.group(3))
    assert f"**${rate:.7f} / s**" in costs
    assert f"**${rate * 3600:.2f}**" in costs and f"**${rate * 86400:.2f} a day**" in costs
    # every per-image figure is its seconds times that rate
    rows = re.findall(r"^\| `([\w-]+)`[^|]*\| [^|]+\| ([\d.–]+) \[[^|]+\| \$([\d.–]+) \|", costs, re.M)
    assert len(rows) == len([p for p in (ROOT / "workflows").glob("*.manifest.json")]), rows
    for template, seconds, dollars in rows:
        low, _, high = seconds.partition("–")
        expected = [float(low) * rate, float(high or low) * rate]
        given = [float(d) for d in dollars.split("–")]
        if len(given) == 1 and high:  # one figure for a range: its middle
            expected = [(expected[0] + expected[1]) / 2]
        for want, got in zip(expected, given):
            assert abs(want - got) <= 0.00006 + want * 0.05, (template, seconds, dollars, want)
