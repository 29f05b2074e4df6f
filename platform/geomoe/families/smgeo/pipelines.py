"""Ray Data for SMGeo: decode prepared rows into model inputs, and predict boxes with a checkpoint (batch
inference on an actor pool, one model per actor)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa

from geomoe.core.data.images import Fetch
from geomoe.families.smgeo.localization import decode_pair, to_file_pixels
from geomoe.families.smgeo.spec import SMGeoModelSpec
from geomoe.on_ray.ray_env import decoded_rows


class DecodePairs:
    """Ray Data map: prepared rows -> query, click, reference, box (model-input pixels), reference_wh; the images'
    bytes from ``fetch`` (the prepared image table) or their paths."""

    def __init__(self, query_size: int, reference_size: int, fetch: Fetch | None = None) -> None:
        self.query_size, self.reference_size, self.fetch = query_size, reference_size, fetch

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = [dict(zip(batch, values, strict=True)) for values in zip(*batch.values(), strict=True)]
        decoded = [decode_pair(row, self.query_size, self.reference_size, self.fetch) for row in rows]
        arrays = {key: np.stack([d[key] for d in decoded]) for key in decoded[0]}
        return {"sample_id": batch["sample_id"], "class_name": batch["class_name"], **arrays}


def pairs_dataset(
    table: pa.Table,
    query_size: int,
    reference_size: int,
    materialize: bool,
    fetch: Fetch | None = None,
    reshuffle_seed: int | None = None,
) -> Any:
    """Decoded pairs of ``table``'s rows as a Ray Dataset (decoded once into the object store if ``materialize``),
    the images' bytes from ``fetch``; with ``reshuffle_seed`` (training), in a new order every epoch."""
    return decoded_rows(table, DecodePairs(query_size, reference_size, fetch), 32, materialize, reshuffle_seed)


class PredictBoxes:
    """Ray Data actor: a checkpoint's boxes in reference file pixels, one set per entry of ``clicks`` (``pred_<i>``;
    False zeroes the click): each variant on the same decoded batch."""

    def __init__(self, checkpoint: str, clicks: tuple[bool, ...]) -> None:
        import torch

        from geomoe.families.smgeo.model import load_smgeo
        from geomoe.on_ray.ray_env import worker_device

        self.torch = torch
        self.model, spec, _ = load_smgeo(checkpoint)
        self.device = worker_device()
        self.model.to(self.device)
        self.clicks, self.size = clicks, spec.model_as(SMGeoModelSpec).reference_size

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from geomoe.families.smgeo.model import predict_input_boxes

        query, click, reference = (
            self.torch.from_numpy(batch[k]).to(self.device) for k in ("query", "click", "reference")
        )
        out = {"sample_id": batch["sample_id"], "reference_wh": batch["reference_wh"]}
        for i, use_click in enumerate(self.clicks):
            pred, _ = predict_input_boxes(self.model, query, click, reference, use_click)
            out[f"pred_{i}"] = to_file_pixels(pred, batch["reference_wh"], self.size)
        return out


def predict_boxes(
    checkpoint: str, pairs: Any, clicks: tuple[bool, ...], concurrency: int, use_gpu: bool
) -> dict[str, tuple[list[np.ndarray], np.ndarray]]:
    """sample_id -> (a predicted xyxy box in file pixels per entry of ``clicks``, the reference file's (width,
    height)) for every decoded pair: one pass decodes each pair once for every variant (with and without its
    click)."""
    import ray.data

    predicted = pairs.map_batches(
        PredictBoxes,
        fn_constructor_kwargs={"checkpoint": checkpoint, "clicks": clicks},
        batch_size=16,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=concurrency),
        num_cpus=0 if use_gpu else 1,
        num_gpus=1 if use_gpu else 0,
    )
    return {
        str(row["sample_id"]): (
            [np.asarray(row[f"pred_{i}"]) for i in range(len(clicks))],
            np.asarray(row["reference_wh"]),
        )
        for row in predicted.iter_rows()
    }
