"""Group-homogeneous global batches (core, no Ray): every optimizer step draws all its rows, on every worker,
from one group of the training data (PE-MoE: one expert's platform subset D_k, sec. 3.2).

Each group is its own Ray dataset (``train_<group>``), split evenly across the workers by Ray Train, so every
worker holds the same number of rows of each group. The driver and every worker derive the same plan from the
group sizes alone: how many steps each group gets per epoch (``group_steps``) and in which order the groups take
their turns (``group_schedule``, reshuffled per epoch from the seed).
"""

from __future__ import annotations

from typing import Literal

import numpy as np

GroupOrder = Literal["proportional", "round_robin"]


def dataset_name(group: str) -> str:
    return f"train_{group}"


def group_steps(group_rows: dict[str, int], workers: int, rows_per_worker_step: int) -> dict[str, int]:
    """Optimizer steps per epoch of each group: the whole steps its rows fill on every worker (Ray Train's even
    split gives each worker rows // workers of a group; what no step can hold is left for a later epoch)."""
    return {group: (rows // workers) // rows_per_worker_step for group, rows in group_rows.items()}


def group_schedule(steps: dict[str, int], order: GroupOrder, seed: int) -> list[str]:
    """The group of each step of one epoch. ``proportional``: a seeded random interleaving, so every group is
    visited in proportion to its size all through the epoch; ``round_robin``: groups take turns in a seeded
    order, a group leaving the rotation when its steps are used up."""
    rng = np.random.default_rng(seed)
    groups = sorted(steps)
    if order == "proportional":
        turns = [group for group in groups for _ in range(steps[group])]
        return [turns[i] for i in rng.permutation(len(turns))]
    rotation = [groups[i] for i in rng.permutation(len(groups))]
    left = dict(steps)
    plan: list[str] = []
    while any(left.values()):
        for group in rotation:
            if left[group]:
                plan.append(group)
                left[group] -= 1
    return plan
