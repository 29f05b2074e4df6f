"""Checkpoints: the trainable state plus the full resolved job spec, stage and epoch.

A model's ``frozen_prefixes`` (state keys of frozen backbones) are not saved: they are the backbone weights named
in the spec and are reloaded from there, which keeps a real-size PE-MoE checkpoint at the size of its experts
rather than of BGE-M3 + EVA02-L. A family's loader (geomoe.families.base.Family.load_checkpoint) builds the
model from the saved spec and loads the state into it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from geomoe import storage
from geomoe.config import JobSpec
from geomoe.errors import ModelError

STATE_FILE = "state.pt"


def frozen_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "frozen_prefixes", ()))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    frozen = frozen_prefixes(model)
    return {k: v.detach().cpu() for k, v in model.state_dict().items() if not frozen or not k.startswith(frozen)}


def save_checkpoint(
    directory: str | Path, model: nn.Module, spec: JobSpec, stage: int, epoch: int, **extra: Any
) -> Path:
    path = Path(directory) / STATE_FILE
    payload = {"model": trainable_state(model), "spec": spec.model_dump(mode="json"), "stage": stage, "epoch": epoch}
    torch.save({**payload, **extra}, path)
    return path


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The checkpoint in ``directory``: a local path, a URI (read through its own filesystem) or a model
    registry URI, ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (geomoe.tracking)."""
    from geomoe.tracking import checkpoint_location

    path = storage.join(checkpoint_location(str(directory)), STATE_FILE)
    if not storage.is_file(path):
        raise ModelError(f"{storage.redact(path)}: not a geomoe checkpoint (no {STATE_FILE})")
    with storage.open_input(path) as handle:
        return dict(torch.load(handle, map_location="cpu", weights_only=False))


def read_trained(directory: str | Path) -> tuple[dict[str, Any], JobSpec]:
    """A checkpoint's payload and the job spec it was trained with (what every family's loader starts from)."""
    payload = read_checkpoint(directory)
    return payload, JobSpec.model_validate(payload["spec"])


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    missing, unexpected = model.load_state_dict(state, strict=False)
    frozen = frozen_prefixes(model)
    missing = [k for k in missing if not frozen or not k.startswith(frozen)]
    if missing or unexpected:
        raise ModelError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
