"""Run a JobSpec's stages (geomoe.core.stages) in order on the Ray cluster the spec names (or a local one).

The runners of the stages every job may have (synth, prepare, refine, caption, train) are here; a family's own
stages (PE-MoE's index and Track 4 submission) have theirs in its folder. Preconditions between stages were
checked when the spec was validated; what can only be checked at run time (a prepared folder from an earlier run)
is checked before the stage that needs it.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

from geomoe.core import lease, ownership, registry, storage, tracking
from geomoe.core.config import EngineSpec, JobSpec
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.job_results import BY_SEED, JobResults
from geomoe.core.progress import Progress, StageBar
from geomoe.core.stages import StageContext, job_stages, listed_stages
from geomoe.core.summaries import train_report

if TYPE_CHECKING:
    from geomoe.families.base import Family

log = logging.getLogger(__name__)


def family_of(spec: JobSpec) -> Family:
    """The registered family of the job's ``model.name``."""
    return registry.family(spec.model.name)


def _prepared(folder: str, results: JobResults, stage: str) -> PreparedDataset:
    """The prepared dataset: this run's prepare stage's, else the one in ``folder`` (an earlier run's)."""
    if "prepare" in results.outputs:
        return PreparedDataset.of(results.outputs["prepare"])
    return PreparedDataset.open(folder, f"stage {stage!r}")


def _training_data(prepared: str, refined: str | None, results: JobResults) -> PreparedDataset:
    """The refined dataset when the job refines captions (into ``refined``; this run or an earlier one), else the
    prepared one (in ``prepared``)."""
    if refined is None:
        return _prepared(prepared, results, "train")
    if "refine" in results.outputs:
        return PreparedDataset.of(results.outputs["refine"])
    return PreparedDataset.open(refined, "stage 'train' (refined captions)")


def _train(
    spec: JobSpec, prepared: PreparedDataset, run_dir: str, seconds: dict[str, float], bar: StageBar
) -> dict[str, Any]:
    """The family's model and every baseline trained and evaluated; with ``seeds``, once per seed (each under
    <run>/seed-<s>): the first seed's results, and every seed's under BY_SEED. Each model's time goes into
    ``seconds`` ("train <model>", summed over seeds); ``bar`` counts the epochs."""
    from geomoe.on_ray.ray_env import progress_board

    with progress_board(bar):
        return _train_seeds(spec, prepared, run_dir, seconds)


def _train_seeds(spec: JobSpec, prepared: PreparedDataset, run_dir: str, seconds: dict[str, float]) -> dict[str, Any]:
    if not spec.seeds:
        return _train_once(spec, prepared, run_dir, seconds)
    by_seed = {}
    for seed in spec.seeds:
        log.info("seed %d", seed)
        seeded = spec.model_copy(update={"seed": seed, "seeds": []})
        by_seed[str(seed)] = _train_once(seeded, prepared, storage.join(run_dir, f"seed-{seed}"), seconds)
    return {**by_seed[str(spec.seeds[0])], BY_SEED: by_seed}


def _train_once(spec: JobSpec, prepared: PreparedDataset, run_dir: str, seconds: dict[str, float]) -> dict[str, Any]:
    """The family's model and every baseline (the same job with overrides) trained and evaluated; with
    ``resources.concurrent_models``, all at once, each in its own Ray task."""
    family = family_of(spec)
    prepared.require(family.dataset_kind, f"stage 'train' ({spec.model.name})")
    family.prepare_inputs(spec, prepared)  # a sweep's driver does this once, before its trials
    runs = {"model": (spec, prepared, run_dir)}
    for name in spec.baselines:
        baseline = spec.baseline(name)
        data = prepared if baseline.preprocess == spec.preprocess else PreparedDataset.of(_prepare(baseline))
        family_of(baseline).prepare_inputs(baseline, data)  # the same tiny backbone, or an error: it would differ
        runs[name] = (baseline, data, storage.join(run_dir, "baselines", name))
    if spec.resources.concurrent_models and len(runs) > 1:
        return _train_concurrently(runs, seconds)
    results = {}
    for name, (model_spec, data, model_dir) in runs.items():
        log.info("training %s", name)
        raw = model_spec.model_dump(mode="json")
        results[name], spent = _timed_train(raw, data, model_dir, _model_tracker(name))
        _add_time(seconds, f"train {name}", spent)
    return results


def _model_tracker(name: str) -> dict[str, str] | None:
    tracker = tracking.current()
    return tracker.for_model(name).to_json() if tracker else None


