"""The sweep report (core, no Ray): our trials next to the paper's rows, as Markdown, CSV and one PNG per swept
parameter, written into the experiment folder.

Every expected trial appears: finished with its numbers, failed with its error, or "not run" when the sweep
stopped before it. A number is only ever one a trial reported; nothing is filled in.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from geomoe.core import ownership, storage
from geomoe.core.config import SweepSpec
from geomoe.core.errors import ExperimentError
from geomoe.core.stats import (
    Difference,
    format_interval,
    format_spread,
    interval,
    mean_std,
    paired_difference,
    pooled_over_seeds,
    seeded_difference,
    verdict,
)
from geomoe.core.sweep import SEED, VARIANT

RESULT_FILE = "trial_result.json"
PER_QUERY_FILE = "per_query.npz"  # beside the result: each query's value of each metric (for pooling and pairing)
SIZE_COLUMNS = ("params_M",)


def write_per_query(run_dir: str, values: dict[str, np.ndarray]) -> None:
    """Write a trial's per-query values (metric -> array) as a compressed .npz (no pickles inside)."""
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {k: np.asarray(v, dtype=np.float64) for k, v in values.items()}
    np.savez_compressed(buffer, **arrays)
    storage.write_bytes_atomic(storage.join(run_dir, PER_QUERY_FILE), buffer.getvalue())


def read_per_query(run_dir: str) -> dict[str, np.ndarray]:
    """A trial's per-query values; {} for a trial that recorded none."""
    location = storage.join(run_dir, PER_QUERY_FILE)
    if not storage.is_file(location):
        return {}
    with np.load(io.BytesIO(storage.read_bytes(location)), allow_pickle=False) as saved:
        return {k: saved[k] for k in saved.files}


def trial_results(experiment: str) -> dict[str, dict[str, Any]]:
    """trial key -> its recorded outcome (trials/<key>/trial_result.json), at a path or URI."""
    trials = storage.join(experiment, "trials")
    found = [rel for rel, _ in storage.list_files(trials) if rel.count("/") == 1 and rel.endswith(f"/{RESULT_FILE}")]
    return {rel.split("/")[0]: dict(storage.read_json(storage.join(trials, rel))) for rel in found}


def report_rows(experiment: str) -> tuple[SweepSpec, list[dict[str, Any]]]:
    """(sweep, rows): one row per expected (grid) or recorded trial, in the sweep's order; a finished trial's
    row carries its per-query values under "values"."""
    return _rows(experiment, _saved_sweep(experiment))


def _saved_sweep(experiment: str) -> dict[str, Any]:
    saved = storage.read_json_if_exists(storage.join(experiment, "sweep.json"))
    if saved is None:
        raise ExperimentError(
            f"{storage.redact(experiment)}: no sweep.json here; give the folder a sweep wrote (runs/sweeps/NAME)"
        )
    return dict(saved)


def _rows(experiment: str, saved: dict[str, Any]) -> tuple[SweepSpec, list[dict[str, Any]]]:
    sweep = SweepSpec.model_validate(saved["sweep"])
    recorded = trial_results(experiment)
    keys = list(saved["expected"]) + [k for k in recorded if k not in saved["expected"]]
    rows = []
    for key in keys:
        outcome = recorded.get(key, {"status": "not run"})
        row = {"trial": key, **outcome}
        if row["status"] == "finished":
            row["values"] = read_per_query(storage.join(experiment, "trials", key))
        rows.append(row)
    return sweep, rows


def _params_of(sweep: SweepSpec) -> list[str]:
    return ([VARIANT] if sweep.variants else []) + list(sweep.params)


def _columns(sweep: SweepSpec) -> list[str]:
    """The trial table's parameter columns: the swept ones, and the seed when the sweep repeats seeds."""
    return _params_of(sweep) + ([SEED] if sweep.seeds else [])


def _cell(value: Any) -> str:
    return f"{value:.2f}" if isinstance(value, float) else str(value)


