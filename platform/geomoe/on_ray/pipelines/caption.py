"""``caption`` on Ray Data: a VLM describes every gallery image once, offline, into a caption store (CGRS's
image-to-text step moved from query time to index time).

Engines: ``transformers`` (an actor pool holding a chat VLM or an image-to-text model), ``http`` (an
OpenAI-compatible server; the image travels in the request as a data: URL) and ``vllm`` (vLLM engine actors with
the multimodal stage). Each caption is cleaned and checked (non-empty, at most ``max_words``, not chat
boilerplate). A failed or rejected image gets no caption and is counted by reason; re-ranking then gives it no
caption evidence. The store records the model and the prompt's sha256 (empty for a model that takes no prompt).
"""

from __future__ import annotations

import json
import time
import uuid
from collections import Counter
from typing import Any

import numpy as np
import pyarrow.compute as pc

from geomoe.core import ownership, storage
from geomoe.core.config import CaptionSpec
from geomoe.core.data.caption_store import caption_store_report, is_caption_store, write_caption_store
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.engines.prompts import CaptionPrompt, caption_verdict, image_data_url, load_caption_prompt
from geomoe.core.errors import DatasetError
from geomoe.on_ray.pipelines.engine_pool import engine_pool_options
from geomoe.on_ray.pipelines.llm import generate

FLUSH_ROWS = 64  # captions per part file: what a killed stage can lose at most (local engine)
HTTP_CHUNK = 512  # images per request batch to a served VLM, saved after each (a killed stage loses one chunk)


class CaptionBatch:
    """Ray Data actor for the ``transformers`` engine: image paths -> captions (None where the model failed)."""

    def __init__(self, caption: CaptionSpec, prompt: CaptionPrompt) -> None:
        from geomoe.core.engines.local import TransformersCaptioner
        from geomoe.on_ray.ray_env import worker_device

        e = caption.engine
        device = worker_device()  # the actor's GPU where the map asked for one (engine.use_gpu)
        self.captioner = TransformersCaptioner(e.model, e.max_new_tokens, device=device, batch_size=e.batch_size)
        self.prompt = prompt

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        prompts = [self.prompt.text(str(p)) for p in batch["platform"]]
        texts = self.captioner.caption([str(p) for p in batch["image_path"]], prompts)
        return {
            "image_id": batch["image_id"],
            "text": np.array(["" if t is None else t for t in texts], dtype=object),
            "failed": np.array([t is None for t in texts]),
        }


class CaptionMessages:
    """An image item -> the captioning chat request, the image read into a data: URL (in the Ray Data task)."""

    def __init__(self, prompt: CaptionPrompt) -> None:
        self.prompt = prompt

    def __call__(self, item: dict[str, Any]) -> list[dict[str, Any]]:
        return self.prompt.messages(image_data_url(item["image_path"]), item["platform"])


def gallery_images(manifest: dict[str, Any], split: str) -> list[dict[str, str]]:
    """Unique (image_id, image_path, platform) of a prepared split, originals only (no augmented copies)."""
    table = PreparedDataset.of(manifest).read_split(
        split, columns=["image_id", "image_path", "platform"], where=pc.field("augment") == ""
    )
    seen: dict[str, dict[str, str]] = {}
    for row in table.to_pylist():
        seen.setdefault(row["image_id"], row)
    return list(seen.values())


def _captions(
    caption: CaptionSpec, prompt: CaptionPrompt, images: list[dict[str, str]], parts: str
) -> dict[str, str | None]:
    """image_id -> raw generated text (None: the engine failed on it), saved into ``parts`` as it arrives: every
    ``FLUSH_ROWS`` captions from the local engine's stream, every ``HTTP_CHUNK`` from a served model, the whole
    call from vLLM engines."""
    import ray.data

    if not images:
        return {}
    if caption.engine.kind in ("http", "vllm"):
        # A served model (http) is asked chunk by chunk, each saved; vLLM engines start once for the whole call
        step = HTTP_CHUNK if caption.engine.kind == "http" else len(images)
        produced: dict[str, str | None] = {}
        for chunk in (images[i : i + step] for i in range(0, len(images), step)):
            texts = generate(caption.engine, chunk, CaptionMessages(prompt), multimodal=True)
            done = {im["image_id"]: t for im, t in zip(chunk, texts, strict=True)}
            _flush(parts, done)
            produced |= done
        return produced
    ds = ray.data.from_items(images).map_batches(
        CaptionBatch,
        fn_constructor_kwargs={"caption": caption, "prompt": prompt},
        batch_format="numpy",
        **engine_pool_options(caption.engine),
    )
    produced, pending = {}, {}
    for row in ds.iter_rows():
        pending[str(row["image_id"])] = None if row["failed"] else str(row["text"])
        if len(pending) >= FLUSH_ROWS:
            _flush(parts, pending)
            produced, pending = produced | pending, {}
    _flush(parts, pending)
    return produced | pending


