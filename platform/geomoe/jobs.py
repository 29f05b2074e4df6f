"""Run a JobSpec's stages in order on the Ray cluster the spec names (or a local one)."""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.compute as pc

from geomoe import storage
from geomoe.config import EngineSpec, JobSpec
from geomoe.data.prepared import PreparedDataset

log = logging.getLogger(__name__)


def ensure_tiny_pe_moe(spec: JobSpec, manifest: dict[str, Any]) -> None:
    """Build the tiny PE-MoE models ``model.tiny`` asks for, on the prepared training captions (originals)."""
    from geomoe.models.factory import ensure_tiny_models
    from geomoe.train.run import split_rows

    table = split_rows(manifest, "train", spec)
    ensure_tiny_models(spec.pe_moe, table.filter(pc.equal(table["augment"], ""))["caption"].to_pylist(), spec.seed)


def _train(spec: JobSpec, manifest: dict[str, Any], run_dir: str) -> dict[str, Any]:
    from geomoe.ray_env import ensure_ray
    from geomoe.train.run import train_and_evaluate

    ensure_ray(spec.resources)
    if spec.model.name == "smgeo":
        from geomoe.train.smgeo_run import train_smgeo

        return {"model": train_smgeo(spec, manifest, run_dir)}
    if manifest.get("kind") != "retrieval":
        raise ValueError("stage 'train' (PE-MoE) needs a retrieval dataset (data.format: geotext)")
    ensure_tiny_pe_moe(spec, manifest)
    results = {"model": train_and_evaluate(spec, manifest, run_dir)}
    for name in spec.baselines:
        log.info("baseline %s", name)
        baseline = spec.baseline(name)
        prepared = manifest if baseline.preprocess == spec.preprocess else _prepare(baseline)
        results[name] = train_and_evaluate(baseline, prepared, storage.join(run_dir, "baselines", name))
    return results


def _prepared(spec: JobSpec, results: dict[str, Any]) -> dict[str, Any]:
    from geomoe.pipelines.prepare import finished_manifest

    manifest = results.get("prepare") or finished_manifest(spec.preprocess.output_dir)
    if manifest is None:
        raise ValueError(f"a prepared dataset is needed at {spec.preprocess.output_dir}: run 'prepare' first")
    return dict(manifest)


def _training_data(spec: JobSpec, results: dict[str, Any]) -> dict[str, Any]:
    """The refined dataset when the job refines captions (this run or an earlier one), else the prepared one."""
    if spec.refine is None:
        return _prepared(spec, results)
    from geomoe.pipelines.prepare import finished_manifest

    refined = results.get("refine") or finished_manifest(spec.refine.output_dir)
    if refined is None:
        raise ValueError(f"stage 'train' needs refined captions at {spec.refine.output_dir}: run 'refine' first")
    return dict(refined)


def _with_engine(spec: JobSpec, engine: EngineSpec, manifest: dict[str, Any], vision: bool) -> dict[str, Any]:
    """Start Ray and, for ``engine.tiny``, build the tiny model on the prepared training captions."""
    from geomoe.models.factory import ensure_tiny_engine
    from geomoe.ray_env import ensure_ray

    ensure_ray(spec.resources)
    if engine.tiny:
        table = PreparedDataset.of(manifest).read_split("train", columns=["caption"])
        ensure_tiny_engine(engine, table["caption"].to_pylist(), vision, spec.seed)
    return manifest


def _prepare(spec: JobSpec) -> dict[str, Any]:
    from geomoe.pipelines.prepare import prepare

    return prepare(spec)


def _index(spec: JobSpec, results: dict[str, Any]) -> dict[str, Any]:
    from geomoe.pipelines.index import build_index
    from geomoe.ray_env import ensure_ray

    assert spec.index is not None  # checked by JobSpec validation
    checkpoint = spec.index.checkpoint or results.get("train", {}).get("model", {}).get("checkpoint")
    if checkpoint is None:
        raise ValueError("stage 'index' needs index.checkpoint or a 'train' stage before it")
    if spec.model.name != "pe_moe":
        raise ValueError("stage 'index' builds a PE-MoE gallery index; this job's model is " + spec.model.name)
    ensure_ray(spec.resources)
    return build_index(spec, _prepared(spec, results), checkpoint)


def _submit(spec: JobSpec, results: dict[str, Any]) -> dict[str, Any]:
    from geomoe.pipelines.submit import submit_track4
    from geomoe.ray_env import ensure_ray

    if spec.track4 is None:
        raise ValueError("stage 'track4_submission' needs a track4 section (queries, gallery, output_dir)")
    checkpoint = spec.track4.checkpoint or results.get("train", {}).get("model", {}).get("checkpoint")
    if checkpoint is None:
        raise ValueError("stage 'track4_submission' needs track4.checkpoint or a 'train' stage before it")
    ensure_ray(spec.resources)
    return submit_track4(checkpoint, spec.track4, spec.resources.data_concurrency)


def _check_cluster_storage(spec: JobSpec) -> None:
    """On a cluster (an address, a Ray job, or a cluster this process joined already), check before any stage
    runs that every location is shared; a local cluster started by ``ensure_ray`` has one node."""
    import os
    import sys

    joined = "ray" in sys.modules and sys.modules["ray"].is_initialized()
    if not (joined or spec.resources.address or os.environ.get("RAY_ADDRESS")):
        return
    from geomoe.ray_env import check_shared_storage, ensure_ray

    ensure_ray(spec.resources)
    check_shared_storage(spec)


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Run every stage of ``spec``; return {stage: result}. Results are also saved under the run folder."""
    spec = spec.with_absolute_paths()
    _check_cluster_storage(spec)
    run_dir = storage.join(spec.output_root, spec.name)
    storage.write_json_atomic(storage.join(run_dir, "spec.json"), spec.model_dump(mode="json"))
    results: dict[str, Any] = {}
    for stage in spec.stages:
        log.info("stage %s", stage)
        if stage == "synth":
            from geomoe.data.synthgeo import generate

            assert spec.data.synthesize is not None  # checked by JobSpec validation
            results["synth"] = generate(storage.parent(spec.data.root), spec.data.synthesize)
        elif stage == "prepare":
            results["prepare"] = _prepare(spec)
        elif stage == "refine":
            from geomoe.pipelines.refine import refine_captions

            assert spec.refine is not None  # checked by JobSpec validation
            prepared = _with_engine(spec, spec.refine.engine, _prepared(spec, results), vision=False)
            results["refine"] = refine_captions(spec, prepared)
        elif stage == "caption":
            from geomoe.pipelines.caption import caption_gallery

            assert spec.caption is not None  # checked by JobSpec validation
            prepared = _with_engine(spec, spec.caption.engine, _prepared(spec, results), vision=True)
            results["caption"] = caption_gallery(spec, prepared)
        elif stage == "train":
            results["train"] = _train(spec, _training_data(spec, results), run_dir)
        elif stage == "index":
            results["index"] = _index(spec, results)
        elif stage == "track4_submission":
            results["track4_submission"] = _submit(spec, results)
    storage.write_json_atomic(storage.join(run_dir, "results.json"), results)
    return results
