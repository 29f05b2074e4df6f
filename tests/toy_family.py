"""A third model family, defined only here, to prove that adding one touches nothing under platform/: a spec, a
model, a step and an evaluation. It learns which platform (satellite, drone, ground) took an image from a
thumbnail of it, on any prepared retrieval dataset. A job names this file under ``families:``."""

from __future__ import annotations

import base64
import binascii
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch import nn

from geomoe.core import registry, storage
from geomoe.core.config import FamilyModelSpec, JobSection, JobSpec, TrainSpec, as_section
from geomoe.core.data.images import DECODE_ERRORS, decoded, open_image
from geomoe.core.data.prepared import PreparedDataset
from geomoe.core.platforms import PLATFORMS
from geomoe.core.stages import Stage, StageContext, section_output
from geomoe.families.base import Family, Loaded, TrainInputs
from geomoe.on_ray.train.loop import Batch, LoopConfig, TrainingTask


class ToyModelSpec(FamilyModelSpec):
    name: Literal["toy_platform"] = "toy_platform"
    thumb: int = Field(8, ge=2, description="thumbnail side in pixels")


class ToyTrainSpec(TrainSpec):
    epochs: int = Field(2, ge=1)


class SharesSpec(JobSection):
    """The ``shares`` section, a top-level section of the family's own (what its stage reads)."""

    path_fields = shared_fields = ("output_dir",)

    output_dir: str  # <run>/shares when left out
    split: Literal["train", "test"] = "train"


def thumbnail(image: Image.Image, side: int) -> np.ndarray:
    """The model's input: the image at side x side RGB, in [0, 1], flattened."""
    return (np.asarray(image.convert("RGB").resize((side, side)), np.float32) / 255).reshape(-1)


def thumbnails(prepared: PreparedDataset, split: str, side: int) -> dict[str, np.ndarray]:
    """One (thumbnail, platform index) pair per image of the split, decoded on the driver (small by design)."""
    table = prepared.read_split(split, columns=["image_path", "platform"])
    images = dict(zip(table["image_path"].to_pylist(), table["platform"].to_pylist(), strict=True))
    x = [thumbnail(open_image(p), side) for p in images]
    return {"x": np.stack(x), "y": np.array([PLATFORMS.index(p) for p in images.values()])}


def image_input(inputs: dict[str, Any]) -> Image.Image:
    """``inputs["image"]``: an image file, base64; ValueError naming the input otherwise."""
    encoded = inputs.get("image")
    if not isinstance(encoded, str):
        raise ValueError("inputs.image: an image file, base64, is required")
    try:
        return decoded(base64.b64decode(encoded, validate=True))
    except (binascii.Error, *DECODE_ERRORS) as err:
        raise ValueError(f"inputs.image: not a readable image file, base64 ({type(err).__name__})") from err