def _timed_train(
    raw_spec: dict[str, Any], prepared: PreparedDataset, run_dir: str, tracker: dict[str, str] | None = None
) -> tuple[dict[str, Any], float]:
    """(the family's train result, seconds it took); the spec and the job's tracker travel as JSON (they may
    cross to a Ray task)."""
    spec = JobSpec.model_validate(raw_spec)
    started = time.perf_counter()
    with tracking.active(tracking.Tracker(**tracker) if tracker else None):
        result = family_of(spec).train(spec, prepared, run_dir)
    return result, time.perf_counter() - started


def _train_concurrently(
    runs: dict[str, tuple[JobSpec, PreparedDataset, str]], seconds: dict[str, float]
) -> dict[str, Any]:
    """Every model in its own Ray task (each starts its own TorchTrainer and Ray Data work, as a Tune trial
    does): a model's training workers use the CPUs (or GPUs) that another model's evaluation, mining and
    start-up leave idle. The tasks take no CPU themselves; their trainers and datasets request what they use."""
    import ray

    remote = ray.remote(num_cpus=0, max_retries=0)(_timed_train)
    refs = {
        name: remote.remote(s.model_dump(mode="json"), data, d, _model_tracker(name))
        for name, (s, data, d) in runs.items()
    }
    log.info("training %s at once", ", ".join(refs))
    results = {}
    for name, ref in refs.items():
        try:
            results[name], spent = ray.get(ref)
        except ray.exceptions.RayTaskError as err:  # the task's own error (a bad record, a spec problem), as is
            raise err.cause if isinstance(err.cause, Exception) else err from None
        _add_time(seconds, f"train {name}", spent)
    return results


def _add_time(seconds: dict[str, float], key: str, spent: float) -> None:
    seconds[key] = round(seconds.get(key, 0.0) + spent, 2)


def _with_engine(engine: EngineSpec, prepared: PreparedDataset, vision: bool, seed: int) -> dict[str, Any]:
    """For ``engine.tiny``, build the tiny model (from ``seed``) on the prepared training captions."""
    from geomoe.core.models.tiny import ensure_tiny_engine

    if engine.tiny:
        table = prepared.read_split("train", columns=["caption"])
        ensure_tiny_engine(engine, table["caption"].to_pylist(), vision, seed)
    return prepared.manifest


def _prepare(spec: JobSpec) -> dict[str, Any]:
    from geomoe.on_ray.pipelines.prepare import prepare

    return prepare(spec)


def _check_cluster_storage(spec: JobSpec) -> None:
    """On a cluster (an address, a Ray job, or a cluster this process joined already), check before any stage
    runs that every location is shared; a local cluster started by ``ensure_ray`` has one node."""
    import os
    import sys

    joined = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if not (joined or spec.resources.address or os.environ.get("RAY_ADDRESS")):
        return
    from geomoe.on_ray.ray_env import check_shared_storage, ensure_ray

    ensure_ray(spec.resources)
    check_shared_storage(spec)


