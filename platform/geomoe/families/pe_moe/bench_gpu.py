"""PE-MoE's part of ``make gpu-check`` (geomoe.on_ray.bench.gpu): the training step at the paper's size (XLM-R large,
BGE-M3's architecture, + EVA02-L-14 at 384 px, 3 experts, random weights, bf16 autocast, the paper's per-GPU batch
of 128 over 8 GPUs, expert batching: samples/s, peak memory, MFU), and the Serve query encoder's throughput (the
text trunk, tails and gate a QueryEncoder replica runs) at batch 1 and 32."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import torch

from geomoe.families.pe_moe.losses import pe_moe_objective
from geomoe.families.pe_moe.model import PEMoE
from geomoe.on_ray.bench.gpu import timed, train_step_report


class TextSize(NamedTuple):
    """An XLM-R configuration's sizes."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int


@dataclass(frozen=True)
class Sizes:
    text: TextSize
    text_tail: int
    image: str
    image_size: int
    image_tail: int
    embed_dim: int
    pe_moe_batch: int
    text_tokens: int
    steps: int


REAL = Sizes(
    text=TextSize(250_002, 1024, 24, 16, 4096),  # XLM-R large: BGE-M3's architecture
    text_tail=2,
    image="EVA02-L-14",
    image_size=384,
    image_tail=4,
    embed_dim=1024,
    pe_moe_batch=16,
    text_tokens=64,
    steps=10,
)
TINY = Sizes(
    text=TextSize(1000, 32, 3, 2, 64),
    text_tail=1,
    image="geomoe-eva02-micro",
    image_size=64,
    image_tail=1,
    embed_dim=32,
    pe_moe_batch=6,
    text_tokens=16,
    steps=2,
)


def _pe_moe(sizes: Sizes, device: torch.device) -> PEMoE:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from geomoe.core.models.encoders import ImageTrunk, TextTrunk, load_image_tower

    text_config = XLMRobertaConfig(
        **sizes.text._asdict(), max_position_embeddings=514, type_vocab_size=1, pad_token_id=1
    )
    text = XLMRobertaModel(text_config, add_pooling_layer=False)
    image = load_image_tower(sizes.image, None, sizes.image_size)
    model = PEMoE(TextTrunk(text, sizes.text_tail), ImageTrunk(image, sizes.image_tail), 3, sizes.embed_dim)
    return model.to(device)


def pe_moe_step(model: PEMoE, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    model.train()
    b = sizes.pe_moe_batch
    ids = torch.randint(5, sizes.text.vocab_size, (b, sizes.text_tokens), device=device)
    mask = torch.ones_like(ids)
    images = torch.randn(b, 3, sizes.image_size, sizes.image_size, device=device)
    building = torch.arange(b, device=device) // 2  # two captions per building: positives in the batch
    scale = torch.tensor(14.0, device=device)
    calls = iter(range(1 << 30))

    def step() -> torch.Tensor:
        # expert batching (sec. 3.2): each global batch is one expert's subset; the steps cycle through experts
        expert = torch.full((b,), next(calls) % 3, device=device)
        return pe_moe_objective(model(ids, mask, images, expert), expert, building, scale, 1.0)[0]

    report = train_step_report(model, step, b, device, sizes.steps)
    return {"text_tokens": sizes.text_tokens, "image_size": sizes.image_size, **report}


def encoder_throughput(model: PEMoE, sizes: Sizes, device: torch.device) -> dict[str, Any]:
    """Queries/s of what a QueryEncoder replica runs per batch: the text trunk, the expert tails and the gate."""
    model.eval()
    out: dict[str, Any] = {}
    for batch in (1, 32):
        ids = torch.randint(5, sizes.text.vocab_size, (batch, 32), device=device)  # a query: <= 32 tokens
        mask = torch.ones_like(ids)

        def encode(ids: torch.Tensor = ids, mask: torch.Tensor = mask) -> None:
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                shared, _ = model.encode_text(ids, mask)
                model.gate_weights(shared)

        seconds = timed(encode, device, 10)
        out[f"batch{batch}"] = {"ms": round(1000 * seconds, 2), "queries_per_s": round(batch / seconds, 1)}
    return out


def gpu_check(tiny: bool, device: torch.device) -> tuple[dict[str, Any], str]:
    """The model built once (about 1 B parameters at the real size): encoding, then a few training steps."""
    sizes = TINY if tiny else REAL
    model = _pe_moe(sizes, device)
    encoder = encoder_throughput(model, sizes, device)  # first: the step holds the frozen layers in bf16 after
    step = pe_moe_step(model, sizes, device)
    line = (
        f"PE-MoE step {step['samples_per_s']} samples/s (MFU {step['mfu']}, peak {step['peak_memory_GiB']} GiB); "
        f"encoder {encoder['batch32']['queries_per_s']} q/s at batch 32"
    )
    return {"pe_moe_step": step, "serve_encoder": encoder}, line
