"""Checkpoints: the trainable state plus the full resolved job spec, stage and epoch, in files that cannot run code.

A checkpoint is a folder:

- ``model.safetensors``: the trainable weights (safetensors: a JSON header and raw tensor bytes, nothing executable);
- ``training.safetensors``: the tensors of the training state (the optimizer's moments), when there is one;
- ``checkpoint.json``: the format version, the job spec, stage, epoch and the training state's other values
  (learning rates, step counts), with references into ``training.safetensors`` where a tensor sat. It is written
  last, so a folder without it is not a finished checkpoint.

Nothing on a load path unpickles: serving loads the checkpoints its config names, and a pickle from an untrusted
source runs code on every replica. The old format (one pickled ``state.pt``) is refused with the command that
converts it, which reads it with torch's weights-only loader (tensors, numbers, strings and containers only).

A model's ``frozen_prefixes`` (state keys of frozen backbones) are not saved: they are the backbone weights named
in the spec and are reloaded from there, which keeps a real-size PE-MoE checkpoint at the size of its experts
rather than of BGE-M3 + EVA02-L. A family's loader (geomoe.families.base.Family.load_checkpoint) builds the
model from the saved spec and loads the state into it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import nn

from geomoe.core import ownership, storage
from geomoe.core.config import JobSpec
from geomoe.core.errors import ModelError
from geomoe.core.models.precision import originals

FORMAT = "geomoe-checkpoint"
VERSION = 2
MANIFEST_FILE = "checkpoint.json"
WEIGHTS_FILE = "model.safetensors"
TRAINING_FILE = "training.safetensors"
PICKLED_FILE = "state.pt"  # the version-1 format: refused on load, converted by `geomoe convert`
_TENSOR, _ITEMS = "$tensor", "$items"


def frozen_prefixes(model: nn.Module) -> tuple[str, ...]:
    return tuple(getattr(model, "frozen_prefixes", ()))


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state to save: frozen layers held in bf16 for training (``hold_frozen_in``) as they were loaded."""
    frozen, kept = frozen_prefixes(model), originals(model)
    state = model.state_dict()
    return {k: kept.get(k, v).detach().cpu() for k, v in state.items() if not frozen or not k.startswith(frozen)}


def save_checkpoint(
    directory: str | Path, model: nn.Module, spec: JobSpec, stage: int, epoch: int, **extra: Any
) -> Path:
    """Write the checkpoint folder; ``extra`` (optimizer and scheduler state dicts) is kept as training state."""
    return write_payload(
        directory,
        {
            "model": trainable_state(model),
            "spec": spec.model_dump(mode="json"),
            "stage": stage,
            "epoch": epoch,
            **extra,
        },
    )


def write_payload(directory: str | Path, payload: dict[str, Any]) -> Path:
    """Write a checkpoint's payload (``model``, ``spec``, ``stage``, ``epoch`` and any training state)."""
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    training = {k: _to_json(v, k, tensors) for k, v in payload.items() if k not in ("model", "spec", "stage", "epoch")}
    storage.write_bytes_atomic(folder / WEIGHTS_FILE, save_tensors(_standalone(payload["model"])))
    if tensors:
        storage.write_bytes_atomic(folder / TRAINING_FILE, save_tensors(_standalone(tensors)))
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "spec": payload["spec"],
        "stage": payload["stage"],
        "epoch": payload["epoch"],
        "training": training,
    }
    storage.write_bytes_atomic(folder / MANIFEST_FILE, json.dumps(manifest).encode())
    return folder / MANIFEST_FILE


def read_checkpoint(directory: str | Path) -> dict[str, Any]:
    """The checkpoint in ``directory``: a local path, a URI (read through its own filesystem) or a model
    registry URI, ``models:/<name>/<version>`` or ``models:/<name>@<alias>`` (geomoe.core.tracking). Returns
    ``{"model": state, "spec", "stage", "epoch", **training state}``."""
    from geomoe.core.tracking import checkpoint_location

    folder = checkpoint_location(str(directory))
    manifest = _manifest(folder)
    payload = {
        "model": _tensors(storage.join(folder, WEIGHTS_FILE)),
        "spec": manifest["spec"],
        "stage": manifest["stage"],
        "epoch": manifest["epoch"],
    }
    training = manifest.get("training") or {}
    saved = _tensors(storage.join(folder, TRAINING_FILE), required=False)
    return {**payload, **{k: _from_json(v, saved) for k, v in training.items()}}


def read_trained(directory: str | Path) -> tuple[dict[str, Any], JobSpec]:
    """A checkpoint's payload and the job spec it was trained with (what every family's loader starts from)."""
    payload = read_checkpoint(directory)
    return payload, JobSpec.model_validate(payload["spec"])


