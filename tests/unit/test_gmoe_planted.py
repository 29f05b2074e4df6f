"""SMGeo's grid-level experts, one block alone on a planted world (geomoe.families.smgeo.planted): the code has
the mechanism the Table II calibration looks for. Measured (`geomoe bench gmoe_planted`, 400 steps, 3 seeds; README):
held-out error / target power 0.441 for the dense FFN alone, 0.078 with 4 experts top-2 on 4 kinds by cell; the same
kinds drawn per token 0.439 and 0.434; every block 0.002-0.003 on the null world."""

from __future__ import annotations

import torch

from geomoe.families.smgeo.planted import CONFIGURATIONS, WORLDS, PlantedBlock, PlantedCells, relative_error


def test_a_planted_cell_is_one_kind_whose_rotation_of_the_content_is_the_target() -> None:
    world = PlantedCells(kinds=4)
    x, y = world.sample(2, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (2, 12, 12, 16)
    rotations, shifts = world.transforms
    for row in range(3):
        for col in range(3):
            cell = (0, slice(4 * row, 4 * row + 4), slice(4 * col, 4 * col + 4))
            fits = [
                k
                for k in range(4)  # y = R_k (x - shift_k) at every token of the cell, for exactly one kind
                if torch.allclose(torch.einsum("hwc,dc->hwd", x[cell] - shifts[k], rotations[k]), y[cell], atol=1e-5)
            ]
            assert len(fits) == 1, (row, col, fits)
    _, null_shifts = PlantedCells(kinds=1).transforms
    assert null_shifts.abs().sum() == 0


def test_the_block_is_the_models_dense_ffn_plus_experts_that_start_at_zero() -> None:
    gmoe = CONFIGURATIONS["4 experts, top-2"]
    dense, mixed = PlantedBlock(16, None), PlantedBlock(16, gmoe)
    x = torch.randn(2, 12, 12, 16)
    assert mixed.moe is not None and len(mixed.moe.experts) == 4 and mixed.moe.top_k == 2
    dense.dense.load_state_dict(mixed.dense.state_dict())
    assert torch.allclose(dense(x), mixed(x))  # zero-output experts: at first the block is its dense FFN


def test_four_experts_learn_four_cell_kinds_the_dense_ffn_cannot_and_gain_nothing_without_cells() -> None:
    """Seed 0, 300 steps, measured: planted 0.075 (4 experts) vs 0.453 (dense; seeds 0-2 give 0.075-0.17 vs 0.45);
    the same kinds drawn per token 0.443 vs 0.450: the gain needs cells to route by, not the experts' capacity."""
    dense, experts = CONFIGURATIONS["dense FFN only"], CONFIGURATIONS["4 experts, top-2"]
    planted, no_cells = WORLDS["planted"], WORLDS["kinds without cells"]
    planted_dense, planted_experts = relative_error(planted, dense, 0, 300), relative_error(planted, experts, 0, 300)
    assert planted_experts < 0.5 * planted_dense, (planted_experts, planted_dense)
    flat_dense, flat_experts = relative_error(no_cells, dense, 0, 300), relative_error(no_cells, experts, 0, 300)
    assert abs(flat_dense - flat_experts) < 0.05, (flat_dense, flat_experts)
