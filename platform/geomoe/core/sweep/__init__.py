"""Sweeps (core, no Ray): a SweepSpec's trials as job specs, and the flat metrics a trial reports.

A trial is the sweep's base job + its overrides + the trial's variant (a named override set) + its parameter
values. Its folder is named by its values, so a rerun of the same values finds its recorded training stages.
The Ray Tune layer is geomoe.on_ray.tune; the report (ours next to the paper's rows) is geomoe.core.sweep.tables.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from geomoe.core import storage
from geomoe.core.config import JobSpec, SweepSpec, load_job, load_yaml, parse_spec
from geomoe.core.config.parsing import apply_overrides
from geomoe.core.errors import SpecError

VARIANT = "variant"  # the parameter name a sweep's variants are swept under
SEED = "seed"  # the parameter name a sweep's seeds are swept under (the job's top-level seed)


def load_sweep(path: str | Path, quickstart: bool = False, overrides: Sequence[str] = ()) -> tuple[SweepSpec, Path]:
    """(spec, base job path); ``quickstart`` swaps in the sweep's 2-core variant (name suffixed -quickstart);
    ``overrides`` (``--set`` on the command line) are applied to the base job after the sweep's own."""
    path = Path(path)
    sweep = parse_spec(SweepSpec, load_yaml(path), str(path))
    if quickstart:
        if sweep.quickstart is None:
            raise SpecError(str(path), "quickstart", "this sweep has no quickstart variant")
        q = sweep.quickstart
        raw = sweep.model_dump(mode="json", exclude={"quickstart"})
        raw.update(name=f"{sweep.name}-quickstart", base=q.base, overrides=q.overrides)
        raw.update(q.model_dump(mode="json", exclude_none=True, exclude={"base", "overrides"}))
        sweep = parse_spec(SweepSpec, raw, f"{path} (quickstart)")
    if overrides:
        sweep = sweep.model_copy(update={"overrides": [*sweep.overrides, *overrides]})
    return sweep, (path.parent / sweep.base).resolve()


def experiment_location(sweep: SweepSpec, root: Path) -> str:
    """Where a sweep's experiment lives: <output_root>/<name>, relative paths resolved against ``root``."""
    return storage.absolute(storage.join(sweep.output_root, sweep.name), root)


def grid_points(sweep: SweepSpec) -> list[dict[str, Any]]:
    """Every trial's values of a grid sweep (variants x grid values x seeds), in a stable order."""
    axes: dict[str, list[Any]] = {VARIANT: list(sweep.variants)} if sweep.variants else {}
    axes.update({k: list(p.grid or []) for k, p in sweep.params.items()})
    if sweep.seeds:
        axes[SEED] = list(sweep.seeds)
    return [dict(zip(axes, values, strict=True)) for values in itertools.product(*axes.values())]


def ordered_point(sweep: SweepSpec, config: dict[str, Any]) -> dict[str, Any]:
    """A trial's values in the sweep's order (variant first, then params as written, then the seed): its key's
    order."""
    order = ([VARIANT] if sweep.variants else []) + list(sweep.params) + ([SEED] if sweep.seeds else [])
    return {k: config[k] for k in order if k in config}


def trial_key(point: dict[str, Any]) -> str:
    """A folder name for a trial's values: readable, and unique through a short hash."""
    readable = "_".join(f"{k.split('.')[-1]}-{v}" for k, v in point.items() if not isinstance(v, list | dict))
    digest = hashlib.sha256(json.dumps(point, sort_keys=True, default=str).encode()).hexdigest()[:8]
    safe = "".join(c if c.isalnum() or c in "._-" else "-" for c in readable)[:80]
    return f"{safe}_{digest}" if safe else digest


def trial_overrides(sweep: SweepSpec, point: dict[str, Any]) -> list[str]:
    overrides = list(sweep.overrides)
    if VARIANT in point:
        overrides += sweep.variants[point[VARIANT]]
    overrides += [f"{k}={json.dumps(v)}" for k, v in point.items() if k != VARIANT]
    return overrides


def _job_with(base_path: Path, overrides: list[str]) -> JobSpec:
    """The base job with ``overrides``; overrides that remove the refine section (``refine=null``: a row without
    textual domain alignment) remove its stage too."""
    raw = apply_overrides(load_yaml(base_path), overrides, str(base_path))
    stages = raw.get("stages")
    if raw.get("refine") is None and isinstance(stages, list) and "refine" in stages:
        overrides = [*overrides, f"stages={json.dumps([s for s in stages if s != 'refine'])}"]
    return load_job(base_path, overrides)


