"""``make gpu-check``'s code runs here at toy sizes on the CPU (the GPU machine runs the same functions at the
paper's sizes); without a GPU the command says so in one line."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from geomoe.bench import gpu


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
    search = result["exact_search"]
    assert search["rows"] == gpu.TINY.gallery and 0 <= search["q1"]["bandwidth_fraction"] < 10
    assert result["serve_encoder"]["batch32"]["queries_per_s"] > 0
    assert "PE-MoE step" in result["summary"] and "encoder" in result["summary"]


def test_flops_counted_for_a_step_grow_with_the_batch() -> None:
    """MFU's numerator comes from torch's FlopCounterMode over one real step: twice the rows, about twice it."""
    sizes = gpu.TINY
    small = gpu.smgeo_step(sizes, torch.device("cpu"))["flop_per_step"]
    double = gpu.smgeo_step(gpu.Sizes(**{**sizes.__dict__, "smgeo_batch": 2 * sizes.smgeo_batch}), torch.device("cpu"))[
        "flop_per_step"
    ]
    assert np.isclose(double / small, 2.0, rtol=0.1)
