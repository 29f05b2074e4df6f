"""`geomoe calibrate` at reduced size through the real CLI on Ray Tune: one mechanism, textual domain alignment
(captions refined by the rules against raw captions), on its planted world (verbose generic training captions) and
its null world (training captions already worded like the queries). The sweep must see the planted effect and
stay quiet on the null world. The calibration's full table (three mechanisms, seeds, A/A) is in the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SWEEP = f"""
name: tiny_calibration
base: {REPO / "jobs" / "quickstart.yaml"}
output_root: runs/sweeps
overrides:
  - data.synthesize.train_buildings=96
  - data.synthesize.test_buildings=16
  - eval.rerank=[]
  - baselines={{}}
  - train.stage1_epochs=4
  - train.stage2_epochs=0
  - resources.num_cpus=4
variants:
  raw: [preprocess.refine=none]
  aligned: [preprocess.refine=rules]
metric: R@10
report_metrics: [R@10]
max_concurrent: 2
paper:
  source: "PE-MoE Table 1, rows 1-2, the alignment step alone (both rows here have the satellite augmentation)"
  rows:
    - {{label: raw, params: {{variant: raw}}, metrics: {{R@10: 42.01}}}}
    - {{label: aligned, params: {{variant: aligned}}, metrics: {{R@10: 53.22}}}}
calibration:
  aa_seeds: []
  mechanisms:
    - {{name: alignment, row: aligned, knob: data.synthesize.planted.caption_gap, planted: 1.0, unplanted: 0.0}}
"""


def test_calibration_sees_a_planted_effect_and_no_effect_where_none_is_planted(tmp_path: Path) -> None:
    (tmp_path / "tiny_calibration.yaml").write_text(SWEEP)
    env = {**os.environ, "RAY_AUTH_MODE": "disabled"}
    done = subprocess.run(
        [sys.executable, "-m", "geomoe.cli", "calibrate", "tiny_calibration.yaml"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    folder = tmp_path / "runs" / "sweeps" / "tiny_calibration-calibration"
    result = json.loads((folder / "calibration.json").read_text())
    verdicts = {(e["world"], e["comparison"], e["metric"]): e for e in result["entries"]}
    assert set(verdicts) == {("planted", "mechanism", "R@10"), ("null", "mechanism", "R@10")}
    planted, null = verdicts["planted", "mechanism", "R@10"], verdicts["null", "mechanism", "R@10"]
    assert planted["verdict"] == "reproduced" and planted["ours"]["lo"] > 0, planted
    assert null["verdict"] == "inconclusive", null
    rates = result["summary"]
    assert (rates["power"]["count"], rates["power"]["of"]) == (1, 1)
    assert (rates["null_detections"]["count"], rates["null_detections"]["of"]) == (0, 1)
    assert rates["false_alarms"]["of"] == 0  # no A/A seeds here
    assert (folder / "calibration.md").read_text() in done.stdout  # the table printed is the one written
    # both worlds were generated as planted: the null world's training captions read like its test queries
    worlds = sorted(p.name for p in (tmp_path / "data" / "calibration" / "tiny_calibration").iterdir())
    assert worlds == [f"caption_gap-{g}_platform_conflict-0_query_platform_cue-1" for g in (0, 1)]