def trial_spec(sweep: SweepSpec, base_path: Path, point: dict[str, Any], experiment_dir: str, root: Path) -> JobSpec:
    """The trial's job: trained under <experiment>/trials/<key>; a variant that prepares (or refines) differently
    from the base job gets its own prepared (refined) folder, <base folder>-<variant>, as a job's baselines do.
    Relative paths resolve against ``root`` (where the sweep was started; Tune runs trials in other folders)."""
    base = _job_with(base_path, list(sweep.overrides)).with_absolute_paths(root)
    spec = _job_with(base_path, trial_overrides(sweep, point)).with_absolute_paths(root)
    raw = spec.model_dump(mode="json")
    raw.update(name=trial_key(point), output_root=storage.join(experiment_dir, "trials"), baselines={}, seeds=[])
    raw["stages"] = [s for s in spec.stages if s == "train"]
    suffix = point.get(VARIANT, trial_key(point))
    if spec.preprocess != base.preprocess:
        raw["preprocess"]["output_dir"] = f"{base.preprocess.output_dir}-{suffix}"
    if spec.refine is not None and (spec.preprocess != base.preprocess or spec.refine != base.refine):
        raw["refine"]["output_dir"] = f"{spec.refine.output_dir}-{suffix}"
    return parse_spec(JobSpec, raw, f"{sweep.name}: trial {point}")


def benchmark(job: JobSpec) -> str:
    """What a sweep's trials are scored on, printed in the report next to the paper's source: a paper row measured
    on another benchmark (PE-MoE Table 1 on the Track 4 leaderboard's test data, ours on GeoText-1652's test split)
    says so there."""
    data = job.data
    layout = (
        f"GeoText-1652 layout, test file {data.test_file}"
        if data.format == "geotext"
        else f"CVOGL {data.cvogl_setting}"
    )
    origin = "synthgeo's synthetic data" if data.synthesize else "the dataset's files"
    return f"{layout}: {origin} at {storage.redact(data.root)}"


def trial_dataset(spec: JobSpec) -> str:
    """Where a trial's training data are: the refined captions when its job refines (the driver refines once per
    distinct refinement before any trial), else the prepared table."""
    return spec.refine.output_dir if spec.refine is not None else spec.preprocess.output_dir


def describe_trials(sweep: SweepSpec, base_path: Path, experiment_dir: str, root: Path) -> list[dict[str, Any]]:
    """What each trial of a grid sweep would run (``geomoe sweep --dry-run``): its key, values, overrides and
    training data; a searcher's trials are drawn at run time, so it gets one row for the space."""
    rows = []
    for point in grid_points(sweep) if sweep.searcher == "grid" else [{}]:
        row: dict[str, Any] = {"trial": trial_key(point) if point else "(drawn by the searcher)", "params": point}
        row["overrides"] = trial_overrides(sweep, point)
        try:
            spec = trial_spec(sweep, base_path, point, experiment_dir, root)
        except SpecError as err:
            rows.append({**row, "error": str(err)})
            continue
        kind = "refined captions (LLM refine stage)" if spec.refine is not None else "prepared captions"
        kind += f", preprocess.refine={spec.preprocess.refine}"
        row.update(dataset=trial_dataset(spec), data=kind, prepared=spec.preprocess.output_dir)
        rows.append(row)
    return rows


def _searched(name: str, search: Any) -> str:
    for kind in ("grid", "choice", "uniform", "loguniform"):
        values = getattr(search, kind)
        if values is not None:
            shown = f"[{values[0]}, {values[1]}]" if kind in ("uniform", "loguniform") else json.dumps(list(values))
            return f"{name}: {kind} {shown}"
    return name


def trial_count(sweep: SweepSpec) -> int:
    """How many trials the sweep runs: the grid's points times its samples, or the searcher's samples."""
    return len(grid_points(sweep)) * sweep.num_samples if sweep.searcher == "grid" else sweep.num_samples


def search_summary(sweep: SweepSpec, base_path: Path) -> list[str]:
    """``--dry-run``'s header: how many trials, at most how many at once, what one trial asks of the cluster
    (from the base job's resources), what is searched and what the trials are ranked by."""
    if sweep.searcher == "grid":
        points = len(grid_points(sweep))
        count = f"{trial_count(sweep)} trials (the grid's {points} points x {sweep.num_samples} sample(s))"
    else:
        count = f"{sweep.num_samples} trials drawn by {sweep.searcher}"
    lines = [f"  {count}, at most {sweep.max_concurrent} at once; ranked by {sweep.metric} ({sweep.mode})"]
    try:
        res = load_job(base_path, list(sweep.overrides)).resources
    except SpecError as err:
        lines.append(f"  each trial: the base job is not valid: {err}")
    else:
        gpus = f", {res.num_workers} GPU(s)" if res.use_gpu else ", no GPU"
        lines.append(
            f"  each trial: {sweep.trial_cpus} CPU for its driver + {res.num_workers} Train worker(s) x "
            f"{res.cpus_per_worker} CPU{gpus}; Ray Data decoding up to {res.data_concurrency} task(s); "
            f"Ray: {res.address or 'a local cluster started here'}"
        )
    searched = [_searched(name, search) for name, search in sweep.params.items()]
    if sweep.variants:
        searched.insert(0, f"variant: {list(sweep.variants)}")
    if sweep.seeds:
        searched.append(f"seed: {sweep.seeds}")
    lines.append(f"  searched: {'; '.join(searched) or '(nothing: one configuration)'}")
    return lines