def _flush(parts: str, produced: dict[str, str | None]) -> None:
    """Save finished captions as one part file, so that a stage killed midway resumes after them."""
    if produced:
        storage.write_json_atomic(storage.join(parts, f"part-{uuid.uuid4().hex}.json"), produced)


def _finished(parts: str) -> dict[str, str | None]:
    """The captions a killed run of the same stage (same images, captioner and prompt) saved before it died."""
    if not storage.is_dir(parts):
        return {}
    done: dict[str, str | None] = {}
    for name, _ in storage.list_files(parts):
        done |= storage.read_json(storage.join(parts, name))
    return done


def caption_gallery(caption: CaptionSpec, manifest: dict[str, Any], job: str) -> dict[str, Any]:
    """Caption the images of ``caption.split`` into ``caption.output`` for the job named ``job``; return a
    report."""
    prompt = load_caption_prompt(caption.prompts)
    prompt.check_labels_allowed(caption.platform_labels, "caption.prompts")
    inputs_key = json.dumps(
        [manifest.get("inputs_key"), caption.model_dump(mode="json", exclude={"output"}), prompt.sha256],
        sort_keys=True,
    )
    saved = caption_store_report(caption.output)
    if saved is not None and saved.get("inputs_key") == inputs_key:
        return saved  # the same images, captioner and prompt: captioning again would write the same store
    started = time.perf_counter()
    images = gallery_images(manifest, caption.split)
    if not images:
        raise DatasetError(f"no {caption.split} images in the prepared dataset at {manifest['table']}")
    ownership.check_file(caption.output, "caption.output", is_caption_store)  # before any image is captioned
    ownership.claim_dir(f"{caption.output}.parts", ownership.Claim("caption.output", job, "caption"))
    parts = f"{caption.output}.parts/{storage.text_sha256(inputs_key)[:16]}"  # this run's finished captions
    resumed = _finished(parts)
    produced = resumed | _captions(caption, prompt, [im for im in images if im["image_id"] not in resumed], parts)
    prompt_sha256 = "" if _takes_no_prompt(caption) else prompt.sha256
    rows, failures = _checked(caption, prompt_sha256, images, produced)
    report = {
        "store": caption.output,
        "model_id": caption.engine.model,
        "prompt_sha256": prompt_sha256,
        "prompt": "none (the model takes no prompt)" if not prompt_sha256 else prompt.name,
        "platform_labels_in_prompt": bool(prompt_sha256) and prompt.platform_aware,
        "images": len(images),
        "captioned": len(rows),
        "failed_by_reason": dict(sorted(failures.items())),
        "examples": [[r["image_id"], r["caption"]] for r in rows[:3]],
        "resumed": len(resumed),  # captions a killed run had finished: not asked again
        "seconds": round(time.perf_counter() - started, 2),
        "inputs_key": inputs_key,
    }
    write_caption_store(caption.output, rows, report)
    storage.delete(storage.parent(parts))
    return report


def _checked(
    caption: CaptionSpec, prompt_sha256: str, images: list[dict[str, str]], produced: dict[str, str | None]
) -> tuple[list[dict[str, str]], Counter[str]]:
    """The store's rows (cleaned, checked captions) and the failures counted by reason."""
    rows: list[dict[str, str]] = []
    failures: Counter[str] = Counter()
    for image in images:
        raw = produced.get(image["image_id"])  # an image missing from the output counts as a failed call
        text, reason = caption_verdict(raw, caption.max_words)
        if text is None:
            failures[reason or "engine failed"] += 1
            continue
        row = {"image_id": image["image_id"], "caption": text, "model_id": caption.engine.model}
        rows.append(row | {"prompt_sha256": prompt_sha256})
    return rows, failures


def _takes_no_prompt(caption: CaptionSpec) -> bool:
    """A local image-to-text model (VisionEncoderDecoder) ignores the prompt; served VLMs always take it."""
    if caption.engine.kind != "transformers":
        return False
    from transformers import AutoConfig

    return bool(AutoConfig.from_pretrained(caption.engine.model).model_type == "vision-encoder-decoder")
