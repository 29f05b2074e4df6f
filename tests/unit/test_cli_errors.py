"""Every user-fixable problem ends the CLI with exit code 2 and one line naming the file, the key and the reason,
never a traceback, and before any stage runs (table-driven)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from geomoe.cli import main

REPO = Path(__file__).resolve().parents[2]
QUICKSTART = str(REPO / "jobs" / "quickstart.yaml")


def job(tmp_path: Path, **changes: object) -> str:
    """The quickstart job with its locations under tmp_path and ``changes`` (top-level keys) applied; a change to
    None removes the key."""
    raw = yaml.safe_load(Path(QUICKSTART).read_text())
    raw["output_root"] = str(tmp_path / "runs")
    raw["data"]["root"] = str(tmp_path / "data" / "geotext")
    raw["preprocess"]["output_dir"] = str(tmp_path / "prepared")
    raw = {k: v for k, v in (raw | changes).items() if v is not None}
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(raw))
    return str(path)


CASES = {
    "missing job file": (lambda t: ["run", str(t / "nope.yaml")], r"nope\.yaml: <root>: file not found"),
    "unknown key": (
        lambda t: ["run", job(t), "--set", "preprocess.bogus=1"],
        r"job\.yaml: preprocess\.bogus: unknown key",
    ),
    "wrong type": (
        lambda t: ["run", job(t), "--set", "train.lr=fast"],
        r"job\.yaml: train\.lr: expected a number, got the string 'fast'",
    ),
    "a quoted exponent": (
        lambda t: ["run", job(t), "--set", 'train.lr="1e-4"'],
        r"job\.yaml: train\.lr: expected a number, got the string '1e-4' \(write it without quotes\)",
    ),
    "a quoted number": (
        lambda t: ["run", job(t), "--set", 'train.batch_size="32"'],
        r"job\.yaml: train\.batch_size: expected a number, got the string '32' \(write it without quotes\)",
    ),
    "another family's train key": (
        lambda t: ["run", job(t), "--set", "train.augment=true"],
        r"job\.yaml: train\.augment: unknown key",
    ),
    "unknown family": (
        lambda t: ["run", job(t), "--set", "model.name=pe-moe"],
        r"job\.yaml: model\.name: unknown model family 'pe-moe'; registered: pe_moe, smgeo",
    ),
    "data the family cannot train on": (
        lambda t: ["run", job(t, model={"name": "smgeo"}, train={}, eval={}, index=None, stages=["prepare", "train"])],
        r"job\.yaml: data\.format: geotext prepares retrieval data, and smgeo trains on localization data",
    ),
    "index without a checkpoint": (
        lambda t: ["run", job(t, stages=["index"])],
        r"job\.yaml: index\.checkpoint: stage 'index' needs a checkpoint, or a 'train' stage before it",
    ),
    "stage the family lacks": (
        lambda t: [
            "run",
            job(
                t,
                model={"name": "smgeo"},
                train={},
                eval={},
                index=None,
                caption=None,
                stages=["index"],
                data={"format": "cvogl", "root": "x"},
            ),
        ],
        r"job\.yaml: stages: 'index' is not a stage of smgeo jobs",
    ),
    "no prepared data": (
        lambda t: ["run", job(t, stages=["train"])],
        r"prepared: no finished prepared dataset \(manifest\.json missing\); stage 'train' needs one",
    ),
    "unset environment variable": (
        lambda t: ["run", job(t, output_root="${GEOMOE_TEST_UNSET_VARIABLE}")],
        r"job\.yaml: output_root: \$\{GEOMOE_TEST_UNSET_VARIABLE\} is not set in the environment",
    ),
    "missing sweep": (lambda t: ["sweep", str(t / "sweep.yaml")], r"sweep\.yaml: <root>: file not found"),
    "not a sweep folder": (lambda t: ["report", str(t)], r"no sweep\.json here"),
    "a sweep without calibration": (
        lambda t: ["calibrate", str(REPO / "search_spaces" / "smgeo_topk.yaml"), "--quickstart"],
        r"smgeo_topk-quickstart: calibration: this sweep has no calibration section",
    ),
    "missing Serve config": (lambda t: ["serve", str(t / "s.yaml")], r"s\.yaml: <root>: Serve config not found"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_user_errors_exit_2_with_one_line_and_no_traceback(
    case: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, message = CASES[case]
    code = main(argv(tmp_path))
    err = capsys.readouterr().err
    assert code == 2, err
    # one line: the error (after the header of the stage it stopped, if it got that far)
    *stages, last = err.strip().splitlines()
    assert "Traceback" not in err and all(re.match(r"\[\d/\d\] \w+", line) for line in stages), err
    assert last.startswith("geomoe: error: ")
    assert re.search(message, err), err
    assert not (tmp_path / "runs" / "quickstart" / "results.json").exists()  # no stage ran


def test_help_lists_every_command_on_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from geomoe.cli import build_parser

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert len(commands) == 12
    for name in commands:
        (line,) = [line for line in text.splitlines() if line.split()[:1] == [name]]
        assert len(line.split()) > 2, line  # the command, then its one-line help on the same line
