"""``make gpu-check`` (``geomoe bench gpu``): the real-size numbers that only a GPU can give, in one JSON.

- PE-MoE training step at the paper's size: XLM-R large (BGE-M3's architecture) + EVA02-L-14 at 384 px, 3 experts,
  random weights, bf16 autocast, the paper's per-GPU batch (128 over 8 GPUs), expert batching; samples/s, peak
  memory and MFU (FLOPs of one step counted by torch's FlopCounterMode, over the GPU's dense bf16 peak).
- SMGeo training step at 1024 px (Swin-T, 6 experts, top-2), the paper's batch 8; samples/s, peak memory, MFU.
- Exact search over 1M x 3 x 1024 bf16 rows resident on the GPU (geomoe.retrieval.search), 1 and 32 queries;
  the fraction of HBM bandwidth reached, measured in the same run by a large device-to-device copy.
- The Serve query encoder's throughput on the GPU (the text trunk, tails and gate a QueryEncoder replica runs),
  at batch 1 and 32.

Without a CUDA device it prints one line and exits 0. ``tiny=True`` runs every part at toy sizes on any device (the
unit test runs it on CPU, so the code a GPU machine runs is the code the tests run).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np
import torch

from geomoe.families.pe_moe.losses import pe_moe_objective
from geomoe.families.pe_moe.model import PEMoE
from geomoe.families.smgeo.losses import smgeo_objective
from geomoe.retrieval.search import exact_search

# Dense bf16 tensor-core peaks (vendor datasheets, SXM parts), TFLOP/s; MFU is reported only for these.
PEAK_BF16_TFLOPS = {"H200": 989.4, "H100": 989.4, "A100": 312.0, "L40S": 362.1, "L4": 121.0}
NO_GPU = "gpu-check: no CUDA device on this machine; nothing measured (run `make gpu-check` on a GPU machine)"


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
    smgeo: dict[str, Any]  # SMGeoModelSpec fields
    smgeo_batch: int
    gallery: int
    row_dim: int
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
    smgeo={},  # SMGeoModelSpec's defaults are the paper's
    smgeo_batch=8,
    gallery=1_000_000,
    row_dim=3 * 1024,
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
    smgeo={
        "reference_size": 128,
        "query_size": 64,
        "head_channels": 16,
        "backbone": {
            "pretrained": None,
            "embed_dim": 16,
            "depths": [2, 2, 2],
            "num_heads": [1, 2, 4],
            "window_size": 4,
            "drop_path": 0.0,
        },
        "gmoe": {"experts": 3, "top_k": 2, "grid": [4, 4], "blocks": ["none", "even", "even"]},
    },
    smgeo_batch=2,
    gallery=5_000,
    row_dim=96,
    steps=2,
)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _release(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _timed(fn: Callable[[], Any], device: torch.device, repeats: int) -> float:
    """Median seconds of ``fn`` after one warm-up call."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def peak_tflops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS.items() if key in name), None)


def _train_step_report(
    model: torch.nn.Module, step: Callable[[], torch.Tensor], batch: int, device: torch.device, repeats: int
) -> dict[str, Any]:
    """samples/s, peak memory and MFU of ``step`` (forward + backward + AdamW update on the trainable parameters)."""
    from torch.utils.flop_counter import FlopCounterMode

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-5)

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = step()
        loss.backward()
        optimizer.step()

    with FlopCounterMode(display=False) as counter:
        train_step()  # also the warm-up
    flops = counter.get_total_flops()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = _timed(train_step, device, repeats)
    peak = peak_tflops(device)
    achieved = flops / seconds / 1e12
    return {
        "batch": batch,
        "s_per_step": round(seconds, 4),
        "samples_per_s": round(batch / seconds, 1),
        "flop_per_step": int(flops),
        "achieved_tflops": float(f"{achieved:.4g}"),
        "mfu": None if peak is None else round(achieved / peak, 3),
        "peak_memory_GiB": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else None,
        "trainable_M": round(sum(p.numel() for p in model.parameters() if p.requires_grad) / 1e6, 1),
        "frozen_M": round(sum(p.numel() for p in model.parameters() if not p.requires_grad) / 1e6, 1),
    }


def _pe_moe(sizes: Sizes, device: torch.device) -> PEMoE:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    from geomoe.models.encoders import ImageTrunk, TextTrunk, load_image_tower

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

    report = _train_step_report(model, step, b, device, sizes.steps)
    return {"text_tokens": sizes.text_tokens, "image_size": sizes.image_size, **report}


