"""The documents' run tables come from a run, not from typing: each block between a "run tables" marker and its end
is what a job printed, rendered again here from that run's own files (``docs/demo/<run>``: the ``spec.json`` and
``results.json`` the job wrote into ``runs/<name>``, the train part kept). The README's demo tables are
``docs/demo/quickstart`` (``make demo``); the guide's SMGeo tables are ``docs/demo/smgeo_click``. To refresh one
after a change: run the job, copy the two files, paste ``geomoe report runs/<name>`` between the markers. A sweep
report (docs/sweeps.md) is the same for a sweep: its sweep.json and each trial's trial_result.json and
per_query.npz in ``docs/demo/sweeps/<experiment>``, and ``geomoe report runs/sweeps/<experiment>`` less its
title between the markers."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "docs" / "demo" / "quickstart"
RUN_BLOCK = re.compile(
    r"<!-- run tables: generated from (docs/demo/[\w/-]+) \(tests/unit/test_readme.py\) -->\n"
    r"(.*?)\n<!-- end of the run tables -->",
    re.S,
)
SWEEP_BLOCK = re.compile(
    r"<!-- sweep report: generated from (docs/demo/sweeps/[\w-]+) \(tests/unit/test_readme.py\) -->\n"
    r"(.*?)\n<!-- end of the sweep report -->",
    re.S,
)
CALIBRATION_BLOCK = re.compile(
    r"<!-- calibration: generated from (docs/demo/calibration/[\w-]+) \(tests/unit/test_readme.py\) -->\n"
    r"(.*?)\n<!-- end of the calibration -->",
    re.S,
)
BESIDE_BLOCK = re.compile(
    r"<!-- verdicts with calibration: generated from (docs/demo/sweeps/[\w-]+) and (docs/demo/calibration/[\w-]+) "
    r"\(tests/unit/test_readme.py\) -->\n(.*?)\n<!-- end of the verdicts with calibration -->",
    re.S,
)
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]


def readme_tables() -> str:
    """The README's demo tables (the block generated from docs/demo/quickstart)."""
    blocks = dict(RUN_BLOCK.findall((REPO / "README.md").read_text()))
    return code_block(blocks["docs/demo/quickstart"])


def code_block(text: str) -> str:
    block = text.strip()
    assert block.startswith("```\n") and block.endswith("\n```"), "the tables sit in one code block"
    return block[4:-4]


def printed_tables(run: Path) -> str:
    """What the job of ``run`` (a docs/demo folder) printed, from its spec.json and results.json."""
    from geomoe.cli import run_report

    return run_report(str(run))


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_sweep_report_is_its_sweeps_own(document: Path) -> None:
    """A sweep's report in the docs is ``geomoe report``'s Markdown of the stored sweep (its sweep.json, each trial's
    result and per-query values), less its title."""
    from geomoe.core.sweep.tables import report_markdown

    text = document.read_text()
    blocks = SWEEP_BLOCK.findall(text)
    assert len(blocks) == text.count("<!-- sweep report:"), "a sweep-report marker without its end marker"
    for sweep, block in blocks:
        title, rest = report_markdown(str(REPO / sweep)).split("\n", 1)
        assert title.startswith("# Sweep ") and block.strip() == rest.strip(), sweep


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_calibration_table_is_computed_again_from_its_stored_trials(document: Path) -> None:
    """A calibration table (and a sweep's verdicts beside it) in the docs is what ``calibration.rebuild`` computes
    from the stored worlds' sweeps (each trial's result and per-query values), not the numbers of a saved file."""
    from geomoe.core.sweep import calibration
    from geomoe.core.sweep.tables import configurations, report_rows, verdicts

    text = document.read_text()
    blocks = CALIBRATION_BLOCK.findall(text)
    assert len(blocks) == text.count("<!-- calibration:"), "a calibration marker without its end marker"
    for folder, block in blocks:
        assert block.strip() == calibration.markdown(calibration.rebuild(str(REPO / folder))).strip(), folder
    beside = BESIDE_BLOCK.findall(text)
    assert len(beside) == text.count("<!-- verdicts with calibration:"), "a marker without its end marker"
    for sweep, folder, block in beside:
        saved, rows = report_rows(str(REPO / sweep))
        found = verdicts(saved, configurations(saved, rows))
        assert block.strip() == calibration.beside_verdicts(found, calibration.rebuild(str(REPO / folder))), sweep


def test_the_readme_demo_tables_are_the_demo_runs_own_tables() -> None:
    assert readme_tables() == printed_tables(DEMO)


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda path: path.name)
def test_every_run_block_is_its_runs_own_tables(document: Path) -> None:
    text = document.read_text()
    blocks = RUN_BLOCK.findall(text)
    assert len(blocks) == text.count("<!-- run tables:"), "a run-tables marker without its end marker"
    for run, block in blocks:
        assert code_block(block) == printed_tables(REPO / run), run


