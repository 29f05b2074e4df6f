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

    They are reused only if the text folder's recorded recipe (the corpus, both models' settings and their seed)
    is this job's: a path names one backbone, so a job never trains on one that another job's captions built. A
    folder without a recipe (an older geomoe's) is rebuilt, the image weights with it; another recipe is an error.
    """
    from geomoe.core.models.tiny import (
        built_recipe,
        save_tiny_image_model,
        save_tiny_text_model,
        text_model_recipe,
        text_settings,
    )

    tiny = spec.tiny
    if tiny is None:
        return
    corpus = list(corpus)
    text_dir, image_file = Path(spec.text.source), Path(spec.image.pretrained or "")
    text = (tiny.text_hidden, tiny.text_layers, tiny.text_heads, spec.text.max_length, tiny.seed)
    also = {"image": spec.image.name}
    wanted = text_model_recipe(corpus, text_settings(*text, None) | also)
    built = built_recipe(text_dir) if (text_dir / "config.json").is_file() else None
    if built == wanted:
        if not image_file.is_file():
            save_tiny_image_model(image_file, spec.image.name, tiny.seed)
        return
    if built is not None:
        raise ModelError(
            f"model.text.source: {text_dir} holds a tiny text model built from other captions or settings "
            f"({_described(built)}; this job's: {_described(wanted)}): point model.text.source and "
            "model.image.pretrained at other folders, or remove them to rebuild"
        )
    log.info("building tiny random models at %s and %s", text_dir, image_file)
    save_tiny_text_model(text_dir, corpus, *text, also=also)
    save_tiny_image_model(image_file, spec.image.name, tiny.seed)


def _described(recipe: dict[str, Any]) -> str:
    return (
        f"{recipe.get('corpus_texts')} texts, sha256 {str(recipe.get('corpus_sha256'))[:12]}, {recipe.get('settings')}"
    )


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
