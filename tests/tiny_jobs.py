"""The tiny models and jobs of the tests (shared by tests/ray and tests/cluster; imported by module name: pytest
puts this folder on sys.path for its conftest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.data.prepared import PreparedDataset
from geomoe.families.pe_moe.driver import ensure_tiny
from geomoe.families.pe_moe.spec import PEMoEModelSpec
from geomoe.on_ray.pipelines.prepare import prepare


def tiny_pe_moe(models: str) -> dict[str, Any]:
    """A PE-MoE model section whose random tiny text and image models are built into ``models`` (a local cache)."""
    return {
        "embed_dim": 16,
        "gate_hidden": 16,
        "text": {"source": f"{models}/tiny_text", "tail_layers": 1, "max_length": 32, "pool": "mean"},
        "image": {
            "name": "geomoe-eva02-micro",
            "pretrained": f"{models}/tiny_image.pt",
            "image_size": 32,
            "tail_blocks": 1,
            "pool": "avg",
        },
        "tiny": {"text_hidden": 16, "text_layers": 2, "text_heads": 2},
    }


def tiny_smgeo() -> dict[str, Any]:
    """A scaled-down SMGeo model section: a 2-stage Swin (embed 16) with 3 experts, top-2, on 32/64-px inputs."""
    return {
        "name": "smgeo",
        "query_size": 32,
        "reference_size": 64,
        "backbone": {"embed_dim": 16, "depths": [1, 2], "num_heads": [1, 2], "window_size": 4, "drop_path": 0},
        "gmoe": {"experts": 3, "top_k": 2, "grid": [2, 2], "blocks": ["none", "even"]},
        "head_channels": 8,
    }


def pe_moe_job(root: Path, out: Path, **train: object) -> JobSpec:
    """The tiny PE-MoE job of the Ray tests: two stages on the session's synthgeo, two workers."""
    raw = {
        "name": "t",
        "stages": ["prepare", "train"],
        "data": {"format": "geotext", "root": str(root / "geotext")},
        "preprocess": {"output_dir": str(out / "prepared"), "satellite_copies": 1},
        "model": tiny_pe_moe(str(out)),
        "train": {
            "batch_size": 8,
            "lr": 1e-3,
            "stage1_epochs": 2,
            "stage2_epochs": 1,
            "max_failures": 1,
            "materialize_inputs": True,
            **train,
        },
        # small galleries are embedded in the driver (test_index_search compares that with the actor pool)
        "resources": {"num_workers": 2, "cpus_per_worker": 0.5, "data_concurrency": 1, "embed_in_driver_max": 4096},
    }
    return parse_spec(JobSpec, raw, "test")


def tiny_retriever(root: Path, out: Path, dtype: str = "float16") -> tuple[JobSpec, Any, Any]:
    """(spec, model, tokenizer): the tiny PE-MoE of these tests, untrained, saved to out/ckpt and indexed into
    out/index (the Serve tests serve it)."""
    import torch

    from geomoe.core.models.checkpoint import save_checkpoint
    from geomoe.families.pe_moe.factory import build_pe_moe
    from geomoe.families.pe_moe.pipelines import build_index

    spec = pe_moe_job(root, out)
    manifest = prepare(spec)
    model_spec = spec.model_as(PEMoEModelSpec)
    ensure_tiny(model_spec, PreparedDataset.of(manifest), spec.preprocess.max_words_train)
    torch.manual_seed(0)
    model, tokenizer = build_pe_moe(model_spec)
    (out / "ckpt").mkdir()
    save_checkpoint(out / "ckpt", model, spec, 1, 0)
    raw = spec.model_dump(mode="json") | {"index": {"output_dir": str(out / "index"), "dtype": dtype}}
    build_index(parse_spec(JobSpec, raw, "test"), manifest, str(out / "ckpt"))
    return spec, model, tokenizer


def smgeo_job(root: Path, out: Path) -> JobSpec:
    """The tiny SMGeo job of the Ray tests: three epochs, every epoch's checkpoint kept."""
    raw = {
        "name": "smgeo_t",
        "output_root": str(out / "runs"),
        "stages": ["prepare", "train"],
        "data": {"format": "cvogl", "root": str(root / "cvogl")},
        "preprocess": {"output_dir": str(out / "prepared")},
        "model": tiny_smgeo(),
        "train": {"batch_size": 2, "lr": 1e-3, "epochs": 3, "keep_checkpoints": 3, "materialize_inputs": True},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "data_concurrency": 1},
    }
    return parse_spec(JobSpec, raw, "test")


TOY = str(Path(__file__).resolve().parent / "toy_family.py")  # the third family, from a .py file


def toy_job(root: Path, out: Path) -> dict:
    """A job of the toy family (tests/toy_family.py) on the geotext layout under ``root``."""
    return {
        "name": "toy",
        "families": [TOY],
        "output_root": str(out / "runs"),
        "stages": ["prepare", "train"],
        "data": {"format": "geotext", "root": str(root / "geotext")},
        "preprocess": {"output_dir": str(out / "prepared"), "satellite_copies": 0},
        "model": {"name": "toy_platform", "thumb": 8},
        "train": {"batch_size": 4, "lr": 0.01, "epochs": 3, "keep_checkpoints": 3, "warmup_ratio": 0.0},
        "resources": {"num_workers": 1, "cpus_per_worker": 0.5, "data_concurrency": 1},
    }
