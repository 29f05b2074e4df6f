"""Driver side of PE-MoE training: Ray Data inputs, a TorchTrainer per stage, mining, evaluation.

Stage 1 -> evaluation -> mining with the stage-1 model -> stage 2 -> evaluation; each step leaves a record in the
run folder, so a rerun with the same job name skips finished steps.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from geomoe.core import storage
from geomoe.core.config import EvalSpec, FamilyModelSpec, JobSpec
from geomoe.core.data.images import DecodeImages, Fetch
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.data.transforms import normalize_caption
from geomoe.core.errors import DatasetError
from geomoe.core.job_results import Checkpoint
from geomoe.families.pe_moe.encode import embed_texts
from geomoe.families.pe_moe.evaluate import evaluate_pe_moe, gallery_from_rows
from geomoe.families.pe_moe.factory import ensure_tiny_models
from geomoe.families.pe_moe.pipelines import embedded_images, on_model_device
from geomoe.families.pe_moe.spec import PEMoEModelSpec, PEMoETrainSpec
from geomoe.on_ray.pipelines.image_store import PreparedImages
from geomoe.on_ray.ray_env import decoded_rows
from geomoe.on_ray.train.grouped import dataset_name, group_steps
from geomoe.on_ray.train.loop import LoopConfig
from geomoe.on_ray.train.run import cached_result, recorded_stage, run_trainer

COLUMNS = ["caption", "statements", "image_path", "image_id", "building_id", "platform"]


def split_rows(prepared: PreparedDataset, split: str, model: PEMoEModelSpec) -> pa.Table:
    """Rows of one split of a prepared table, with the expert index of each row's platform."""
    table = prepared.read_split(split, columns=[*COLUMNS, "augment"])
    expert_of = model.expert_of()
    unknown = sorted(set(table["platform"].to_pylist()) - set(expert_of))
    if unknown:
        raise DatasetError(f"model.experts: no expert owns platform(s) {unknown} present in the {split} split")
    experts = pa.array([expert_of[p] for p in table["platform"].to_pylist()], pa.int64())
    return table.append_column("expert", experts)


def training_datasets(
    table: pa.Table, model: PEMoEModelSpec, train: PEMoETrainSpec, seed: int, negatives: bool, fetch: Fetch | None
) -> dict[str, Any]:
    """``batching: expert``: one dataset per expert (``train_<expert>``, for group-homogeneous batches);
    ``mixed``: one dataset ``train``. Each is reshuffled every epoch, reproducibly from ``seed``; images come
    from ``fetch`` (the prepared image table in the object store)."""
    size, materialize = model.image.image_size, train.materialize_inputs
    if train.batching == "mixed":
        return {"train": _decoded(table, size, negatives, fetch, materialize, seed)}
    by_expert = {e.name: table.filter(pc.equal(table["expert"], k)) for k, e in enumerate(model.experts)}
    return {
        dataset_name(name): _decoded(rows, size, negatives, fetch, materialize, seed + k)
        for k, (name, rows) in enumerate(by_expert.items())
        if rows.num_rows
    }


def expert_rows(table: pa.Table, model: PEMoEModelSpec) -> dict[str, int]:
    """Training rows of each expert that has any (the groups of ``batching: expert``)."""
    counts = np.bincount(table["expert"].to_numpy(), minlength=len(model.experts))
    return {e.name: int(n) for e, n in zip(model.experts, counts, strict=True) if n}


def _decoded(
    table: pa.Table, image_size: int, negatives: bool, fetch: Fetch | None, materialize: bool, seed: int
) -> Any:
    """The rows decoded, in a new order every epoch."""
    return decoded_rows(table, DecodeImages(image_size, negatives, fetch), 64, materialize, seed)


def fit_stage(
    spec: JobSpec,
    run_dir: str,
    stage: int,
    table: pa.Table,
    init: str | None,
    images: PreparedImages,
    test_hooks: dict[str, Any] | None = None,
) -> Checkpoint:
    """Run one PE-MoE training stage on Ray Train (or return its recorded result); returns {checkpoint, metrics}.
    ``images``: the rows' prepared dataset's image bytes; ``test_hooks``: LoopConfig's fault-injection fields."""
    recorded = recorded_stage(spec, run_dir, stage)
    if recorded is not None:
        return recorded
    model, train = spec.model_as(PEMoEModelSpec), spec.train_as(PEMoETrainSpec)
    groups = expert_rows(table, model) if train.batching == "expert" else {}
    loop = LoopConfig.of(
        train,
        spec.seed,
        spec.resources.num_workers,
        stage=stage,
        epochs=train.stage1_epochs if stage == 1 else train.stage2_epochs,
        steps_per_epoch=_steps_per_epoch(train, spec.resources.num_workers, int(table.num_rows), groups),
        lr=train.lr * (train.stage2_lr_scale if stage == 2 else 1.0),
        init_checkpoint=init,
        group_rows=groups,
        group_order=train.batch_order,
        **(test_hooks or {}),
    )
    datasets = training_datasets(table, model, train, spec.seed, stage == 2, images.fetch)
    return run_trainer(spec, run_dir, loop, datasets)