def correct(model: nn.Module, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return np.asarray(model(torch.from_numpy(x)).argmax(1).numpy() == y)


def accuracy(model: nn.Module, x: np.ndarray, y: np.ndarray) -> float:
    return 100.0 * float(correct(model, x, y).mean())


def _check_platform_shares(spec: JobSpec) -> None:
    if spec.section("shares", SharesSpec) is None:
        raise ValueError("stages: stage 'platform_shares' needs a shares section")
    if "prepare" not in spec.stages[: spec.stages.index("platform_shares")]:
        raise ValueError("stages: stage 'platform_shares' needs a 'prepare' stage before it")


def platform_shares(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    """Each platform's share of the prepared rows of ``shares.split``, written to ``shares.output_dir``."""
    section = spec.section("shares", SharesSpec)
    assert section is not None  # checked by the stage's check
    prepared = PreparedDataset.of(context.results.outputs["prepare"])
    table = prepared.read_split(section.split, columns=["platform"])
    counts = {p: table["platform"].to_pylist().count(p) for p in PLATFORMS}
    shares = {p: n / table.num_rows for p, n in counts.items()}
    storage.write_json_atomic(storage.join(section.output_dir, "shares.json"), shares)
    return shares


PLATFORM_SHARES = Stage(  # a stage of the family's own: its check, its output folder, its runner and its summary
    "platform_shares",
    platform_shares,
    needs_ray=False,
    check=_check_platform_shares,
    outputs=section_output("shares", "output_dir"),
    summary=lambda spec, shares: "platform shares: " + ", ".join(f"{p} {v:.2f}" for p, v in shares.items()),
)


class ToyFamily(Family):
    name = "toy_platform"
    model_spec = ToyModelSpec
    train_spec = ToyTrainSpec
    best_by = "val_accuracy"
    stages = (PLATFORM_SHARES,)
    sections = {"shares": SharesSpec}  # a top-level job section of its own

    def build_model(self, model: FamilyModelSpec) -> nn.Module:
        return nn.Linear(3 * as_section(model, ToyModelSpec).thumb ** 2, len(PLATFORMS))

    def datasets(self, spec: JobSpec, prepared: PreparedDataset) -> TrainInputs:
        import ray.data

        side = spec.model_as(ToyModelSpec).thumb
        splits = {name: thumbnails(prepared, split, side) for name, split in (("train", "train"), ("val", "test"))}
        data = {
            k: ray.data.from_items([{"x": x, "y": y} for x, y in zip(*v.values(), strict=True)])
            for k, v in splits.items()
        }
        step = spec.train.global_batch(spec.resources.num_workers)
        return TrainInputs(data, max(1, len(splits["train"]["y"]) // step))

    def training_task(self, spec: JobSpec, loop: LoopConfig, rank: int) -> TrainingTask:
        import ray.train

        def step(model: nn.Module, batch: Batch, device: torch.device) -> tuple[torch.Tensor, dict[str, float]]:
            logits = model(torch.from_numpy(batch["x"]).to(device))
            return nn.functional.cross_entropy(logits, torch.from_numpy(batch["y"]).to(device)), {}

        def evaluate(model: nn.Module, device: torch.device, batch_size: int) -> dict[str, float]:
            rows = ray.train.get_dataset_shard("val").iter_batches(batch_size=batch_size, batch_format="numpy")
            batches = list(rows)
            x, y = np.concatenate([b["x"] for b in batches]), np.concatenate([b["y"] for b in batches])
            return {"val_accuracy": accuracy(model, x, y)}

        return TrainingTask(self.build_model(spec.model), step, evaluate)

    def evaluate(self, spec: JobSpec, checkpoint: str, prepared: PreparedDataset) -> dict[str, Any]:
        test = thumbnails(prepared, "test", spec.model_as(ToyModelSpec).thumb)
        hits = correct(self.load_checkpoint(checkpoint).model, test["x"], test["y"])
        return {"accuracy": 100.0 * float(hits.mean()), "count": len(test["y"]), "correct": hits.tolist()}

    def predict(self, loaded: Loaded, inputs: dict[str, Any]) -> dict[str, Any]:
        """Served at POST /predict/<name>: which platform took ``inputs["image"]``, and each one's probability."""
        x = thumbnail(image_input(inputs), loaded.spec.model_as(ToyModelSpec).thumb)
        device = next(loaded.model.parameters()).device
        with torch.no_grad():
            probabilities = torch.softmax(loaded.model(torch.from_numpy(x[None]).to(device)), 1)[0].tolist()
        return {
            "platform": PLATFORMS[int(np.argmax(probabilities))],
            "probabilities": dict(zip(PLATFORMS, probabilities, strict=True)),
        }

    def query_values(self, result: dict[str, Any]) -> dict[str, np.ndarray]:
        """Each test image's hit: the per-query values of test_accuracy (its intervals, seeds and verdicts)."""
        return {"test_accuracy": 100.0 * np.array(result["test"]["correct"], dtype=np.float64)}


registry.register(ToyFamily())
