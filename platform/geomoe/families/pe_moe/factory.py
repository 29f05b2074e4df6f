"""Build PE-MoE from its model section (and load it from a checkpoint); build tiny local models first when the
spec asks for them."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geomoe.core.config import JobSpec
from geomoe.core.models.encoders import ImageTrunk, TextTrunk, load_image_tower, load_text_model
from geomoe.families.pe_moe.model import PEMoE
from geomoe.families.pe_moe.spec import PEMoEModelSpec

log = logging.getLogger(__name__)


def ensure_tiny_models(spec: PEMoEModelSpec, corpus: Iterable[str], seed: int = 0) -> None:
    """With ``spec.tiny``, write a random text model at text.source and image weights at image.pretrained."""
    from geomoe.core.models.tiny import save_tiny_image_model, save_tiny_text_model

    if spec.tiny is None:
        return
    text_dir = Path(spec.text.source)
    if not (text_dir / "config.json").is_file():
        log.info("building a tiny random text model at %s", text_dir)
        tiny = spec.tiny
        save_tiny_text_model(
            text_dir, corpus, tiny.text_hidden, tiny.text_layers, tiny.text_heads, spec.text.max_length, seed
        )
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
