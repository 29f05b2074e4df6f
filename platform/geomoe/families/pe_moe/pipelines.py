"""PE-MoE on Ray Data: embed images with every expert of a checkpoint (actors, on GPUs when the spec has them), and
the ``index`` stage (one matrix of concatenated expert blocks plus FAISS indexes, for serving; its manifest records
the checkpoint's and gallery's hashes, counts and layout, and each FAISS index's recall@10 against exact search on
the split's own caption queries). The ``track4_submission`` stage is in ``submit``."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from geomoe.core import ownership, storage
from geomoe.core.config import FamilyModelSpec, JobSpec, ResourcesSpec, as_section
from geomoe.core.data.images import Fetch
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.errors import DatasetError
from geomoe.families.pe_moe.index import (
    build_faiss,
    exact_search,
    index_rows,
    query_rows,
    recall_at,
    write_index,
)
from geomoe.families.pe_moe.spec import IndexSpec, PEMoEModelSpec

if TYPE_CHECKING:
    from geomoe.core.job_results import JobResults
    from geomoe.core.stages import StageContext
    from geomoe.families.pe_moe.model import PEMoE


T = TypeVar("T")
Loaded = tuple[Any, Any, "JobSpec", dict[str, Any]]  # load_pe_moe's (model, tokenizer, trained spec, payload)


class ImageEmbedder:
    """A Ray Data actor: loads the checkpoint once (onto this actor's GPU where Ray gave it one), then embeds
    batches of image paths. ``loaded``: the checkpoint's model and the spec it was trained with, already loaded by
    the caller (not read again; used on the device it is on)."""

    def __init__(
        self, checkpoint: str, loaded: tuple[PEMoE, JobSpec] | None = None, fetch: Fetch | None = None
    ) -> None:
        from geomoe.families.pe_moe.factory import load_pe_moe
        from geomoe.on_ray.ray_env import worker_device

        if loaded is None:
            model, _, spec, _ = load_pe_moe(checkpoint)
            loaded = model.to(worker_device()), spec
        self.model, self.size = loaded[0], loaded[1].model_as(PEMoEModelSpec).image.image_size
        self.fetch = fetch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from geomoe.families.pe_moe.encode import embed_image_batch

        return {
            "index": batch["index"],
            "vector": embed_image_batch(self.model, batch["image_path"].tolist(), self.size, self.fetch),
        }


def embed_images(
    checkpoint: str,
    paths: Sequence[str],
    concurrency: int = 1,
    batch_size: int = 64,
    in_driver_max: int = 0,
    loaded: tuple[PEMoE, JobSpec] | None = None,
    num_gpus: float = 0,
    fetch: Fetch | None = None,
) -> np.ndarray:
    """v (K, N, D) for ``paths`` in order, computed by ``concurrency`` actors, each holding ``num_gpus`` GPUs; at
    most ``in_driver_max`` paths are embedded in this process instead (the same ``ImageEmbedder``, without starting
    an actor pool, which costs more than embedding a small gallery: about 15 s on 2 cores against 1-3 s for a few
    thousand tiny images). ``loaded``: the caller's model of ``checkpoint`` and its spec, used in this process.
    ``fetch``: where the images' bytes come from (a prepared image table; default: each path)."""
    if len(paths) <= in_driver_max:
        embedder = ImageEmbedder(checkpoint, loaded, fetch=fetch)
        chunks = [np.asarray(paths[i : i + batch_size], dtype=object) for i in range(0, len(paths), batch_size)]
        parts = [embedder({"index": np.arange(len(c)), "image_path": c})["vector"] for c in chunks]
        return np.concatenate(parts, axis=0).transpose(1, 0, 2)
    import ray.data

    items: list[dict[str, Any]] = [{"index": i, "image_path": p} for i, p in enumerate(paths)]
    ds: Any = ray.data.from_items(items, override_num_blocks=max(1, min(len(items) // batch_size, 4 * concurrency)))
    ds = ds.map_batches(
        ImageEmbedder,
        fn_constructor_args=(checkpoint,),
        fn_constructor_kwargs={"fetch": fetch},
        batch_size=batch_size,
        # on GPUs the pool starts with one actor and grows while GPUs are free (a fixed pool larger than the
        # cluster's GPUs would wait for actors that never start)
        compute=ray.data.ActorPoolStrategy(min_size=1 if num_gpus else concurrency, max_size=concurrency),
        num_cpus=1,
        num_gpus=num_gpus,
        batch_format="numpy",
    )
    rows = sorted(ds.take_all(), key=lambda r: r["index"])
    return np.stack([r["vector"] for r in rows], axis=1)


def embedded_images(
    res: ResourcesSpec, checkpoint: str, paths: Sequence[str], fetch: Fetch | None = None
) -> tuple[Loaded | None, np.ndarray]:
    """The checkpoint loaded here (None with ``resources.use_gpu``: GPUs do the work and the driver may have none)
    and v (K, N, D) of ``paths`` by the embedding actors (a GPU each with ``use_gpu``) or, for a small set, here."""
    from geomoe.families.pe_moe.factory import load_pe_moe

    loaded = None if res.use_gpu else load_pe_moe(checkpoint)
    vectors = embed_images(
        checkpoint, paths, res.data_concurrency, in_driver_max=res.embed_in_driver_max,
        loaded=None if loaded is None else (loaded[0], loaded[2]), num_gpus=res.embed_gpus, fetch=fetch,
    )  # fmt: skip
    return loaded, vectors


def on_model_device(
    res: ResourcesSpec, checkpoint: str, loaded: Loaded | None, work: Callable[..., T], *args: Any
) -> T:
    """``work(model, tokenizer, trained_model_section, *args)`` with the checkpoint's model: with
    ``resources.use_gpu``, in a Ray task holding one GPU with the model moved onto it (the driver may have no GPU;
    text embedding and blockwise scoring then run there); else in this process with ``loaded`` (or the checkpoint
    loaded now)."""
    if res.use_gpu:
        import ray

        task = ray.remote(num_gpus=1, num_cpus=res.cpus_per_worker, resources=res.worker_resources)(_on_gpu)
        result: T = ray.get(task.remote(checkpoint, work, *args))
        return result
    from geomoe.families.pe_moe.factory import load_pe_moe

    model, tokenizer, trained, _ = loaded or load_pe_moe(checkpoint)
    return work(model, tokenizer, trained.model, *args)


def _on_gpu(checkpoint: str, work: Callable[..., T], *args: Any) -> T:
    from geomoe.families.pe_moe.factory import load_pe_moe
    from geomoe.on_ray.ray_env import worker_device

    model, tokenizer, trained, _ = load_pe_moe(checkpoint)
    return work(model.to(worker_device()), tokenizer, trained.model, *args)


def checkpoint_sha256(directory: str) -> str:
    """Content hash of a checkpoint folder, a path or URI (every file's bytes, in path order)."""
    digest = hashlib.sha256()
    for rel, _ in storage.list_files(directory):
        digest.update(f"{rel}\0{storage.file_sha256(storage.join(directory, rel))}\n".encode())
    return digest.hexdigest()


def build_index(spec: JobSpec, manifest: dict[str, Any], checkpoint: str) -> dict[str, Any]:
    """Embed the gallery of ``spec.index.split`` and write the index folder; return its manifest."""
    from geomoe.on_ray.pipelines.caption import gallery_images
    from geomoe.on_ray.pipelines.image_store import PreparedImages

    cfg, started = spec.section("index", IndexSpec), time.perf_counter()
    assert cfg is not None  # checked by JobSpec validation
    images = sorted(gallery_images(manifest, cfg.split), key=lambda im: im["image_id"])
    if not images:
        raise DatasetError(f"no {cfg.split} images in the prepared dataset at {manifest['table']}")
    gallery_key = json.dumps([[im["image_id"], im["image_path"]] for im in images])
    checkpoint_sha = checkpoint_sha256(checkpoint)
    inputs_key = hashlib.sha256(
        json.dumps([checkpoint_sha, gallery_key, cfg.model_dump(mode="json")]).encode()
    ).hexdigest()
    claim = ownership.Claim("index.output_dir", spec.name, "index")
    ownership.check_dir(cfg.output_dir, claim)  # before the gallery is embedded
    saved = _saved_report(cfg.output_dir, inputs_key)
    if saved is not None:
        return saved  # the same checkpoint, gallery and settings: embedding again would write the same index
    fetch = PreparedImages(PreparedDataset.of(manifest)).fetch
    loaded, v_KND = embedded_images(spec.resources, checkpoint, [im["image_path"] for im in images], fetch)
    rows = index_rows(v_KND, cfg.dtype)
    queries = _queries(manifest, cfg.split)
    t_KQD, g_QK, experts = on_model_device(spec.resources, checkpoint, loaded, _embedded_queries, queries)
    faiss_info, faiss_indexes = _faiss_files(rows, query_rows(t_KQD, g_QK), cfg)
    info = {
        "checkpoint": checkpoint,
        "checkpoint_sha256": checkpoint_sha,
        "gallery_sha256": hashlib.sha256(gallery_key.encode()).hexdigest(),
        "split": cfg.split,
        "experts": experts,
        "expert_dim": int(v_KND.shape[2]),
        "platforms": [im["platform"] for im in images],
        "image_paths": [im["image_path"] for im in images],  # what a re-ranker's captioner reads
        "faiss": faiss_info,
        "seconds": round(time.perf_counter() - started, 2),
        "queries": len(queries),
        "inputs_key": inputs_key,
    }
    write_index(cfg.output_dir, rows, [im["image_id"] for im in images], info, faiss_indexes, claim)
    saved = _saved_report(cfg.output_dir, inputs_key)
    assert saved is not None  # just written
    return saved


def _saved_report(folder: str, inputs_key: str) -> dict[str, Any] | None:
    """The report of the index in ``folder`` when it was built from the same inputs, else None."""
    try:
        manifest = storage.read_json_if_exists(storage.join(folder, storage.MANIFEST))
    except (storage.StorageError, ValueError):
        return None
    if manifest is None:
        return None
    if manifest.get("inputs_key") != inputs_key:
        return None
    return {k: v for k, v in manifest.items() if k not in ("platforms", "image_paths", "inputs_key", "files")}


def _queries(manifest: dict[str, Any], split: str) -> list[str]:
    import pyarrow.compute as pc

    table = PreparedDataset.of(manifest).read_split(split, columns=["caption"], where=pc.field("augment") == "")
    return [str(c) for c in table["caption"].to_pylist()]


def _faiss_files(
    rows: np.ndarray, queries: np.ndarray, cfg: IndexSpec, k: int = 10
) -> tuple[dict[str, Any], dict[str, Any]]:
    """(report, indexes): each requested FAISS index and its recall@k against exact search on ``queries``."""
    _, exact = exact_search(rows, queries, k)
    out: dict[str, Any] = {}
    indexes: dict[str, Any] = {}
    for kind in cfg.faiss:
        index = build_faiss(rows, kind, nlist=cfg.ivf_nlist, m=cfg.hnsw_m)
        if kind == "ivf":
            index.nprobe = cfg.ivf_nprobe
        _, found = index.search(np.ascontiguousarray(queries, np.float32), min(k, len(rows)))
        out[kind] = {"file": f"faiss_{kind}.index", f"recall@{k}_vs_exact": round(recall_at(found, exact), 4)}
        indexes[kind] = index
    return out, indexes


def _embedded_queries(
    model: Any, tokenizer: Any, trained: FamilyModelSpec, queries: list[str]
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(t_KQD, g_QK) of the index's queries (FAISS's training and recall checks use them) and the checkpoint's
    expert names."""
    from geomoe.families.pe_moe.encode import embed_texts

    model_spec = as_section(trained, PEMoEModelSpec)
    t_KQD, g_QK = embed_texts(model, tokenizer, queries, model_spec.text.max_length)
    return t_KQD, g_QK, [e.name for e in model_spec.experts]


def stage_checkpoint(given: str | None, results: JobResults, stage: str) -> str:
    """The stage's checkpoint: the section's, else the job's trained model; a registry URI (models:/...)
    becomes its version's checkpoint."""
    from geomoe.core.tracking import checkpoint_location

    checkpoint = given or results.trained_checkpoint()
    if checkpoint is None:  # the stage's check makes sure a checkpoint is given or trained first
        raise AssertionError(f"stage {stage!r} has no checkpoint")
    return checkpoint_location(str(checkpoint))


def run_index(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    """The ``index`` stage (geomoe.families.pe_moe.INDEX)."""
    index = spec.section("index", IndexSpec)
    assert index is not None  # checked by the stage's check
    manifest = context.results.outputs.get("prepare")  # this run's, else the folder's (an earlier run)
    if manifest is None:
        manifest = PreparedDataset.open(spec.preprocess.output_dir, "stage 'index'").manifest
    return build_index(spec, manifest, stage_checkpoint(index.checkpoint, context.results, "index"))
