"""``make gpu-check``'s code runs here at toy sizes on the CPU (the GPU machine runs the same functions at the
paper's sizes); without a GPU the command says so in one line, and so does ``make gpu-smoke``."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from geomoe.families.smgeo import bench_gpu as smgeo_gpu
from geomoe.on_ray.bench import gpu, gpu_smoke
from geomoe.on_ray.serving.config import check_serve_schema

REPOSITORY = Path(__file__).resolve().parents[2]


def test_without_a_gpu_the_check_says_so_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    result = gpu.gpu_check()
    assert result["gpu"] is None and result["summary"] == gpu.NO_GPU and "\n" not in gpu.NO_GPU


def test_every_part_runs_at_toy_sizes_on_the_cpu() -> None:
    result = gpu.gpu_check(tiny=True, device="cpu")
    for part in ("pe_moe_step", "smgeo_step"):
        step = result[part]
        assert step["samples_per_s"] > 0 and step["flop_per_step"] > 0 and step["trainable_M"] > 0
        assert step["mfu"] is None and step["peak_memory_GiB"] is None  # no GPU peak to divide by
    assert result["pe_moe_step"]["frozen_M"] > 0  # the trunks stay frozen
    assert result["pe_moe_step"]["aten_ops_per_step"] > 0 and "frozen_cast_MiB_per_step" in result["pe_moe_step"]
    search = result["exact_search"]
    assert search["rows"] == gpu.TINY_SEARCH.gallery and 0 <= search["q1"]["bandwidth_fraction"] < 10
    assert result["serve_encoder"]["batch32"]["queries_per_s"] > 0
    assert "PE-MoE step" in result["summary"] and "encoder" in result["summary"]


def test_flops_counted_for_a_step_grow_with_the_batch() -> None:
    """MFU's numerator comes from torch's FlopCounterMode over one real step: twice the rows, about twice it."""
    sizes = smgeo_gpu.TINY
    small = smgeo_gpu.smgeo_step(sizes, torch.device("cpu"))["flop_per_step"]
    twice = dataclasses.replace(sizes, smgeo_batch=2 * sizes.smgeo_batch)
    double = smgeo_gpu.smgeo_step(twice, torch.device("cpu"))["flop_per_step"]
    assert np.isclose(double / small, 2.0, rtol=0.1)


def test_gpu_smoke_without_a_gpu_says_so_and_runs_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OUT", str(tmp_path / "out"))
    assert gpu_smoke.main() == 0
    assert capsys.readouterr().out == "gpu-smoke: no GPU on this machine; nothing run\n"
    assert list(tmp_path.iterdir()) == []


def test_gpu_smokes_serve_config_puts_the_models_on_the_gpu_and_adds_the_localizer(tmp_path: Path) -> None:
    shutil.copytree(REPOSITORY / "serve", tmp_path / "serve")
    (tmp_path / "runs" / "smgeo_quickstart").mkdir(parents=True)
    results = {"train": {"model": {"checkpoint": "runs/smgeo_quickstart/ckpt"}}}
    (tmp_path / "runs" / "smgeo_quickstart" / "results.json").write_text(json.dumps(results))
    path = gpu_smoke._serve_config(tmp_path)
    config = check_serve_schema(path)  # Ray Serve's own schema and our deployment names
    assert config == yaml.safe_load(path.read_text())
    app = config["applications"][0]
    assert app["args"]["localizer"] == "runs/smgeo_quickstart/ckpt"
    gpus = {d["name"]: d["ray_actor_options"].get("num_gpus", 0) for d in app["deployments"]}
    assert gpus == {"QueryEncoder": 0.25, "GallerySearch": 0.25, "Reranker": 0, "Captioner": 0, "Ingress": 0,
                    "Localizer": 0.25}  # fmt: skip


def test_the_gmoe_bench_times_the_backbone_with_its_experts_against_without() -> None:
    """``geomoe bench gmoe``'s ratio for the GPU goal (GMoE at most 1.3x the model without it), at toy size."""
    from geomoe.families.smgeo.bench import backbone_ratio
    from geomoe.families.smgeo.spec import SMGeoModelSpec

    spec = SMGeoModelSpec.model_validate(smgeo_gpu.TINY.smgeo)
    ratio = backbone_ratio(spec, 64, repeats=1)
    assert ratio["params_M"]["with_gmoe"] > ratio["params_M"]["without_gmoe"]  # the experts and routers are in
    assert any(ratio["gmoe_blocks"]) and ratio["with_gmoe_s"] > 0 and ratio["without_gmoe_s"] > 0
    assert ratio["ratio"] > 0
