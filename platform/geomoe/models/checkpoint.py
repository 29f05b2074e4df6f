"""Checkpoints: the trainable state plus the full resolved job spec, stage and epoch.

PE-MoE's frozen trunks are not saved: they are the backbone weights named in the spec and are reloaded from
there, which keeps a real-size checkpoint at the size of the experts rather than of BGE-M3 + EVA02-L.
SMGeo trains everything, so its checkpoint is the whole model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomoe import storage
from geomoe.config import JobSpec
from geomoe.models.factory import build_pe_moe
from geomoe.models.pe_moe import PEMoE

STATE_FILE = "state.pt"
FROZEN_PREFIXES = ("text_trunk.", "image_trunk.")


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not k.startswith(FROZEN_PREFIXES)}


def save_checkpoint(
    directory: str | Path, model: nn.Module, spec: JobSpec, stage: int, epoch: int, **extra: Any
) -> Path:
    path = Path(directory) / STATE_FILE
    payload = {"model": trainable_state(model), "spec": spec.model_dump(mode="json"), "stage": stage, "epoch": epoch}
    torch.save({**payload, **extra}, path)
    return path


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The checkpoint in ``directory``, a local path or a URI (read through its own filesystem)."""
    path = storage.join(directory, STATE_FILE)
    if not storage.is_file(path):
        raise FileNotFoundError(f"{storage.redact(path)}: not a geomoe checkpoint (no {STATE_FILE})")
    with storage.open_input(path) as handle:
        return dict(torch.load(handle, map_location="cpu", weights_only=False))


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.startswith(FROZEN_PREFIXES)]
    if missing or unexpected:
        raise ValueError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def load_pe_moe(directory: str | Path) -> tuple[PEMoE, Any, JobSpec, dict[str, Any]]:
    """(model, tokenizer, the spec it was trained with, the raw checkpoint) from a checkpoint folder."""
    payload = read_checkpoint(directory)
    spec = JobSpec.model_validate(payload["spec"])
    model, tokenizer = build_pe_moe(spec.pe_moe)
    load_into(model, payload["model"])
    return model.eval(), tokenizer, spec, payload


def load_smgeo(directory: str | Path) -> tuple[Any, JobSpec, dict[str, Any]]:
    """(SMGeo model in eval mode, the spec it was trained with, the raw checkpoint) from a checkpoint folder."""
    from geomoe.models.smgeo import SMGeo

    payload = read_checkpoint(directory)
    spec = JobSpec.model_validate(payload["spec"])
    model = SMGeo(spec.smgeo)
    load_into(model, payload["model"])
    return model.eval(), spec, payload
