"""``geomoe bench gmoe_planted``: SMGeo's grid-level experts on a world planted for them, one block alone.

The end-to-end calibration (``geomoe calibrate search_spaces/smgeo_experts.yaml``) asks whether a whole sweep sees
the experts; at the quickstart's size it does not, and that cannot say whether the code lacks the mechanism or the
run is too small. This isolates the mechanism: one Swin block's FFN as SMGeo's model builds it (``insert_gmoe``:
the block's dense FFN, hidden 4C, kept; beside it the top-k of E experts of hidden C/2, starting at output 0),
trained alone to map a token map to a target, on three worlds (``WORLDS``):

- planted: each cell of a 3 x 3 layout is one of ``kinds`` kinds, and a kind needs its own transform of the
  tokens (target = rotation_kind(content)). A kind also shifts its tokens' mean (a draw of std 0.5 a channel;
  token noise: std 1): the nearest shift names one token's kind 74% of the time, a cell's mean (16 tokens) every
  time (measured on 100,000 draws), and the cell's mean is what the router sees (Eq. 8 pools cells).
- kinds without cells: the same kinds, rotations and shifts, each token drawn on its own. Routing by cells has
  nothing to go on, so a block that gains here gains by capacity, not by the mechanism.
- null: one kind (one rotation, no shift): nothing for experts to divide.

Reported: the held-out error relative to the target's power, per configuration and world, over seeds. If the
mechanism is there, experts gain on the planted world and not on the other two.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import torch

from geomoe.families.smgeo.gmoe import ExpertFFN, GridMoE
from geomoe.families.smgeo.model import TokenMoE, expert_pool
from geomoe.families.smgeo.spec import GMoESpec
from geomoe.on_ray.bench import options


@dataclass(frozen=True)
class PlantedCells:
    """A token map of ``size`` x ``size`` with ``channels`` channels, cut into a ``layout`` x ``layout`` grid."""

    kinds: int = 4  # 1: the null world
    channels: int = 16
    size: int = 12
    layout: int = 3
    shift: float = 0.5  # how far a kind moves its tokens' mean (token noise has std 1)
    per_token: bool = False  # each token its own kind: the kinds without the cells a router could see

    @cached_property  # drawn once per world, not at every training step's sample
    def transforms(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(kinds, C, C) one rotation per kind and (kinds, C) each kind's shift, fixed by the world itself."""
        generator = torch.Generator().manual_seed(1000 + self.kinds)
        rotations = torch.linalg.qr(torch.randn(self.kinds, self.channels, self.channels, generator=generator))[0]
        shifts = torch.randn(self.kinds, self.channels, generator=generator) * self.shift
        return rotations, shifts * (self.kinds > 1)

    def sample(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """(input, target) maps (n, size, size, channels): content + the cell kind's shift -> rotated content."""
        rotations, shifts = self.transforms
        if self.per_token:  # no cell structure: a cell's mean says nothing a token does not
            kind_map = torch.randint(0, self.kinds, (n, self.size, self.size), generator=generator)
        else:
            kinds = torch.randint(0, self.kinds, (n, self.layout, self.layout), generator=generator)
            per_cell = self.size // self.layout
            kind_map = kinds.repeat_interleave(per_cell, 1).repeat_interleave(per_cell, 2)
        content = torch.randn(n, self.size, self.size, self.channels, generator=generator)
        target = torch.einsum("nhwc,nhwdc->nhwd", content, rotations[kind_map])
        return content + shifts[kind_map], target


class PlantedBlock(torch.nn.Module):
    """A Swin block's FFN (hidden 4C) as SMGeo builds it: dense(x) + GMoE(x) on a (B, H, W, C) map; ``gmoe``
    None: the dense FFN alone (Table IV's "none")."""

    def __init__(self, channels: int, gmoe: GMoESpec | None) -> None:
        super().__init__()
        self.dense = ExpertFFN(channels, 4 * channels)
        self.mixed: TokenMoE | None = None
        if gmoe is not None:
            moe = GridMoE(
                channels, expert_pool(self.dense, gmoe), gmoe.top_k, (gmoe.grid[0], gmoe.grid[1]), gmoe.noise_std
            )
            self.mixed = TokenMoE(moe, self.dense if gmoe.dense_path else None)

    @property
    def moe(self) -> GridMoE | None:
        return None if self.mixed is None else self.mixed.moe

    def forward(self, x_BHWC: torch.Tensor) -> torch.Tensor:
        if self.mixed is None:
            return self.dense.forward(x_BHWC)
        batch, height, width, dim = x_BHWC.shape
        self.mixed.hw = (height, width)  # what insert_gmoe's forward hook records in a Swin block
        out: torch.Tensor = self.mixed(x_BHWC.reshape(batch, -1, dim))
        return out.reshape(batch, height, width, dim)


def relative_error(
    world: PlantedCells, gmoe: GMoESpec | None, seed: int, steps: int = 400, batch: int = 16, entropy: float = 0.015
) -> float:
    """Train a fresh block on ``world`` (Adam; the loss: MSE + ``entropy`` x the gate's neg-entropy, SMGeo's
    Eq. 22 weight) and return its held-out squared error over the target's mean square."""
    torch.manual_seed(seed)
    block = PlantedBlock(world.channels, gmoe)
    optimizer = torch.optim.Adam(block.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(seed)
    block.train()
    for _ in range(steps):
        x, y = world.sample(batch, generator)
        loss = (block(x) - y).square().mean()
        if block.moe is not None:
            loss = loss + entropy * block.moe.neg_entropy
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    block.eval()
    x, y = world.sample(256, torch.Generator().manual_seed(10_000 + seed))
    with torch.no_grad():
        return float((block(x) - y).square().mean() / y.square().mean())


CONFIGURATIONS: dict[str, GMoESpec | None] = {
    "dense FFN only": None,
    "2 experts, top-2": GMoESpec(experts=2, top_k=2, grid=[3, 3]),
    "4 experts, top-1": GMoESpec(experts=4, top_k=1, grid=[3, 3]),
    "4 experts, top-2": GMoESpec(experts=4, top_k=2, grid=[3, 3]),
    "4 experts, top-2, 4 x 4 grid": GMoESpec(experts=4, top_k=2, grid=[4, 4]),
    "6 experts, top-2": GMoESpec(experts=6, top_k=2, grid=[3, 3]),
}


WORLDS = {
    "planted": PlantedCells(kinds=4),  # 4 kinds, each over whole cells
    "kinds without cells": PlantedCells(kinds=4, per_token=True),  # the null that extra capacity alone would pass
    "null": PlantedCells(kinds=1),  # one transform for every token
}


def probe(seeds: int = 3, steps: int = 400) -> dict[str, Any]:
    """Every configuration on each of ``WORLDS``: relative error, mean and std over ``seeds``."""
    rows = []
    for name, gmoe in CONFIGURATIONS.items():
        for world_name, world in WORLDS.items():
            errors = [relative_error(world, gmoe, seed, steps) for seed in range(seeds)]
            rows.append({"configuration": name, "world": world_name, "errors": [round(e, 4) for e in errors],
                         "mean": round(float(np.mean(errors)), 4), "std": round(float(np.std(errors)), 4)})  # fmt: skip
    return {"benchmark": "gmoe_planted", "seeds": seeds, "steps": steps, "rows": rows}


def run_probe(out: str, overrides: list[str]) -> dict[str, Any]:
    given = options(overrides)
    result = probe(int(given.get("seeds", 3)), int(given.get("steps", 400)))
    lines = [f"{r['configuration']:<30} {r['world']:<20} {r['mean']:.3f} ± {r['std']:.3f}" for r in result["rows"]]
    title = "gmoe_planted: held-out error / target power, mean ± std over seeds"
    return result | {"summary": "\n".join([title, *lines])}
