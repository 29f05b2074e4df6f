"""SMGeo's part of ``make gpu-check`` (geomoe.on_ray.bench.gpu): the training step at 1024 px (Swin-T, 6 experts,
top-2), the paper's batch 8: samples/s, peak memory, MFU."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from geomoe.families.smgeo.losses import smgeo_objective
from geomoe.on_ray.bench.gpu import train_step_report


@dataclass(frozen=True)
class Sizes:
    smgeo: dict[str, Any] = field(default_factory=dict)  # SMGeoModelSpec fields
    smgeo_batch: int = 8
    steps: int = 10


REAL = Sizes()  # SMGeoModelSpec's defaults are the paper's
TINY = Sizes(
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
    steps=2,
)


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

    report = train_step_report(model, step, b, device, sizes.steps)
    return {"image_size": size, "experts": spec.gmoe.experts, "top_k": spec.gmoe.top_k, **report}


def gpu_check(tiny: bool, device: torch.device) -> tuple[dict[str, Any], str]:
    step = smgeo_step(TINY if tiny else REAL, device)
    line = f"SMGeo step {step['samples_per_s']} samples/s (MFU {step['mfu']}, peak {step['peak_memory_GiB']} GiB)"
    return {"smgeo_step": step}, line