def run_synth(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    from geomoe.core.data.synthgeo import generate

    synth = spec.data.synthesize
    assert synth is not None and synth.output_dir is not None  # checked by the stage's check
    return generate(synth.output_dir, synth, claim=ownership.Claim("data.synthesize.output_dir", spec.name, "synth"))


def run_prepare(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    return _prepare(spec)


def run_refine(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    from geomoe.on_ray.pipelines.refine import refine_captions

    assert spec.refine is not None  # checked by the stage's check
    prepared = _prepared(spec.preprocess.output_dir, context.results, "refine")
    return refine_captions(spec, _with_engine(spec.refine.engine, prepared, vision=False, seed=spec.seed))


def run_caption(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    from geomoe.on_ray.pipelines.caption import caption_gallery

    caption = spec.caption
    assert caption is not None  # checked by the stage's check
    prepared = _prepared(spec.preprocess.output_dir, context.results, "caption")
    return caption_gallery(caption, _with_engine(caption.engine, prepared, vision=True, seed=spec.seed), spec.name)


def run_train(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    refined = spec.refine.output_dir if spec.refine else None
    data = _training_data(spec.preprocess.output_dir, refined, context.results)
    return _train(spec, data, context.run_dir, context.results.seconds, context.bar)


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Run every stage of ``spec``; return {stage: result}. Results are also saved under the run folder."""
    return run_job_timed(spec).outputs


def run_dir_of(spec: JobSpec) -> str:
    """The job's run folder (a path or a URI): its spec, results, checkpoints and logs."""
    return spec.with_absolute_paths().run_folder()


def check_outputs(spec: JobSpec) -> None:
    """Before any stage runs: every folder the job will create or replace is absent, empty or geomoe's own
    output, and the caption store it will replace is a caption store (ForeignFilesError naming the spec key);
    each stage checks its folder again right before it writes (someone may fill one meanwhile)."""
    from geomoe.core.data.caption_store import is_caption_store

    ownership.check_dir(spec.run_folder(), ownership.Claim("output_root", spec.name, "run"))
    for stage in listed_stages(spec):
        for key, location, owner in stage.outputs(spec):
            claim = ownership.Claim(key, spec.name, owner or stage.name)
            if stage.file_output:  # the caption store: one file, written in parts
                ownership.check_file(location, key, is_caption_store)
                ownership.check_dir(f"{location}.parts", claim)
            else:
                ownership.check_dir(location, claim)


def run_job_timed(spec: JobSpec, progress: Progress | None = None) -> JobResults:
    """``run_job`` with the time of each stage (and of each model the train stage trained); ``progress`` shows
    a header and a bar per stage."""
    spec = spec.with_absolute_paths()
    progress = progress or Progress(spec.stages, enabled=False)
    _check_cluster_storage(spec)
    check_outputs(spec)
    run_dir = run_dir_of(spec)
    ownership.claim_dir(run_dir, ownership.Claim("output_root", spec.name, "run"))
    with lease.held(storage.join(run_dir, lease.LOCK_FILE)) as holding:  # refuses if another run uses this folder
        return _run_stages(spec, progress, run_dir, holding)


def _run_stages(spec: JobSpec, progress: Progress, run_dir: str, holding: lease.Lease) -> JobResults:
    storage.write_json_atomic(storage.join(run_dir, "spec.json"), spec.model_dump(mode="json"))
    results = JobResults()
    with tracking.job_run(spec, run_dir) as tracker, tracking.active(tracker):
        for stage in job_stages(spec):
            holding.ensure_held()  # a run that lost its folder to another (off the main thread: not interrupted)
            log.info("stage %s", stage.name)
            started = time.perf_counter()
            with progress.stage(stage.name, **stage.progress(spec)) as bar:
                if stage.needs_ray:
                    from geomoe.on_ray.ray_env import ensure_ray

                    ensure_ray(spec.resources)  # the spec's cluster, or a local one started once
                results.outputs[stage.name] = stage.run(spec, StageContext(results, run_dir, bar))
            results.seconds[stage.name] = round(time.perf_counter() - started, 2)
            log.info("stage %s took %.1f s", stage.name, results.seconds[stage.name])
        holding.ensure_held()
        storage.write_json_atomic(storage.join(run_dir, "results.json"), results.to_json())
        if tracker is not None:
            _track(tracker, spec, results)
    return results


def _track(tracker: tracking.Tracker, spec: JobSpec, results: JobResults) -> None:
    """The job's numbers, tables and results on its run; the trained model registered (``models:/<job>/N``)."""
    metrics = {f"time.{stage}": spent for stage, spent in results.seconds.items()}
    train = results.outputs.get("train") or {}
    family = family_of(spec)
    for name, result in train.items():
        if name != BY_SEED:
            metrics |= {f"{name}.{metric}": value for metric, value in family.tracked_metrics(result).items()}
    tables = train_report(spec, train) if train else ""
    tracking.log_results(tracker, metrics, tables, results.to_json())
    checkpoint = (train.get("model") or {}).get("checkpoint")
    if checkpoint:
        model_metrics = {k.removeprefix("model."): v for k, v in metrics.items() if k.startswith("model.")}
        registered = tracking.register(tracker, spec.name, checkpoint, model_metrics)
        results.outputs["registered"] = registered
        log.info("registered %s", registered)


def time_table(seconds: dict[str, float]) -> str:
    """Where a job's time went: each stage (the train stage's models indented under it) and the total."""
    stages = {k: v for k, v in seconds.items() if not k.startswith("train ")}
    lines = ["time per stage (s):"]
    for stage, spent in stages.items():
        lines.append(f"  {stage:<22}{spent:>8.1f}")
        if stage == "train":
            lines += [f"    {k[6:]:<20}{v:>8.1f}" for k, v in seconds.items() if k.startswith("train ")]
    lines.append(f"  {'total':<22}{sum(stages.values()):>8.1f}")
    return "\n".join(lines)
