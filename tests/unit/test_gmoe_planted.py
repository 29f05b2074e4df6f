"""SMGeo's grid-level experts, one block alone on a planted world (geomoe.families.smgeo.planted): the code has
the mechanism the Table II calibration looks for. Measured (`geomoe bench gmoe_planted`, 400 steps, 3 seeds; README):
held-out error / target power 0.441 for the dense FFN alone, 0.078 with 4 experts top-2 on 4 kinds; every block
0.002-0.003 on the null world."""

from __future__ import annotations

import torch

from geomoe.families.smgeo.planted import CONFIGURATIONS, PlantedBlock, PlantedCells, relative_error


def test_the_planted_world_needs_a_cells_kind_and_the_null_world_has_one_kind() -> None:
    x, y = PlantedCells(kinds=4).sample(2, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (2, 12, 12, 16)
    rotations, shifts = PlantedCells(kinds=4).transforms()
    assert not torch.allclose(rotations[0], rotations[1]) and shifts.abs().sum() > 0
    _, null_shifts = PlantedCells(kinds=1).transforms()
    assert null_shifts.abs().sum() == 0


def test_the_block_is_the_models_dense_ffn_plus_experts_that_start_at_zero() -> None:
    gmoe = CONFIGURATIONS["4 experts, top-2"]
    dense, mixed = PlantedBlock(16, None), PlantedBlock(16, gmoe)
    x = torch.randn(2, 12, 12, 16)
    assert mixed.moe is not None and len(mixed.moe.experts) == 4 and mixed.moe.top_k == 2
    dense.dense.load_state_dict(mixed.dense.state_dict())
    assert torch.allclose(dense(x), mixed(x))  # zero-output experts: at first the block is its dense FFN


def test_four_experts_learn_four_cell_kinds_the_dense_ffn_cannot_and_tie_with_it_on_the_null_world() -> None:
    dense, experts = CONFIGURATIONS["dense FFN only"], CONFIGURATIONS["4 experts, top-2"]
    planted, null = PlantedCells(kinds=4), PlantedCells(kinds=1)
    planted_dense, planted_experts = relative_error(planted, dense, 0, 300), relative_error(planted, experts, 0, 300)
    assert planted_experts < 0.5 * planted_dense, (planted_experts, planted_dense)  # measured 0.08 vs 0.45
    null_dense, null_experts = relative_error(null, dense, 0, 300), relative_error(null, experts, 0, 300)
    assert max(null_dense, null_experts) < 0.02 and abs(null_dense - null_experts) < 0.01, (null_dense, null_experts)
