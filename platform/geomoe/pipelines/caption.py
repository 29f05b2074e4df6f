"""``caption`` on Ray Data: a captioning model describes every gallery image once, offline, into a caption store
(CGRS's image-to-text step moved from query time to index time).

An actor pool holds the model; each caption is cleaned and checked (non-empty, at most ``max_words``, not chat
boilerplate). A failed or rejected image gets no caption and is counted by reason; re-ranking then gives it no
caption evidence. The store records the model and the prompt hash (empty: image-to-text models take no prompt).
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import numpy as np
import pyarrow.compute as pc
import pyarrow.dataset as pads

from geomoe.config import CaptionSpec, JobSpec
from geomoe.data.caption_store import write_caption_store
from geomoe.engines.prompts import clean_generation, rejection
from geomoe.pipelines.engine_pool import engine_pool_options


class CaptionBatch:
    """Ray Data actor: image paths -> captions (None where the model failed)."""

    def __init__(self, caption: CaptionSpec) -> None:
        from geomoe.engines.local import TransformersCaptioner

        e = caption.engine
        device = "cuda" if e.use_gpu else "cpu"
        self.captioner = TransformersCaptioner(e.model, e.max_new_tokens, device=device, batch_size=e.batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = self.captioner.caption([str(p) for p in batch["image_path"]])
        return {
            "image_id": batch["image_id"],
            "text": np.array(["" if t is None else t for t in texts], dtype=object),
            "failed": np.array([t is None for t in texts]),
        }


def gallery_images(manifest: dict[str, Any], split: str) -> list[dict[str, str]]:
    """Unique (image_id, image_path) of a prepared split, originals only (no augmented copies)."""
    table = pads.dataset(manifest["table"], format="parquet", partitioning="hive").to_table(
        columns=["image_id", "image_path"], filter=(pc.field("split") == split) & (pc.field("augment") == "")
    )
    seen: dict[str, str] = {}
    for image_id, path in zip(table["image_id"].to_pylist(), table["image_path"].to_pylist(), strict=True):
        seen.setdefault(image_id, path)
    return [{"image_id": k, "image_path": v} for k, v in seen.items()]


def caption_gallery(spec: JobSpec, manifest: dict[str, Any]) -> dict[str, Any]:
    """Caption the images of ``spec.caption.split`` into ``spec.caption.output``; return a report."""
    import ray.data

    assert spec.caption is not None  # checked by JobSpec validation
    caption = spec.caption
    if caption.engine.kind != "transformers":
        raise NotImplementedError(f"caption.engine.kind {caption.engine.kind!r} is not wired in yet (issue 5)")
    started = time.perf_counter()
    images = gallery_images(manifest, caption.split)
    if not images:
        raise ValueError(f"no {caption.split} images in the prepared dataset at {manifest['table']}")
    ds = ray.data.from_items(images).map_batches(
        CaptionBatch,
        fn_constructor_kwargs={"caption": caption},
        batch_format="numpy",
        **engine_pool_options(caption.engine),
    )
    produced = {str(r["image_id"]): None if r["failed"] else str(r["text"]) for r in ds.iter_rows()}
    rows: list[dict[str, str]] = []
    failures: Counter[str] = Counter()
    for image in images:
        raw = produced.get(image["image_id"])  # an image missing from the output counts as a failed call
        text = None if raw is None else clean_generation(raw)
        reason = rejection(text, "", False, 1, caption.max_words)  # None text: "engine failed"
        if reason is not None or text is None:
            failures[reason or "engine failed"] += 1
            continue
        row = {"image_id": image["image_id"], "caption": text, "model_id": caption.engine.model, "prompt_sha256": ""}
        rows.append(row)
    write_caption_store(caption.output, rows)
    return {
        "store": caption.output,
        "model_id": caption.engine.model,
        "images": len(images),
        "captioned": len(rows),
        "failed_by_reason": dict(sorted(failures.items())),
        "seconds": round(time.perf_counter() - started, 2),
    }
