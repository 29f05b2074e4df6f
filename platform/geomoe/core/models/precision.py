"""Frozen weights held in the autocast dtype, and a counter that shows what a step dispatches (core, no Ray).

Autocast keeps a cast only for a leaf that requires grad: a frozen weight is cast from fp32 to bf16 again by every
op that reads it, in every step. On one H200 casts were the largest GPU op of PE-MoE's real-size step
(``aten::copy_``: 16% of its GPU time; ../shared/gpu/measured-2026-12-04), its frozen trunks' weights among them
(about 1 ms of the 13.8 ms by their bytes; the rest are activations). Holding the frozen layers autocast would cast
in bf16 once gives the same numbers (the same rounding, done once) and no cast of them per step. SMGeo trains its
whole backbone: nothing of it is frozen, and its casts (24%) are its trainable weights' and activations'.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

# the layers whose weights autocast casts to its lower precision (F.linear and the convolutions): held in it, they
# compute as under autocast; norms and embeddings stay fp32 (autocast runs norms in fp32, and casts nothing else)
CAST_BY_AUTOCAST = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


ORIGINALS = "held_originals"  # the model attribute keeping what hold_frozen_in replaced, by state key


def hold_frozen_in(model: nn.Module, dtype: torch.dtype) -> int:
    """Cast, in place and once, the parameters of every layer of ``model`` that autocast would cast at each use
    and that nothing trains; returns how many parameters (elements) now sit in ``dtype``. Only for a model that
    runs under ``torch.autocast(..., dtype)`` from here on: outside it, an fp32 input meets a ``dtype`` weight.
    The values replaced stay on the host (``originals``): a checkpoint saves them, not their rounding, since what
    loads it (evaluation, mining, serving) may run the weights in fp32."""
    held, kept = 0, getattr(model, ORIGINALS, {})
    for prefix, module in model.named_modules():
        params = dict(module.named_parameters(prefix=prefix, recurse=False))
        if isinstance(module, CAST_BY_AUTOCAST) and params and not any(p.requires_grad for p in params.values()):
            for name, param in params.items():
                if param.dtype != dtype:
                    kept.setdefault(name, param.data.detach().to("cpu", copy=True))
                    param.data = param.data.to(dtype)
                    held += param.numel()
    object.__setattr__(model, ORIGINALS, kept)  # a plain attribute: not a buffer, not in the state dict
    return held


def originals(model: nn.Module) -> dict[str, torch.Tensor]:
    """The values ``hold_frozen_in`` replaced in ``model``, by state key (empty when it held nothing)."""
    return dict(getattr(model, ORIGINALS, {}))


class DispatchCount(TorchDispatchMode):
    """Counts the aten ops run under it (forward, backward and optimizer alike; on a GPU about one kernel each) and
    the bytes that dtype casts read from ``watched`` tensors (a model's frozen parameters)."""

    def __init__(self, watched: list[torch.Tensor]) -> None:
        super().__init__()
        self.ops = 0
        self.cast_bytes = 0
        self._watched = {t.untyped_storage().data_ptr() for t in watched}

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.ops += 1
        if func is torch.ops.aten._to_copy.default and isinstance(args[0], torch.Tensor):
            source = args[0]
            if source.untyped_storage().data_ptr() in self._watched:
                self.cast_bytes += source.numel() * source.element_size()
        return func(*args, **(kwargs or {}))


def dispatched(step: Callable[[], Any], watched: list[torch.Tensor]) -> DispatchCount:
    """Run ``step`` once under a ``DispatchCount`` of ``watched``; returns the count."""
    count = DispatchCount(watched)
    with count:
        step()
    return count


def frozen_parameters(model: nn.Module) -> list[torch.Tensor]:
    return [p for p in model.parameters() if not p.requires_grad]
