"""Sweep specs, trial jobs and the report, without Ray: every search space validates (both variants), a trial's
job carries its values, and the report shows every trial as it ended (never an invented number)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from geomoe.core.config import SweepSpec, load_job, parse_spec
from geomoe.core.errors import ExperimentError, SpecError
from geomoe.core.ownership import Claim, claim_dir
from geomoe.core.storage import write_json_atomic
from geomoe.core.sweep import SEED, VARIANT, benchmark, describe_trials, grid_points, load_sweep, trial_key, trial_spec
from geomoe.core.sweep.tables import RESULT_FILE, paper_notes, write_per_query, write_report
from geomoe.families.pe_moe.spec import PEMoEModelSpec, PEMoETrainSpec
from geomoe.on_ray.jobs import family_of

REPO = Path(__file__).resolve().parents[2]
SPACES = sorted((REPO / "search_spaces").glob("*.yaml"))


@pytest.mark.parametrize("path", SPACES, ids=[p.stem for p in SPACES])
@pytest.mark.parametrize("quickstart", [False, True])
def test_every_search_space_validates_and_its_trials_are_valid_jobs(path: Path, quickstart: bool) -> None:
    sweep, base = load_sweep(path, quickstart)
    assert sweep.name == path.stem + ("-quickstart" if quickstart else "") and base.is_file()
    points = grid_points(sweep) if sweep.searcher == "grid" else [{}]
    for point in points:
        spec = trial_spec(sweep, base, point, Path("/x/exp"), REPO)
        assert spec.stages == ["train"] and spec.output_root == "/x/exp/trials" and not spec.baselines
        for key, value in point.items():
            if key != VARIANT:
                node = spec.model_dump(mode="json")
                for part in key.split("."):
                    node = node[part]
                assert node == value
    for row in sweep.paper.rows if sweep.paper else []:
        assert set(row.metrics) <= {*sweep.report_metrics, "params_M"}, row.label
        assert set(row.params) <= {VARIANT, *sweep.params}, row.label


def test_table_ii_has_the_papers_numbers_and_quickstart_keeps_them() -> None:
    full, _ = load_sweep(REPO / "search_spaces" / "smgeo_experts.yaml")
    quick, base = load_sweep(REPO / "search_spaces" / "smgeo_experts.yaml", quickstart=True)
    assert [p["model.gmoe.experts"] for p in grid_points(full)] == [2, 3, 4, 5, 6, 7, 8]
    assert full.paper is not None and quick.paper == full.paper
    assert full.paper.rows[4].metrics == {"val_acc25": 85.25, "val_acc50": 58.96, "val_miou": 59.34, "params_M": 33.57}
    assert base.name == "smgeo_quickstart.yaml" and quick.max_concurrent == 2
    # the paper's likely typos are quoted as printed and flagged in the report, not corrected silently
    assert full.paper.rows[6].metrics["val_acc25"] == 84.26
    notes = paper_notes(full)
    assert len(notes) == 2 and "8 experts: acc@0.25 84.26 as printed" in notes[1] and "59.36" in notes[0]


def test_a_variant_that_prepares_differently_gets_its_own_prepared_folder() -> None:
    sweep, base = load_sweep(REPO / "search_spaces" / "pe_moe_ablation.yaml", quickstart=True)
    raw = trial_spec(sweep, base, {VARIANT: "unified_raw"}, Path("/x"), REPO)
    aligned = trial_spec(sweep, base, {VARIANT: "unified_aligned"}, Path("/x"), REPO)
    assert raw.preprocess.refine == "none" and raw.preprocess.satellite_copies == 0
    assert raw.preprocess.output_dir == aligned.preprocess.output_dir + "-unified_raw"
    assert aligned.model_as(PEMoEModelSpec).fusion == "unified" and not aligned.eval.rerank


def test_bad_sweeps_name_the_key() -> None:
    raw = {"name": "s", "base": "b.yaml", "metric": "m", "report_metrics": ["m"]}
    with pytest.raises(SpecError, match="a sweep needs params or variants"):
        parse_spec(SweepSpec, raw, "s.yaml")
    with pytest.raises(SpecError, match=r"s\.yaml: params\.lr: .*low < high"):
        parse_spec(SweepSpec, {**raw, "params": {"lr": {"loguniform": [0.1, 0.01]}}}, "s.yaml")
    with pytest.raises(SpecError, match="searcher grid takes grid values only"):
        parse_spec(SweepSpec, {**raw, "params": {"lr": {"uniform": [0, 1]}}}, "s.yaml")
    with pytest.raises(SpecError, match="optuna cannot take grid values"):
        parse_spec(SweepSpec, {**raw, "searcher": "optuna", "params": {"a": {"grid": [1, 2]}}}, "s.yaml")
    with pytest.raises(SpecError, match="sweep data or preprocess through variants"):
        parse_spec(SweepSpec, {**raw, "params": {"preprocess.satellite_copies": {"grid": [1, 2]}}}, "s.yaml")


def test_trial_keys_are_stable_distinct_folder_names() -> None:
    a, b = trial_key({"model.gmoe.experts": 2}), trial_key({"model.gmoe.experts": 3})
    assert a != b and a == trial_key({"model.gmoe.experts": 2}) and a.startswith("experts-2_")
    assert "/" not in trial_key({VARIANT: "x", "model.loss.box": 0.5})


def test_the_report_shows_finished_failed_and_missing_trials_as_they_are(tmp_path: Path) -> None:
    sweep, _ = load_sweep(REPO / "search_spaces" / "smgeo_topk.yaml", quickstart=True)
    points = grid_points(sweep)
    keys = [trial_key(p) for p in points]
    claim_dir(tmp_path, Claim("output_root", "sweep", "sweep"))  # as run_sweep does
    write_json_atomic(tmp_path / "sweep.json", {"sweep": sweep.model_dump(mode="json"), "expected": keys})
    metrics = {"val_acc25": 40.0, "val_acc50": 31.5, "val_miou": 28.25, "params_M": 0.5}
    finished = {"params": points[0], "status": "finished", "metrics": metrics}
    write_json_atomic(tmp_path / "trials" / keys[0] / RESULT_FILE, finished)
    failed = {"params": points[1], "status": "failed", "error": "RuntimeError: worker died"}
    write_json_atomic(tmp_path / "trials" / keys[1] / RESULT_FILE, failed)
    text = write_report(tmp_path)
    rows = [line for line in text.splitlines() if line.startswith("| ours |")]
    assert len(rows) == len(points)
    assert "| 31.50 |" in rows[0] and rows[0].endswith("finished |")
    assert "failed: RuntimeError: worker died" in rows[1] and "| - |" in rows[1]
    assert all(r.endswith("not run |") and "| - | - | - | - |" in r for r in rows[2:])
    assert text.count("| paper: top-") == 5 and "best: {'model.gmoe.top_k': 1} val_acc50 31.50" in text
    csv_lines = (tmp_path / "report.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(points) + 1 + 5 and ",failed,RuntimeError: worker died" in csv_lines[2]
    assert csv_lines[1 + len(points)].startswith("ours: mean of 1 seeds,")  # the configurations' rows
    assert (tmp_path / "plot-model_gmoe_top_k.png").is_file()
    with pytest.raises(ExperimentError, match=r"no sweep\.json here"):
        write_report(tmp_path / "trials")


def test_trial_metrics_are_flat_and_named_for_the_report() -> None:
    sweep, base = load_sweep(REPO / "search_spaces" / "pe_moe_ablation.yaml", quickstart=True)
    spec = trial_spec(sweep, base, {VARIANT: "dynamic_gating"}, Path("/x"), REPO)
    recall = {"R@1": 10.0, "R@5": 30.0, "R@10": 50.0}
    stage = {"retrieval": {"exact": {"t2i": recall}, "building": {"t2i": recall}}, "routing_accuracy": 99.0}
    metrics = family_of(spec).metrics({"stage1": stage, "stage2": stage})  # what a trial reports
    assert metrics["R@1"] == 10.0 and metrics["Score"] == 30.0 and metrics["building_R@10"] == 50.0
    assert metrics["routing"] == 99.0
    assert all(type(v) is float for v in metrics.values())  # Tune reports plain numbers, never numpy scalars


@pytest.mark.parametrize("quickstart", [False, True])
def test_table_1_rows_train_on_aligned_captions_exactly_when_the_row_has_alignment(
    quickstart: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """PE-MoE Table 1: row 1 has no textual domain alignment, rows 2-4 have it. At paper scale alignment is the
    LLM refine stage (rows 2-4 train on the refined dataset, refined once by the driver); in the quickstart it is
    the rule-based preprocess.refine. ``geomoe sweep --dry-run`` prints the same."""
    from geomoe.cli import main

    sweep, base = load_sweep(REPO / "search_spaces" / "pe_moe_ablation.yaml", quickstart=quickstart)
    rows = {row["params"][VARIANT]: row for row in describe_trials(sweep, base, "/x/exp", REPO)}
    assert list(rows) == ["unified_raw", "unified_aligned", "static_ensemble", "dynamic_gating"]
    raw, aligned = rows.pop("unified_raw"), list(rows.values())
    assert all("error" not in row for row in [raw, *aligned])
    assert "preprocess.refine=none" in raw["data"] and raw["dataset"].endswith("prepared-unified_raw")
    assert "LLM" not in raw["data"]
    # sentence-level splitting is text alignment too: off in row 1 only (the quickstart's rules refinement keeps one
    # sentence, and its job trains without splitting in every row)
    specs = [trial_spec(sweep, base, r["params"], "/x/exp", REPO) for r in [raw, *aligned]]
    splitting = [spec.train_as(PEMoETrainSpec).use_statements for spec in specs]
    assert splitting == ([False] * 4 if quickstart else [False, True, True, True])
    if quickstart:
        assert all(r["data"] == "prepared captions, preprocess.refine=rules" for r in aligned)
        assert {r["dataset"] for r in aligned} == {str(REPO / "runs/quickstart/prepared")}
    else:
        assert all(r["data"].startswith("refined captions (LLM refine stage)") for r in aligned)
        storage_root = os.environ.get("GEOMOE_STORAGE", "/data/geomoe")
        assert {r["dataset"] for r in aligned} == {f"{storage_root}/pe_moe_geotext/refined"}
    args = ["sweep", str(REPO / "search_spaces" / "pe_moe_ablation.yaml"), "--dry-run"]
    assert main(args + ["--quickstart"] * quickstart) == 0
    printed = capsys.readouterr().out
    trials = 4 * (len(sweep.seeds) or 1)  # the quickstart repeats each row with 3 seeds
    assert printed.count("- trial variant-") == trials and f"trains on: {raw['data']} at {raw['dataset']}" in printed


def test_seeds_are_more_trials_of_the_same_configuration() -> None:
    sweep, base = load_sweep(REPO / "search_spaces" / "smgeo_topk.yaml", quickstart=True)
    assert sweep.seeds == [0, 1, 2]  # the quickstart sweeps repeat every configuration 3 times
    plain, seeded = sweep.model_copy(update={"seeds": []}), sweep.model_copy(update={"seeds": [0, 1, 2]})
    points = grid_points(seeded)
    assert len(points) == 3 * len(grid_points(plain)) and points[:3] == [
        {"model.gmoe.top_k": 1, SEED: s} for s in (0, 1, 2)
    ]
    specs = [trial_spec(seeded, base, p, Path("/x"), REPO) for p in points[:3]]
    assert [s.seed for s in specs] == [0, 1, 2] and len({trial_key(p) for p in points}) == len(points)
    assert len({s.preprocess.output_dir for s in specs}) == 1  # every seed trains on the same prepared data
    with pytest.raises(SpecError, match="repeats a seed"):
        parse_spec(SweepSpec, {**seeded.model_dump(mode="json"), "seeds": [0, 0]}, "s.yaml")


def _write_trial(experiment: Path, point: dict, hits: np.ndarray, queries: str = "val-samples") -> None:
    """A finished trial as run_trial writes it: per-query values, then the result with its interval."""
    from geomoe.core.stats import intervals

    values = {"val_acc50": hits, "val_acc25": hits, "val_miou": hits / 2}
    run_dir = str(experiment / "trials" / trial_key(point))
    write_per_query(run_dir, values)
    metrics = {k: float(v.mean()) for k, v in values.items()} | {"params_M": 0.5}
    result = {"params": point, "status": "finished", "fingerprint": "f", "metrics": metrics}
    result |= {"intervals": intervals(values), "query_sets": dict.fromkeys(values, queries)}
    write_json_atomic(f"{run_dir}/{RESULT_FILE}", result)


def test_the_report_pools_seeds_and_gives_each_paper_row_a_verdict(tmp_path: Path) -> None:
    """Table III's top-k rows against ours, made to differ as the paper does (top-1 -> top-2 up), not at all
    (top-2 -> top-3, paper flat), against the paper (top-3 -> top-4: ours down, the paper flat) and not run."""
    sweep, base_path = load_sweep(REPO / "search_spaces" / "smgeo_topk.yaml", quickstart=True)
    sweep = sweep.model_copy(update={"seeds": [0, 1]})
    points = grid_points(sweep)
    expected = [trial_key(p) for p in points]
    claim_dir(tmp_path, Claim("output_root", "sweep", "sweep"))  # as run_sweep does
    scored_on = benchmark(load_job(base_path, list(sweep.overrides)))
    saved = {"sweep": sweep.model_dump(mode="json"), "expected": expected, "benchmark": scored_on}
    write_json_atomic(tmp_path / "sweep.json", saved)
    base = 100.0 * (np.random.default_rng(0).permutation(600) < 180)  # 30% hits
    better = base.copy()
    better[np.flatnonzero(base == 0)[:60]] = 100.0  # +10 points on the same queries
    per_k = {1: base, 2: better, 3: better, 4: base}  # top-5 not run
    for point in points:
        k = point["model.gmoe.top_k"]
        if k in per_k:
            hits = per_k[k].copy()
            if point[SEED] == 1:  # the second seed differs a little
                hits[np.flatnonzero(hits == 0)[:6]] = 100.0
            _write_trial(tmp_path, point, hits)
    text = write_report(tmp_path)
    lines = text.splitlines()
    # what ours is scored on stands under what the paper's rows are: here synthgeo against CVOGL DroneAerial val
    paper_line = lines.index(f"paper: {sweep.paper.source}")
    assert lines[paper_line + 1] == "ours: CVOGL DroneAerial: synthgeo's synthetic data at data/synthgeo-sweep/cvogl"
    trials = [line for line in lines if line.startswith("| ours |")]
    assert len(trials) == len(points) and "| 1 | 0 | 30.00 [" in trials[0]
    aggregate = [line for line in lines if line.startswith("| ours (seeds)")]
    assert len(aggregate) == 4 and aggregate[0].startswith("| ours (seeds) | 1 | 2 | 30.50 ± 0.71 [")
    cells = [[c.strip() for c in line.split("|")[1:-1]] for line in lines if line.startswith("| top-")]
    verdict = {c[0]: c[-1] for c in cells if len(c) == 6 and c[2] == "val_acc50"}
    assert verdict == {"top-2": "reproduced", "top-3": "inconclusive", "top-4": "not reproduced", "top-5": "not run"}
    assert "| top-2 | top-1 | val_acc50 | +0.55 | +10.00 [" in text
    assert sum(len(c) == 6 for c in cells) == 4 * 3  # every reported metric the paper rows publish
    assert "best: {'model.gmoe.top_k': 2} val_acc50 40.50 ± 0.71 over 2 seeds" in text
    csv_lines = (tmp_path / "report.csv").read_text().splitlines()
    assert sum(line.startswith("ours: mean of 2 seeds,") for line in csv_lines) == 4


def test_a_published_change_below_min_change_reads_as_no_change() -> None:
    """Table III: top-3 -> top-4 moves val_acc25 by +0.01 (85.25 -> 85.26), a rounding, not a claim. Ours up by 5
    points is then "not reproduced" (the paper shows no change), not "reproduced"."""
    from geomoe.core.sweep.tables import Configuration, verdicts

    sweep, _ = load_sweep(REPO / "search_spaces" / "smgeo_topk.yaml", quickstart=True)
    assert sweep.paper is not None and sweep.paper.min_change == 0.1
    hits = 100.0 * (np.arange(600) < 180)
    up = hits.copy()
    up[180:210] = 100.0  # +5 points on the same samples

    def config(k: int, values: np.ndarray) -> Configuration:
        trial = {"metrics": {"val_acc25": float(values.mean())}, "values": {"val_acc25": values}}
        return Configuration({"model.gmoe.top_k": k}, [trial])

    configs = [config(3, hits), config(4, up)]
    found = {e["metric"]: e for e in verdicts(sweep, configs) if e["row"] == "top-4"}
    assert found["val_acc25"]["paper_delta"] == 0.01 and found["val_acc25"]["verdict"] == "not reproduced"
    strict = sweep.model_copy(update={"paper": sweep.paper.model_copy(update={"min_change": 0.0})})
    found = {e["metric"]: e for e in verdicts(strict, configs) if e["row"] == "top-4"}
    assert found["val_acc25"]["verdict"] == "reproduced"


def test_values_of_different_queries_are_neither_pooled_nor_paired(tmp_path: Path) -> None:
    sweep, _ = load_sweep(REPO / "search_spaces" / "smgeo_topk.yaml", quickstart=True)
    sweep = sweep.model_copy(update={"seeds": [0, 1]})
    points = grid_points(sweep)[:4]  # top-1 and top-2, two seeds each
    expected = [trial_key(p) for p in points]
    claim_dir(tmp_path, Claim("output_root", "sweep", "sweep"))  # as run_sweep does
    write_json_atomic(tmp_path / "sweep.json", {"sweep": sweep.model_dump(mode="json"), "expected": expected})
    hits = 100.0 * (np.arange(100) < 30)
    for point, queries in zip(points, ["a", "b", "c", "c"], strict=True):  # top-1's seeds saw other samples
        _write_trial(tmp_path, point, hits, queries)
    text = write_report(tmp_path)
    aggregate = [line for line in text.splitlines() if line.startswith("| ours (seeds)")]
    assert "| 30.00 ± 0.00 |" in aggregate[0] and "| 30.00 ± 0.00 [" in aggregate[1]  # no pooled interval for top-1
    assert "| top-2 | top-1 | val_acc50 | +0.55 | - | no paired values |" in text


def test_a_finished_trial_reports_its_recorded_result_without_training(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune may restore a trial as unfinished when the sweep stopped right after the trial wrote its result: the
    trial then reports that file and trains nothing. A result of another job (an edited spec) is not reused."""
    import ray.tune

    import geomoe.on_ray.jobs
    import geomoe.on_ray.tune
    from geomoe.on_ray.tune import run_trial

    sweep, base = load_sweep(REPO / "search_spaces" / "smgeo_topk.yaml", quickstart=True)
    point = {"model.gmoe.top_k": 2}
    experiment = str(tmp_path / "exp")
    fingerprint = trial_spec(sweep, base, point, experiment, REPO).fingerprint()
    result_file = tmp_path / "exp" / "trials" / trial_key(point) / RESULT_FILE
    metrics = {"val_acc50": 12.5, "params_M": 0.5}
    finished = {"params": point, "status": "finished", "fingerprint": fingerprint, "metrics": metrics}
    write_json_atomic(result_file, finished)
    before = result_file.read_bytes()
    reported: list[dict] = []
    monkeypatch.setattr(ray.tune, "report", reported.append)

    def no_training(spec: object) -> None:
        raise AssertionError("the finished trial trained again")

    monkeypatch.setattr(geomoe.on_ray.jobs, "family_of", no_training)
    monkeypatch.setattr(geomoe.on_ray.tune.PreparedDataset, "open", lambda *args: None)  # no data: no training
    run = lambda: run_trial(point, sweep.model_dump(mode="json"), str(base), experiment, str(REPO))  # noqa: E731
    run()
    assert reported == [metrics] and result_file.read_bytes() == before
    stale = {"params": point, "status": "finished", "fingerprint": "another job", "metrics": metrics}
    write_json_atomic(result_file, stale)
    with pytest.raises(AssertionError, match="trained again"):
        run()
    assert "trained again" in json.loads(result_file.read_text())["error"]