def test_geomoe_report_prints_a_runs_tables_from_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geomoe.cli import main

    for name in ("spec.json", "results.json"):
        (tmp_path / name).write_text((DEMO / name).read_text())
    assert main(["report", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == readme_tables()


CLICK_RUNS = REPO / "docs" / "demo" / "smgeo_click"  # the SMGeo quickstart with each click encoding and pooling
CLICK_START = "<!-- click comparison: generated from docs/demo/smgeo_click (tests/unit/test_readme.py) -->"
CLICK_END = "<!-- end of the click comparison -->"
LABELS = {"prompt": "prompt (the paper's)", "channel": "channel (the authors' code)", "mean": "mean (the paper's)",
          "click": "click heat (ours)"}  # fmt: skip


def click_comparison() -> str:
    """The SMGeo quickstart once per (click encoding, query pooling): test acc@0.5 of the model and of the same
    model with its click zeroed, each with its 95% interval, their paired difference, and the prompt against
    the channel under each pooling (paired over the same 150 samples)."""
    from geomoe.core.stats import paired_difference
    from geomoe.families.smgeo.results import SMGeoResult

    tests = {}
    for run in sorted(path.parent for path in CLICK_RUNS.glob("*/spec.json")):
        spec = json.loads((run / "spec.json").read_text())["model"]
        result = SMGeoResult.of(json.loads((run / "results.json").read_text())["train"]["model"])
        assert (spec["click"], spec["query_pool"]) not in tests, f"{run}: a second run of the same variant"
        tests[spec["click"], spec["query_pool"]] = result.test
    acc50 = {variant: {name: r.values()["acc@0.5"] for name, r in test.items()} for variant, test in tests.items()}
    lines = [
        "| click | query pooling | acc@0.5 | click zeroed | with - without the click | over the centre box |",
        "|---|---|---|---|---|---|",
    ]
    for (click, pool), test in sorted(tests.items(), key=lambda item: (item[0][1] != "mean", item[0][0] != "prompt")):
        ours, zeroed = test["smgeo"], test["click_zeroed"]
        cells = [f"{r.overall['acc@0.5']:.2f} [{r.interval['acc@0.5'][0]:.1f}, {r.interval['acc@0.5'][1]:.1f}]"
                 for r in (ours, zeroed)]  # fmt: skip
        values = acc50[click, pool]
        used = paired_difference(values["smgeo"], values["click_zeroed"])
        centre = paired_difference(values["smgeo"], values["centre_box"])
        lines.append(f"| {LABELS[click]} | {LABELS[pool]} | {cells[0]} | {cells[1]} | {used} | {centre} |")
    lines.append("")
    for pool in sorted({pool for _, pool in tests}, key=lambda p: p != "mean"):
        d = paired_difference(acc50["prompt", pool]["smgeo"], acc50["channel", pool]["smgeo"])
        lines.append(f"- prompt - channel, {LABELS[pool]} pooling: acc@0.5 {d}")
    for click in ("prompt", "channel"):
        d = paired_difference(acc50[click, "click"]["smgeo"], acc50[click, "mean"]["smgeo"])
        lines.append(f"- click heat - mean pooling, {LABELS[click]}: acc@0.5 {d}")
    return "\n".join(lines)


def test_every_stored_run_and_sweep_is_shown_somewhere() -> None:
    """Each docs/demo folder is rendered by a block of some document (a run's tables, the click comparison, a
    sweep's report): removing a block with its markers fails here."""
    text = "\n".join(document.read_text() for document in DOCUMENTS)
    shown = {run for run, _ in RUN_BLOCK.findall(text)} | {sweep for sweep, _ in SWEEP_BLOCK.findall(text)}
    shown |= {folder for folder, _ in CALIBRATION_BLOCK.findall(text)}
    if CLICK_START in text:
        shown |= {str(path.parent.relative_to(REPO)) for path in CLICK_RUNS.glob("*/spec.json")}
    stored = {str(path.parent.relative_to(REPO)) for path in (REPO / "docs" / "demo").glob("*/spec.json")}
    stored |= {str(path.parent.relative_to(REPO)) for path in (REPO / "docs" / "demo").glob("*/*/spec.json")}
    stored |= {str(path.parent.relative_to(REPO)) for path in (REPO / "docs" / "demo" / "sweeps").glob("*/sweep.json")}
    stored |= {
        str(p.parent.relative_to(REPO)) for p in (REPO / "docs" / "demo" / "calibration").glob("*/calibration.json")
    }
    assert stored and stored <= shown, sorted(stored - shown)
    assert "docs/demo/quickstart" in shown and "docs/demo/smgeo_click/prompt_mean" in {
        r for r, _ in RUN_BLOCK.findall(text)
    }


def test_the_guides_click_comparison_is_its_runs_own() -> None:
    text = (REPO / "docs" / "guide.md").read_text()
    assert text.count(CLICK_START) == 1 and text.count(CLICK_END) == 1
    assert text[text.index(CLICK_START) + len(CLICK_START) : text.index(CLICK_END)].strip() == click_comparison()
