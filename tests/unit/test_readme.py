"""The README's numbers come from a run, not from typing: its demo tables are what the demo run printed, rendered
again here from that run's own files (``docs/demo/quickstart``: the ``spec.json`` and ``results.json`` that
``make demo`` wrote into ``runs/quickstart``, copied as they are). To refresh them after a change: ``make demo``,
copy the two files, paste ``geomoe report runs/quickstart``'s train tables between the README's markers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.stages import printed_summaries

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "docs" / "demo" / "quickstart"
START = "<!-- demo tables: generated from docs/demo/quickstart (tests/unit/test_readme.py) -->"
END = "<!-- end of the demo tables -->"


def readme_tables() -> str:
    text = (REPO / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1, "the README's demo-table markers"
    block = text[text.index(START) + len(START) : text.index(END)].strip()
    assert block.startswith("```\n") and block.endswith("\n```"), "the tables sit in one code block"
    return block[4:-4]


def test_the_readme_demo_tables_are_the_demo_runs_own_tables() -> None:
    raw = json.loads((DEMO / "spec.json").read_text())
    spec = parse_spec(JobSpec, raw, str(DEMO / "spec.json"))
    results = json.loads((DEMO / "results.json").read_text())
    (tables,) = printed_summaries(spec, {"train": results["train"]})
    assert readme_tables() == tables


def test_geomoe_report_prints_a_runs_tables_from_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geomoe.cli import main

    for name in ("spec.json", "results.json"):
        (tmp_path / name).write_text((DEMO / name).read_text())
    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == readme_tables()