def _steps_per_epoch(train: PEMoETrainSpec, workers: int, rows: int, groups: dict[str, int]) -> int:
    """Mixed batches (no ``groups``): the rows over the global batch. Expert batches: every expert's whole global
    batches; an expert too small for one is an error (it would never train)."""
    batch = train.global_batch(workers)
    if not groups:
        return max(1, rows // batch)
    per_worker_step = max(1, batch // (workers * train.grad_accumulation)) * train.grad_accumulation
    steps = group_steps(groups, workers, per_worker_step)
    empty = [name for name, n in steps.items() if n == 0]
    if empty:
        raise DatasetError(
            f"train.batching=expert: expert {empty[0]!r} has {groups[empty[0]]} training rows, fewer than one global "
            f"batch of {batch} on {workers} worker(s); lower train.batch_size or use batching: mixed"
        )
    return sum(steps.values())


def mine_negatives(spec: JobSpec, checkpoint: str, table: pa.Table, images: PreparedImages) -> pa.Table:
    """Append ``negative_paths``: per row, the highest-scoring training images of other buildings
    (``hard_negative_paths`` on the model's embeddings of the training rows and images)."""
    rows = table.to_pylist()
    paths = sorted({r["image_path"] for r in rows})
    loaded, vectors = embedded_images(spec.resources, checkpoint, paths, images.fetch)
    sections = spec.model_as(PEMoEModelSpec), spec.train_as(PEMoETrainSpec), spec.seed
    negatives = on_model_device(spec.resources, checkpoint, loaded, _mined, sections, rows, paths, vectors)
    return table.append_column("negative_paths", pa.array(negatives, pa.list_(pa.string())))


def _mined(
    model: Any,
    tokenizer: Any,
    _: FamilyModelSpec,
    sections: tuple[PEMoEModelSpec, PEMoETrainSpec, int],
    rows: list[dict[str, Any]],
    paths: list[str],
    v: np.ndarray,
) -> list[list[str]]:
    texts, gates = embed_texts(model, tokenizer, [r["caption"] for r in rows], sections[0].text.max_length)
    return hard_negative_paths(*sections, rows, paths, texts, gates, v)


def hard_negative_paths(
    model: PEMoEModelSpec,
    train: PEMoETrainSpec,
    seed: int,
    rows: list[dict[str, Any]],
    paths: list[str],
    t_KQD: np.ndarray,
    g_QK: np.ndarray,
    v_KND: np.ndarray,
) -> list[list[str]]:
    """Per row, its ``hard_negatives`` mined image paths.

    ``mining_scope: gallery`` (the paper, sec. 3.3: "we test the model on the training set itself" and keep
    "images that are semantically incorrect but have high similarity scores") ranks every training image by the
    model's final score (Eq. 1). ``platform`` (ours) ranks only the row's own platform by its expert's score."""
    from geomoe.core.retrieval.mining import mine_hard_negatives
    from geomoe.families.pe_moe.index import index_rows, query_rows

    image_meta = {r["image_path"]: (r["building_id"], r["expert"]) for r in rows}
    if train.mining_scope == "gallery":
        groups = [(list(range(len(rows))), list(range(len(paths))), query_rows(t_KQD, g_QK),
                   index_rows(v_KND, "float32"), "the training gallery")]  # fmt: skip
    else:
        groups = []
        for k, expert in enumerate(model.experts):
            query_idx = [i for i, r in enumerate(rows) if r["expert"] == k]
            gallery_idx = [j for j, p in enumerate(paths) if image_meta[p][1] == k]
            if query_idx:
                groups.append((query_idx, gallery_idx, t_KQD[k], v_KND[k], f"expert {expert.name!r}"))
    negatives: list[list[str]] = [[] for _ in rows]
    for n, (query_idx, gallery_idx, queries_QD, gallery_ND, what) in enumerate(groups):
        gallery_pos = {paths[j]: m for m, j in enumerate(gallery_idx)}
        found = mine_hard_negatives(
            queries_QD[query_idx],
            np.array([rows[i]["building_id"] for i in query_idx]),
            gallery_ND[gallery_idx],
            np.array([image_meta[paths[j]][0] for j in gallery_idx]),
            train.hard_negatives,
            train.mining_chunk,
            pool=train.mining_pool,
            seed=seed + n,
            positive_Q=np.array([gallery_pos[rows[i]["image_path"]] for i in query_idx]) if train.semi_hard else None,
        )
        if (found < 0).any():
            raise DatasetError(f"{what}: fewer than {train.hard_negatives} images of other buildings to mine")
        for i, picks in zip(query_idx, found, strict=True):
            negatives[i] = [paths[gallery_idx[j]] for j in picks]
    return negatives


def evaluate_checkpoint(
    spec: JobSpec, checkpoint: str, prepared: PreparedDataset, images: PreparedImages | None = None
) -> dict[str, Any]:
    """The test split's report (``evaluate_pe_moe``): images embedded by the actors (their bytes from ``images``,
    by default ``prepared``'s image table), then the captions embedded and scored where the model is (a GPU task
    with ``resources.use_gpu``)."""
    model = spec.model_as(PEMoEModelSpec)
    rows = split_rows(prepared, "test", model).filter(pc.equal(pc.field("augment"), "")).to_pylist()
    gallery, _ = gallery_from_rows(rows)
    fetch = (images or PreparedImages(prepared)).fetch
    loaded, vectors = embedded_images(spec.resources, checkpoint, [im["image_path"] for im in gallery], fetch)
    return on_model_device(spec.resources, checkpoint, loaded, _evaluated, model, spec.eval, rows, vectors)


def _evaluated(
    model: Any,
    tokenizer: Any,
    _: FamilyModelSpec,
    model_spec: PEMoEModelSpec,
    evaluation: EvalSpec,
    rows: list[dict[str, Any]],
    v: np.ndarray,
) -> dict[str, Any]:
    return evaluate_pe_moe(model, tokenizer, model_spec, evaluation, rows, v)


def train_and_evaluate(spec: JobSpec, prepared: PreparedDataset, run_dir: str) -> dict[str, Any]:
    """Stage 1 -> evaluation -> mining -> stage 2 -> evaluation; each step skipped if already recorded."""
    table = split_rows(prepared, "train", spec.model_as(PEMoEModelSpec))
    images = PreparedImages(prepared)  # loaded into the object store once, for every step that embeds or trains
    results: dict[str, Any] = {}
    stage1 = fit_stage(spec, run_dir, 1, table, None, images)
    results["stage1"] = cached_result(
        storage.join(run_dir, "eval_stage1.json"),
        spec,
        1,
        lambda: evaluate_checkpoint(spec, stage1.location, prepared, images),
    )
    if spec.train_as(PEMoETrainSpec).stage2_epochs:
        stage2 = recorded_stage(spec, run_dir, 2)  # a finished stage 2 needs no mining
        if stage2 is None:
            mined = mine_negatives(spec, stage1.location, table, images)
            stage2 = fit_stage(spec, run_dir, 2, mined, stage1.location, images)
        results["stage2"] = cached_result(
            storage.join(run_dir, "eval_stage2.json"),
            spec,
            2,
            lambda: evaluate_checkpoint(spec, stage2.location, prepared, images),
        )
        results["checkpoint"] = stage2.location
    else:
        results["checkpoint"] = stage1.location
    return results


def ensure_tiny(model: PEMoEModelSpec, prepared: PreparedDataset, max_words: int) -> None:
    """Build the tiny models ``model.tiny`` asks for, their tokenizer on ``backbone_corpus``."""
    if model.tiny is not None:  # real backbones: nothing to read
        ensure_tiny_models(model, backbone_corpus(prepared, max_words))


def backbone_corpus(prepared: PreparedDataset, max_words: int) -> list[str]:
    """The training captions as the dataset wrote them (normalised, cut at ``max_words``: the training length),
    not as preprocessing refined them: a frozen backbone is the same for every row of an ablation, with or
    without refinement, so one tiny model folder serves them all. A record that refinement rejects (the rules
    can leave a caption empty) is missing from a refined row's corpus: such rows are refused by the recipe check,
    not given different backbones."""
    table = prepared.read_split("train", columns=["caption_raw", "augment"])
    originals = table.filter(pc.equal(table["augment"], ""))["caption_raw"].to_pylist()
    return [normalize_caption(text, max_words) for text in originals]