def load_into(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # a tensor of another shape: the model was built differently
        raise ModelError(f"checkpoint does not fit the model: {str(err)[:500]}") from err
    frozen = frozen_prefixes(model)
    missing = [k for k in missing if not frozen or not k.startswith(frozen)]
    if missing or unexpected:
        raise ModelError(f"checkpoint does not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")


def is_current(directory: str | Path) -> bool:
    """A checkpoint folder already in this format (its manifest is there)."""
    return storage.is_file(storage.join(str(directory), MANIFEST_FILE))


def convert_pickled(directory: str | Path, out: str | Path | None = None) -> Path:
    """Convert a version-1 checkpoint (``state.pt``) into this format, in place or into ``out``. The pickle is
    read with ``weights_only=True``: tensors, numbers, strings and containers load, anything that would run code
    is refused (a ModelError naming the file)."""
    source = Path(directory) / PICKLED_FILE
    if not source.is_file():
        raise ModelError(f"{source}: not found (a version-1 checkpoint is a folder holding {PICKLED_FILE})")
    try:
        payload = torch.load(source, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError (or others) for anything beyond plain data
        raise ModelError(f"{source}: refused, it holds more than weights and plain data ({err})") from None
    if not isinstance(payload, dict) or not {"model", "spec", "stage", "epoch"} <= payload.keys():
        raise ModelError(f"{source}: not a geomoe checkpoint (needs model, spec, stage and epoch)")
    if out is not None:
        ownership.claim_dir(out, ownership.Claim("--out", payload["spec"].get("name", ""), "convert"))
    return write_payload(out or directory, payload)


def trained_family(directory: str | Path) -> tuple[str | None, list[str]]:
    """The ``model.name`` a checkpoint was trained with (None: the default family) and the job's ``families:``
    plugin modules: what picks its family in the registry, from the manifest alone (no weights read)."""
    from geomoe.core.tracking import checkpoint_location

    spec = _manifest(checkpoint_location(str(directory)))["spec"]
    return (spec.get("model") or {}).get("name"), list(spec.get("families") or [])


def _manifest(folder: str) -> dict[str, Any]:
    path = storage.join(folder, MANIFEST_FILE)
    if not storage.is_file(path):
        if storage.is_file(storage.join(folder, PICKLED_FILE)):
            raise ModelError(
                f"{storage.redact(folder)}: a checkpoint in the old pickle format ({PICKLED_FILE}), which is not "
                f"loaded because unpickling can run code; convert it once with "
                f"`geomoe convert {storage.redact(folder)}` (it reads only weights and plain data)"
            )
        raise ModelError(f"{storage.redact(path)}: not a geomoe checkpoint (no {MANIFEST_FILE})")
    try:
        manifest = json.loads(storage.read_bytes(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{storage.redact(path)}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise ModelError(f"{storage.redact(path)}: not a geomoe checkpoint manifest (format != {FORMAT!r})")
    if manifest.get("version") != VERSION:
        raise ModelError(
            f"{storage.redact(path)}: checkpoint version {manifest.get('version')}, this geomoe reads {VERSION}"
        )
    missing = [k for k in ("spec", "stage", "epoch") if k not in manifest]
    if missing:
        raise ModelError(f"{storage.redact(path)}: checkpoint manifest lacks {missing}")
    return manifest


def _tensors(path: str, required: bool = True) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file; a missing optional one (no training state) is empty."""
    if not storage.is_file(path):
        if not required:
            return {}
        raise ModelError(f"{storage.redact(path)}: missing (an incomplete checkpoint)")
    try:
        return load_tensors(storage.read_bytes(path))
    except (SafetensorError, ValueError) as err:
        raise ModelError(f"{storage.redact(path)}: not a safetensors file ({err})") from None


def _standalone(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Contiguous CPU tensors that share no memory (safetensors stores each tensor's own bytes)."""
    seen: set[int] = set()
    out = {}
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if pointer in seen and tensor.numel() else tensor
        seen.add(pointer)
    return out


def _to_json(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """``value`` as JSON, each tensor moved into ``tensors`` under its path and referenced; a mapping whose keys
    are not all strings (an optimizer's state, keyed by parameter index) is kept as a list of pairs."""
    if isinstance(value, torch.Tensor):
        tensors[path] = value
        return {_TENSOR: path}
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value):
            return {k: _to_json(v, f"{path}/{k}", tensors) for k, v in value.items()}
        return {_ITEMS: [[k, _to_json(v, f"{path}/{k}", tensors)] for k, v in value.items()]}
    if isinstance(value, list | tuple):
        return [_to_json(v, f"{path}/{i}", tensors) for i, v in enumerate(value)]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    raise ModelError(
        f"checkpoint training state {path}: a {type(value).__name__} cannot be saved (tensors and plain data only)"
    )


def _from_json(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, dict):
        if _TENSOR in value:
            if value[_TENSOR] not in tensors:
                raise ModelError(f"checkpoint: {TRAINING_FILE} lacks the tensor {value[_TENSOR]!r}")
            return tensors[value[_TENSOR]]
        if _ITEMS in value:
            return {k: _from_json(v, tensors) for k, v in value[_ITEMS]}
        return {k: _from_json(v, tensors) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v, tensors) for v in value]
    return value