def smgeo_step(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    from geomoe.families.smgeo.model import SMGeo
    from geomoe.families.smgeo.spec import SMGeoModelSpec

    spec = SMGeoModelSpec.model_validate(sizes.smgeo)
    model = SMGeo(spec).to(device).train()
    b, size = sizes.smgeo_batch, spec.reference_size
    query = torch.randn(b, 3, spec.query_size, spec.query_size, device=device)
    reference = torch.randn(b, 3, size, size, device=device)
    clicks = torch.full((b, 2), spec.query_size / 2, device=device)
    boxes = torch.tensor([[size * 0.4, size * 0.4, size * 0.6, size * 0.6]] * b, device=device)

    def step() -> torch.Tensor:
        return smgeo_objective(model(query, clicks, reference), boxes, (size, size), spec.loss)[0]

    report = _train_step_report(model, step, b, device, sizes.steps)
    return {"image_size": size, "experts": spec.gmoe.experts, "top_k": spec.gmoe.top_k, **report}


def copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """GB/s read + written by a large device-to-device copy (median of 5)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    seconds = _timed(lambda: dst.copy_(src), device, 5)
    return 2 * nbytes / seconds / 1e9


def gpu_search(sizes: Sizes, device: torch.device) -> dict[str, Any]:
    generator = torch.Generator(device=device).manual_seed(0)
    dim = sizes.row_dim
    rows = torch.empty(sizes.gallery, dim, dtype=torch.bfloat16, device=device)
    for start in range(0, sizes.gallery, 100_000):  # unit rows, made in slices (no float32 copy of the whole)
        part = torch.randn(min(100_000, sizes.gallery - start), dim, device=device, generator=generator)
        rows[start : start + len(part)] = torch.nn.functional.normalize(part, dim=1).to(torch.bfloat16)
    bandwidth = copy_bandwidth(device, min(4 << 30, 2 * rows.numel() * rows.element_size()))
    out: dict[str, Any] = {
        "rows": sizes.gallery,
        "dim": dim,
        "dtype": "bfloat16",
        "copy_bandwidth_GBps": round(bandwidth),
    }
    gb = rows.numel() * rows.element_size() / 1e9
    for q in (1, 32):
        queries = torch.randn(q, dim, generator=generator, device=device).cpu().numpy()

        def search(queries: np.ndarray = queries) -> None:
            exact_search(rows, queries, 10)

        seconds = _timed(search, device, 10)
        out[f"q{q}"] = {"ms": round(1000 * seconds, 2), "bandwidth_fraction": round(gb / seconds / bandwidth, 2)}
    return out


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

        seconds = _timed(encode, device, 10)
        out[f"batch{batch}"] = {"ms": round(1000 * seconds, 2), "queries_per_s": round(batch / seconds, 1)}
    return out


def gpu_check(tiny: bool = False, device: str | None = None) -> dict[str, Any]:
    """Every part on ``device`` (default: the first GPU); without one (and not ``tiny``), one line saying so."""
    if device is None and not torch.cuda.is_available():
        return {"benchmark": "gpu", "gpu": None, "summary": NO_GPU}
    where = torch.device(device or "cuda")
    sizes = TINY if tiny else REAL
    torch.manual_seed(0)
    started = time.perf_counter()
    result: dict[str, Any] = {
        "benchmark": "gpu",
        "gpu": torch.cuda.get_device_name(where) if where.type == "cuda" else None,
        "device": str(where),
        "sizes": "tiny" if tiny else "real",
        "peak_bf16_tflops": peak_tflops(where),
        "torch": torch.__version__,
    }
    pe_moe = _pe_moe(sizes, where)  # built once (about 1 B parameters): a few training steps, then encoding
    result["pe_moe_step"] = pe_moe_step(pe_moe, sizes, where)
    result["serve_encoder"] = encoder_throughput(pe_moe, sizes, where)
    del pe_moe  # its memory goes before SMGeo's and the gallery's
    _release(where)
    result["smgeo_step"] = smgeo_step(sizes, where)
    _release(where)
    result["exact_search"] = gpu_search(sizes, where)
    result["seconds"] = round(time.perf_counter() - started, 1)
    pe, sm, search, enc = (result[k] for k in ("pe_moe_step", "smgeo_step", "exact_search", "serve_encoder"))
    result["summary"] = (
        f"gpu-check on {result['gpu'] or where} ({result['sizes']} sizes, {result['seconds']} s): "
        f"PE-MoE step {pe['samples_per_s']} samples/s (MFU {pe['mfu']}, peak {pe['peak_memory_GiB']} GiB); "
        f"SMGeo step {sm['samples_per_s']} samples/s (MFU {sm['mfu']}, peak {sm['peak_memory_GiB']} GiB); "
        f"search {search['rows']:,} rows {search['q1']['ms']} ms / 32 queries {search['q32']['ms']} ms "
        f"({search['q1']['bandwidth_fraction']:.0%} of copy bandwidth); "
        f"encoder {enc['batch32']['queries_per_s']} q/s at batch 32"
    )
    return result
