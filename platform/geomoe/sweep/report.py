"""The sweep report (core, no Ray): our trials next to the paper's rows, as Markdown, CSV and one PNG per swept
parameter, written into the experiment folder.

Every expected trial appears: finished with its numbers, failed with its error, or "not run" when the sweep
stopped before it. A number is only ever one a trial reported; nothing is filled in.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any

from geomoe import storage
from geomoe.config import SweepSpec
from geomoe.errors import ExperimentError
from geomoe.sweep import VARIANT

RESULT_FILE = "trial_result.json"
SIZE_COLUMNS = ("params_M",)


def trial_results(experiment: str) -> dict[str, dict[str, Any]]:
    """trial key -> its recorded outcome (trials/<key>/trial_result.json), at a path or URI."""
    trials = storage.join(experiment, "trials")
    found = [rel for rel, _ in storage.list_files(trials) if rel.count("/") == 1 and rel.endswith(f"/{RESULT_FILE}")]
    return {rel.split("/")[0]: dict(storage.read_json(storage.join(trials, rel))) for rel in found}


def report_rows(experiment: str) -> tuple[SweepSpec, list[dict[str, Any]]]:
    """(sweep, rows): one row per expected (grid) or recorded trial, in the sweep's order."""
    saved = storage.read_json_if_exists(storage.join(experiment, "sweep.json"))
    if saved is None:
        raise ExperimentError(
            f"{storage.redact(experiment)}: no sweep.json here; give the folder a sweep wrote (runs/sweeps/NAME)"
        )
    sweep = SweepSpec.model_validate(saved["sweep"])
    recorded = trial_results(experiment)
    keys = list(saved["expected"]) + [k for k in recorded if k not in saved["expected"]]
    rows = []
    for key in keys:
        outcome = recorded.get(key, {"status": "not run"})
        rows.append({"trial": key, **outcome})
    return sweep, rows


def _params_of(sweep: SweepSpec) -> list[str]:
    return ([VARIANT] if sweep.variants else []) + list(sweep.params)


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(sweep: SweepSpec, rows: list[dict[str, Any]]) -> str:
    params, metrics = _params_of(sweep), [*sweep.report_metrics, *SIZE_COLUMNS]
    head = ["source", *params, *metrics, "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = row.get("params") or {}
        got = row.get("metrics") or {}
        status = row["status"] if row["status"] != "failed" else f"failed: {row.get('error', '?')[:120]}"
        cells = ["ours", *[_cell(values.get(p, "")) for p in params]]
        cells += [_cell(got[m]) if m in got else "-" for m in metrics] + [status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    for paper in sweep.paper.rows if sweep.paper else []:
        cells = [f"paper: {paper.label}", *[_cell(paper.params.get(p, "")) for p in params]]
        cells += [_cell(paper.metrics[m]) if m in paper.metrics else "-" for m in metrics] + ["published"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_trial(sweep: SweepSpec, rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    done = [r for r in rows if r["status"] == "finished" and sweep.metric in r.get("metrics", {})]
    if not done:
        return None
    sign = 1 if sweep.mode == "max" else -1
    return max(done, key=lambda r: sign * r["metrics"][sweep.metric])


def csv_text(sweep: SweepSpec, rows: list[dict[str, Any]]) -> str:
    params, metrics = _params_of(sweep), [*sweep.report_metrics, *SIZE_COLUMNS]
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["source", "trial", *params, *metrics, "status", "error"])
    for row in rows:
        values, got = row.get("params") or {}, row.get("metrics") or {}
        writer.writerow(
            ["ours", row["trial"], *[json.dumps(values[p]) if p in values else "" for p in params]]
            + [got.get(m, "") for m in metrics]
            + [row["status"], row.get("error", "")]
        )
    for paper in sweep.paper.rows if sweep.paper else []:
        writer.writerow(
            [f"paper: {paper.label}", "", *[json.dumps(paper.params[p]) if p in paper.params else "" for p in params]]
            + [paper.metrics.get(m, "") for m in metrics]
            + ["published", ""]
        )
    return out.getvalue()


def plot_parameter(sweep: SweepSpec, rows: list[dict[str, Any]], param: str, path: str) -> None:
    """The sweep metric against one swept parameter: our finished trials, and the paper's rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    done = [r for r in rows if r["status"] == "finished" and sweep.metric in r["metrics"] and param in r["params"]]
    ours = [(r["params"][param], r["metrics"][sweep.metric]) for r in done]
    published = [
        p for p in (sweep.paper.rows if sweep.paper else []) if param in p.params and sweep.metric in p.metrics
    ]
    paper = [(p.params[param], p.metrics[sweep.metric]) for p in published]
    for points, label, marker in ((ours, "ours", "o"), (paper, "paper", "s")):
        if points:
            xs = [str(x) for x, _ in points] if any(isinstance(x, str | list) for x, _ in points) else None
            ax.plot(xs or [x for x, _ in points], [y for _, y in points], marker=marker, label=label)
    ax.set_xlabel(param)
    ax.set_ylabel(sweep.metric)
    ax.set_title(sweep.name)
    ax.legend()
    fig.tight_layout()
    with storage.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(experiment: str) -> str:
    """Write report.md, report.csv and plot-<param>.png into ``experiment``; return the Markdown."""
    sweep, rows = report_rows(experiment)
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "not run")}
    best = best_trial(sweep, rows)
    lines = [f"# Sweep {sweep.name}", "", f"trials: {counts}; metric {sweep.metric} ({sweep.mode})", ""]
    if sweep.paper:
        lines += [f"paper: {sweep.paper.source}", ""]
    lines += [markdown_table(sweep, rows), ""]
    best_line = f"best: {best['params']} {sweep.metric} {best['metrics'][sweep.metric]:.2f}" if best else "best: none"
    lines.append(best_line)
    text = "\n".join(lines) + "\n"
    storage.write_text_atomic(storage.join(experiment, "report.md"), text)
    storage.write_text_atomic(storage.join(experiment, "report.csv"), csv_text(sweep, rows))
    for param in _params_of(sweep):
        plot_parameter(sweep, rows, param, storage.join(experiment, f"plot-{param.replace('.', '_')}.png"))
    return text
