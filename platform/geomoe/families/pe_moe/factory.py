"""Build PE-MoE from its model section (and load it from a checkpoint); build tiny local models first when the
spec asks for them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geomoe.core.config import JobSpec
from geomoe.core.errors import ModelError
from geomoe.core.models.encoders import ImageTrunk, TextTrunk, load_image_tower, load_text_model
from geomoe.families.pe_moe.model import PEMoE
from geomoe.families.pe_moe.spec import PEMoEModelSpec

log = logging.getLogger(__name__)


def ensure_tiny_models(spec: PEMoEModelSpec, corpus: Iterable[str]) -> None:
    """With ``spec.tiny``, write a random text model at text.source and image weights at image.pretrained.

    A text model already there is reused only if it was built from the same corpus and configuration (its
    recorded recipe): a path names one backbone, so a job never trains on one that another job's captions built.
    One without a recipe (an older geomoe's) is rebuilt; one with another recipe is an error.
    """
    from geomoe.core.models.tiny import built_recipe, save_tiny_text_model, text_model_recipe

    tiny = spec.tiny
    if tiny is None:
        return
    corpus = list(corpus)
    text_dir = Path(spec.text.source)
    config = (tiny.text_hidden, tiny.text_layers, tiny.text_heads, spec.text.max_length, tiny.seed, None)
    wanted = text_model_recipe(corpus, *config)
    if (text_dir / "config.json").is_file():
        built = built_recipe(text_dir)
        if built == wanted:
            return _ensure_tiny_image(spec, tiny.seed)
        if built is not None:
            raise ModelError(
                f"model.text.source: {text_dir} holds a tiny text model built from other captions or settings "
                f"({built['corpus_texts']} texts, sha256 {built['corpus_sha256'][:12]}; this job's: "
                f"{wanted['corpus_texts']}, {wanted['corpus_sha256'][:12]}, config {built['config']} vs "
                f"{wanted['config']}): point model.text.source (and model.image.pretrained) at another folder, "
                "or remove it to rebuild"
            )
    log.info("building a tiny random text model at %s", text_dir)
    save_tiny_text_model(text_dir, corpus, *config[:5])
    _ensure_tiny_image(spec, tiny.seed)


def _ensure_tiny_image(spec: PEMoEModelSpec, seed: int) -> None:
    from geomoe.core.models.tiny import save_tiny_image_model

    assert spec.image.pretrained is not None  # PEMoEModelSpec: tiny needs image.pretrained
    image_file = Path(spec.image.pretrained)
    if not image_file.is_file():
        log.info("building a tiny random image model at %s", image_file)
        save_tiny_image_model(image_file, spec.image.name, seed)


def build_pe_moe(spec: PEMoEModelSpec) -> tuple[PEMoE, Any]:
    """(PE-MoE model, tokenizer) from the spec: real hub ids / paths, or the tiny local models."""
    text_model, tokenizer = load_text_model(spec.text.source)
    eva = load_image_tower(spec.image.name, spec.image.pretrained, spec.image.image_size)
    model = PEMoE(
        TextTrunk(text_model, spec.text.tail_layers),
        ImageTrunk(eva, spec.image.tail_blocks),
        num_experts=len(spec.experts),
        embed_dim=spec.embed_dim,
        fusion=spec.fusion,
        gate_hidden=spec.gate_hidden,
        gate_top_k=spec.gate_top_k,
        static_weights=spec.static_weights,
        temperature=spec.temperature,
        text_pool=spec.text.pool,
        image_pool=spec.image.pool,
        learn_temperature=spec.learn_temperature,
    )
    return model, tokenizer


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> tuple[Any, Any]:
    """(input_ids, attention_mask) padded to the batch and truncated to ``max_length`` tokens."""
    enc = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    return enc["input_ids"], enc["attention_mask"]


def load_pe_moe(directory: str) -> tuple[PEMoE, Any, JobSpec, dict[str, Any]]:
    """(model in eval mode, tokenizer, the spec it was trained with, the raw checkpoint) from a checkpoint folder."""
    from geomoe.core.models.checkpoint import load_into, read_trained

    payload, spec = read_trained(directory)
    model, tokenizer = build_pe_moe(spec.model_as(PEMoEModelSpec))
    load_into(model, payload["model"])
    return model.eval(), tokenizer, spec, payload
