"""PE-MoE's training step (worker side): stage 1 contrastive per expert + gate; stage 2 adds mined hard
negatives. The training engine (geomoe.on_ray.train.loop) runs it."""

from __future__ import annotations

import hashlib

import numpy as np
import torch

from geomoe.core.config import JobSpec
from geomoe.families.pe_moe.factory import build_pe_moe, tokenize
from geomoe.families.pe_moe.losses import pe_moe_objective
from geomoe.families.pe_moe.spec import PEMoEModelSpec, PEMoETrainSpec
from geomoe.on_ray.train.loop import Batch, LoopConfig, TrainingTask


def pick_texts(batch: Batch, use_statements: bool, rng: np.random.Generator) -> list[str]:
    """The caption, or half of the time one of its short statements (PE-MoE's sentence-level alignment)."""
    texts = []
    for caption, statements in zip(batch["caption"], batch["statements"], strict=True):
        if use_statements and len(statements) > 1 and rng.random() < 0.5:
            caption = statements[int(rng.integers(0, len(statements)))]
        texts.append(str(caption))
    return texts


def building_codes(building_ids: np.ndarray) -> np.ndarray:
    """int64 codes of building ids, the same on every worker (the contrastive loss compares gathered rows)."""
    digest = [hashlib.blake2b(str(b).encode(), digest_size=8).digest() for b in building_ids]
    return np.array([int.from_bytes(d, "little", signed=True) for d in digest], dtype=np.int64)


def training_task(spec: JobSpec, loop: LoopConfig, rank: int) -> TrainingTask:
    model_spec, train = spec.model_as(PEMoEModelSpec), spec.train_as(PEMoETrainSpec)
    model, tokenizer = build_pe_moe(model_spec)
    rng = np.random.default_rng([spec.seed, rank, loop.stage])
    weights = {"gate_weight": train.gate_weight if model.fusion == "dynamic" and model.num_experts > 1 else 0.0}
    if loop.stage == 2:
        weights |= {"contrastive_weight": train.stage2_contrastive_weight, "hard_weight": train.stage2_hard_weight}

    def step(wrapped: torch.nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
        texts = pick_texts(batch, train.use_statements, rng)
        ids, mask = tokenize(tokenizer, texts, model_spec.text.max_length)
        negatives = torch.from_numpy(batch["negatives"]).to(device) if loop.stage == 2 else None
        experts = torch.from_numpy(batch["expert"]).to(device)
        buildings = torch.from_numpy(building_codes(batch["building_id"])).to(device)
        images = torch.from_numpy(batch["image"]).to(device)
        out = wrapped(ids.to(device), mask.to(device), images, experts, negatives)
        return pe_moe_objective(out, experts, buildings, out.scale, **weights)

    return TrainingTask(model=model, step=step)
