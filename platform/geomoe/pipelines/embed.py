"""Batch inference on Ray: embed images with every expert of a PE-MoE checkpoint (Ray Data actors, on GPUs when
the spec has them), and run a model's text-side work where its GPU is."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from geomoe.config.pe_moe import PEMoEModelSpec
from geomoe.data.images import Fetch

if TYPE_CHECKING:
    from geomoe.config import JobSpec
    from geomoe.models.pe_moe import PEMoE

T = TypeVar("T")
Loaded = tuple[Any, Any, "JobSpec", dict[str, Any]]  # load_pe_moe's (model, tokenizer, trained spec, payload)


class ImageEmbedder:
    """A Ray Data actor: loads the checkpoint once (onto this actor's GPU where Ray gave it one), then embeds
    batches of image paths. ``loaded``: the checkpoint's model and the spec it was trained with, already loaded by
    the caller (not read again; used on the device it is on)."""

    def __init__(
        self, checkpoint: str, loaded: tuple[PEMoE, JobSpec] | None = None, fetch: Fetch | None = None
    ) -> None:
        from geomoe.models.factory import load_pe_moe
        from geomoe.ray_env import worker_device

        if loaded is None:
            model, _, spec, _ = load_pe_moe(checkpoint)
            loaded = model.to(worker_device()), spec
        self.model, self.size = loaded[0], loaded[1].model_as(PEMoEModelSpec).image.image_size
        self.fetch = fetch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from geomoe.retrieval.embed import embed_image_batch

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
    spec: JobSpec, checkpoint: str, paths: Sequence[str], fetch: Fetch | None = None
) -> tuple[Loaded | None, np.ndarray]:
    """The checkpoint loaded here (None with ``resources.use_gpu``: GPUs do the work and the driver may have none)
    and v (K, N, D) of ``paths`` by the embedding actors (a GPU each with ``use_gpu``) or, for a small set, here."""
    from geomoe.models.factory import load_pe_moe

    res = spec.resources
    loaded = None if res.use_gpu else load_pe_moe(checkpoint)
    vectors = embed_images(
        checkpoint, paths, res.data_concurrency, in_driver_max=res.embed_in_driver_max,
        loaded=None if loaded is None else (loaded[0], loaded[2]), num_gpus=res.embed_gpus, fetch=fetch,
    )  # fmt: skip
    return loaded, vectors


def on_model_device(spec: JobSpec, checkpoint: str, loaded: Loaded | None, work: Callable[..., T], *args: Any) -> T:
    """``work(model, tokenizer, trained_spec, *args)`` with the checkpoint's model: with ``resources.use_gpu``, in a
    Ray task holding one GPU with the model moved onto it (the driver may have no GPU; text embedding and blockwise
    scoring then run there); else in this process with ``loaded`` (or the checkpoint loaded now)."""
    if spec.resources.use_gpu:
        import ray

        res = spec.resources
        task = ray.remote(num_gpus=1, num_cpus=res.cpus_per_worker, resources=res.worker_resources)(_on_gpu)
        result: T = ray.get(task.remote(checkpoint, work, *args))
        return result
    from geomoe.models.factory import load_pe_moe

    model, tokenizer, trained, _ = loaded or load_pe_moe(checkpoint)
    return work(model, tokenizer, trained, *args)


def _on_gpu(checkpoint: str, work: Callable[..., T], *args: Any) -> T:
    from geomoe.models.factory import load_pe_moe
    from geomoe.ray_env import worker_device

    model, tokenizer, trained, _ = load_pe_moe(checkpoint)
    return work(model.to(worker_device()), tokenizer, trained, *args)