def markdown_table(sweep: SweepSpec, rows: list[dict[str, Any]]) -> str:
    """Every trial (a metric as ``mean [lo, hi]``, its 95% bootstrap interval over queries, where it has per-query
    values), then the paper's rows."""
    params, metrics = _columns(sweep), [*sweep.report_metrics, *SIZE_COLUMNS]
    head = ["source", *params, *metrics, "status"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        values = row.get("params") or {}
        got, bounds = row.get("metrics") or {}, row.get("intervals") or {}
        status = row["status"] if row["status"] != "failed" else f"failed: {row.get('error', '?')[:120]}"
        cells = ["ours", *[_cell(values.get(p, "")) for p in params]]
        cells += [format_interval(got[m], bounds.get(m)) if m in got else "-" for m in metrics] + [status]
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    for paper in sweep.paper.rows if sweep.paper else []:
        cells = [f"paper: {paper.label}", *[_cell(paper.params.get(p, "")) for p in params]]
        cells += [_cell(paper.metrics[m]) if m in paper.metrics else "-" for m in metrics] + ["published"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def paper_notes(sweep: SweepSpec) -> list[str]:
    """The caveats on published rows, one line each (the numbers are quoted as printed, never corrected)."""
    return [f"note on paper: {row.label}: {row.note}" for row in (sweep.paper.rows if sweep.paper else []) if row.note]


@dataclass
class Configuration:
    """The finished trials of one configuration (the swept values less the seed)."""

    params: dict[str, Any]
    trials: list[dict[str, Any]] = field(default_factory=list)

    def metric(self, name: str) -> tuple[float, float] | None:
        """Mean and std over the seeds that report ``name``."""
        got = [t["metrics"][name] for t in self.trials if name in t["metrics"]]
        return mean_std(got) if got else None

    def query_set(self, name: str) -> str | None:
        """The fingerprint of the queries behind ``name``'s per-query values (None when the family records none;
        "differ" when the seeds' differ)."""
        sets = {(t.get("query_sets") or {}).get(name) for t in self.trials}
        return sets.pop() if len(sets) == 1 else "differ"

    def pooled(self, name: str) -> np.ndarray | None:
        """Per-query values averaged over the seeds (None without values, or when the seeds' queries differ)."""
        arrays = [t.get("values", {}).get(name) for t in self.trials]
        return pooled_over_seeds(arrays, [(t.get("query_sets") or {}).get(name) for t in self.trials])

    def seed_values(self, name: str) -> np.ndarray | None:
        """(seeds, queries) values of ``name``, one row per seed (None as for ``pooled``)."""
        if self.pooled(name) is None:
            return None
        return np.stack([np.asarray(t["values"][name], dtype=np.float64) for t in self.trials])

    def matches(self, wanted: dict[str, Any]) -> bool:
        return all(self.params.get(k) == v for k, v in wanted.items())


def configurations(sweep: SweepSpec, rows: list[dict[str, Any]]) -> list[Configuration]:
    """Finished trials grouped by their values less the seed, in the sweep's order."""
    groups: dict[str, Configuration] = {}
    for row in rows:
        if row["status"] != "finished":
            continue
        params = {k: v for k, v in (row.get("params") or {}).items() if k != SEED}
        key = json.dumps(params, sort_keys=True, default=str)
        groups.setdefault(key, Configuration(params)).trials.append(row)
    return list(groups.values())


def aggregate_table(sweep: SweepSpec, configs: list[Configuration]) -> str:
    """One row per configuration: ``mean ± std`` over its seeds and the pooled 95% interval (the bootstrap over
    queries of each query's value averaged over the seeds)."""
    params, metrics = _params_of(sweep), [*sweep.report_metrics, *SIZE_COLUMNS]
    head = ["source", *params, "seeds", *metrics]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for config in configs:
        cells = ["ours (seeds)", *[_cell(config.params.get(p, "")) for p in params], str(len(config.trials))]
        for m in metrics:
            summary, pooled = config.metric(m), config.pooled(m)
            if summary is None:
                cells.append("-")
                continue
            cells.append(format_spread(*summary, None if pooled is None else interval(pooled)))
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def compare(a: Configuration, b: Configuration, metric: str) -> Difference | None:
    """a - b on ``metric``, paired over the same queries; None without per-query values of the same query set.
    With two or more seeds a side the interval counts the spread between seeds too (``stats.seeded_difference``);
    with one seed a side it cannot, and is the paired bootstrap over queries of the seed-averaged values."""
    va, vb = a.seed_values(metric), b.seed_values(metric)
    if va is None or vb is None or va.shape[1] != vb.shape[1] or a.query_set(metric) != b.query_set(metric):
        return None
    if min(len(va), len(vb)) >= 2:
        return seeded_difference(va, vb)
    return paired_difference(va.mean(axis=0), vb.mean(axis=0))


def verdicts(sweep: SweepSpec, configs: list[Configuration]) -> list[dict[str, Any]]:
    """Each paper row after the first against the row before it, on the sweep's metric and then every other
    reported metric both rows publish: the paper's change, ours with its paired 95% interval, and "reproduced",
    "not reproduced" or "inconclusive". Only the sweep spec's paper numbers are used; a row whose configuration
    did not finish gets "not run"."""
    rows = sweep.paper.rows if sweep.paper else []
    min_change = sweep.paper.min_change if sweep.paper else 0.0
    metrics = [sweep.metric, *[m for m in sweep.report_metrics if m != sweep.metric]]
    out = []
    for before, row in itertools.pairwise(rows):
        a = [c for c in configs if c.matches(row.params)]
        b = [c for c in configs if c.matches(before.params)]
        for metric in metrics:
            if metric not in row.metrics or metric not in before.metrics:
                continue
            paper_delta = row.metrics[metric] - before.metrics[metric]
            entry: dict[str, Any] = {"row": row.label, "previous": before.label, "metric": metric}
            entry["paper_delta"] = round(paper_delta, 2)
            found = compare(a[0], b[0], metric) if len(a) == 1 and len(b) == 1 else None
            if found is None:
                entry |= {"ours": None, "verdict": "not run" if not (a and b) else "no paired values"}
            else:
                claimed = paper_delta if abs(paper_delta) >= min_change else 0.0  # a rounding-level change: none
                entry |= {"ours": found, "verdict": verdict(claimed, found)}
            out.append(entry)
    return out


_DIFFERENCE_NOTE = {
    True: "ours Δ: 95% interval over queries and seeds (paired over queries; each side's spread between seeds "
    "added; Student's t)",
    False: "ours Δ with †: 95% paired bootstrap over queries only: one seed a side cannot show training randomness, "
    "so a verdict can be a difference between two trainings (geomoe calibrate measures how often)",
}


def verdict_table(entries: list[dict[str, Any]]) -> str:
    lines = ["| paper row | against | metric | paper Δ | ours Δ [95% paired] | verdict |", "|---|---|---|---|---|---|"]
    for e in entries:
        ours = "-" if e["ours"] is None else str(e["ours"]) + ("" if e["ours"].with_seeds else " †")
        cells = [e["row"], e["previous"], e["metric"], f"{e['paper_delta']:+.2f}", ours, e["verdict"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def best_configuration(sweep: SweepSpec, configs: list[Configuration]) -> Configuration | None:
    """The configuration with the best mean of the sweep's metric over its seeds."""
    done = [c for c in configs if c.metric(sweep.metric) is not None]
    if not done:
        return None
    sign = 1 if sweep.mode == "max" else -1
    return max(done, key=lambda c: sign * c.metric(sweep.metric)[0])  # type: ignore[index]


def _bounds(pooled: np.ndarray | None) -> list[Any]:
    return list(interval(pooled)) if pooled is not None else ["", ""]


def _error(pooled: np.ndarray | None, mean: float) -> tuple[float, float]:
    """Error bar lengths (below, above) of ``mean`` from the pooled interval (none without per-query values)."""
    if pooled is None:
        return 0.0, 0.0
    lo, hi = interval(pooled)
    return max(0.0, mean - lo), max(0.0, hi - mean)


def csv_text(sweep: SweepSpec, rows: list[dict[str, Any]], configs: list[Configuration]) -> str:
    """Every trial, every configuration over its seeds (mean, std, pooled interval) and the paper's rows; each
    metric with its _lo and _hi columns (the 95% interval)."""
    params, metrics = _columns(sweep), [*sweep.report_metrics, *SIZE_COLUMNS]
    out = io.StringIO()
    writer = csv.writer(out)
    metric_head = [f"{m}{suffix}" for m in metrics for suffix in ("", "_lo", "_hi", "_std")]
    writer.writerow(["source", "trial", *params, *metric_head, "status", "error"])
    for row in rows:
        values, got, bounds = row.get("params") or {}, row.get("metrics") or {}, row.get("intervals") or {}
        cells = [cell for m in metrics for cell in (got.get(m, ""), *(bounds.get(m) or ["", ""]), "")]
        named = [json.dumps(values[p]) if p in values else "" for p in params]
        writer.writerow(["ours", row["trial"], *named, *cells, row["status"], row.get("error", "")])
    for config in configs:
        cells = []
        for m in metrics:
            summary = config.metric(m)
            cells += [summary[0], *_bounds(config.pooled(m)), summary[1]] if summary else ["", "", "", ""]
        seeds = len(config.trials)
        named = [json.dumps(config.params[p]) if p in config.params else "" for p in params]
        writer.writerow([f"ours: mean of {seeds} seeds", "", *named, *cells, "finished", ""])
    for paper in sweep.paper.rows if sweep.paper else []:
        cells = [cell for m in metrics for cell in (paper.metrics.get(m, ""), "", "", "")]
        named = [json.dumps(paper.params[p]) if p in paper.params else "" for p in params]
        writer.writerow([f"paper: {paper.label}", "", *named, *cells, "published", ""])
    return out.getvalue()


def plot_parameter(sweep: SweepSpec, configs: list[Configuration], param: str, path: str) -> None:
    """The sweep metric against one swept parameter: ours (the mean over seeds, with the pooled 95% interval as
    error bars), and the paper's rows."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    done = [(c, c.metric(sweep.metric)) for c in configs if param in c.params]
    ours = [(c.params[param], summary[0], _error(c.pooled(sweep.metric), summary[0])) for c, summary in done if summary]
    published = [
        p for p in (sweep.paper.rows if sweep.paper else []) if param in p.params and sweep.metric in p.metrics
    ]
    paper = [(p.params[param], p.metrics[sweep.metric], (0.0, 0.0)) for p in published]
    for points, label, marker in ((ours, "ours", "o"), (paper, "paper", "s")):
        if not points:
            continue
        xs = [str(x) for x, _, _ in points] if any(isinstance(x, str | list) for x, _, _ in points) else None
        ys = [y for _, y, _ in points]
        errors = [[e[0] for _, _, e in points], [e[1] for _, _, e in points]]
        ax.errorbar(xs or [x for x, _, _ in points], ys, yerr=errors, marker=marker, label=label, capsize=3)
    ax.set_xlabel(param)
    ax.set_ylabel(sweep.metric)
    ax.set_title(sweep.name)
    ax.legend()
    fig.tight_layout()
    with storage.atomic_path(path, ".png") as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def write_report(experiment: str) -> str:
    """Write report.md, report.csv and plot-<param>.png into ``experiment`` (a sweep's own folder: they replace
    only geomoe's files); return the Markdown."""
    saved = _saved_sweep(experiment)
    ownership.check_dir(experiment, ownership.Claim("experiment", stage="sweep"))  # the sweep's own folder
    sweep, rows = _rows(experiment, saved)
    configs = configurations(sweep, rows)
    text = _markdown(sweep, rows, configs, saved.get("benchmark"))
    storage.write_text_atomic(storage.join(experiment, "report.md"), text)
    storage.write_text_atomic(storage.join(experiment, "report.csv"), csv_text(sweep, rows, configs))
    for param in _params_of(sweep):
        plot_parameter(sweep, configs, param, storage.join(experiment, f"plot-{param.replace('.', '_')}.png"))
    return text


def report_markdown(experiment: str) -> str:
    """The report's Markdown from a sweep's files, writing nothing (docs/sweeps.md's tables are this, tested)."""
    saved = _saved_sweep(experiment)
    sweep, rows = _rows(experiment, saved)
    return _markdown(sweep, rows, configurations(sweep, rows), saved.get("benchmark"))


def _markdown(sweep: SweepSpec, rows: list[dict[str, Any]], configs: list[Configuration], benchmark: str | None) -> str:
    counts = {s: sum(r["status"] == s for r in rows) for s in ("finished", "failed", "not run")}
    lines = [f"# Sweep {sweep.name}", "", f"trials: {counts}; metric {sweep.metric} ({sweep.mode})"]
    lines += ["intervals: 95% percentile bootstrap over the test (val_*: validation) queries, 1,000 resamples", ""]
    if sweep.paper:
        lines += [f"paper: {sweep.paper.source}"]
        recorded = (
            f"ours: {benchmark}" if benchmark else "ours: (the benchmark was not recorded: a sweep from before it was)"
        )
        lines += [recorded, ""]
    lines += [markdown_table(sweep, rows), ""]
    lines += [*paper_notes(sweep), ""] if paper_notes(sweep) else []
    if sweep.seeds:
        lines += [f"over seeds {sweep.seeds}: mean ± std [pooled 95% interval]", ""]
        lines += [aggregate_table(sweep, configs), ""]
    entries = verdicts(sweep, configs)
    if entries:
        lines += [f"verdicts: each paper row against the row before it ({sweep.metric} first)"]
        kinds = {e["ours"].with_seeds for e in entries if e["ours"] is not None}
        lines += [_DIFFERENCE_NOTE[kind] for kind in sorted(kinds, reverse=True)] + [""]
        lines += [verdict_table(entries), ""]
    best = best_configuration(sweep, configs)
    if best is None:
        lines.append("best: none")
    else:
        mean, std = best.metric(sweep.metric)  # type: ignore[misc]
        spread = f" ± {std:.2f} over {len(best.trials)} seeds" if len(best.trials) > 1 else ""
        lines.append(f"best: {best.params} {sweep.metric} {mean:.2f}{spread}")
    return "\n".join(lines) + "\n"
