"""Frozen layers held in bf16 (geomoe.core.models.precision): under bf16 autocast a PE-MoE training step then casts
no frozen weight, and computes exactly what it computed when autocast cast them at every use; a checkpoint still
saves the weights as they were loaded."""

from __future__ import annotations

import pytest
import torch

from geomoe.core.models.checkpoint import trainable_state
from geomoe.core.models.precision import dispatched, frozen_parameters, hold_frozen_in
from geomoe.families.pe_moe.bench import CORPUS, _tiny_spec, dispatch_proxies, flop_ratio
from geomoe.families.pe_moe.factory import build_pe_moe, ensure_tiny_models, tokenize
from geomoe.families.pe_moe.losses import pe_moe_objective


@pytest.fixture(scope="module")
def tiny_pe_moe(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    spec = _tiny_spec(tmp_path_factory.mktemp("precision"), 32, 4)
    ensure_tiny_models(spec, CORPUS)
    torch.manual_seed(0)
    model, tokenizer = build_pe_moe(spec)
    ids, mask = tokenize(tokenizer, CORPUS[:12], spec.text.max_length)
    return model, (ids, mask, torch.randn(12, 3, 32, 32), torch.arange(12) % 3, torch.arange(12)), spec


def bf16_step(model: torch.nn.Module, batch: tuple) -> tuple[float, list[torch.Tensor]]:
    """One forward and backward under CPU bf16 autocast: (the loss, the trainable parameters' gradients)."""
    ids, mask, images, expert, building = batch
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", torch.bfloat16):
        loss = pe_moe_objective(model(ids, mask, images, expert), expert, building, torch.tensor(14.0), 1.0)[0]
    loss.backward()
    return float(loss.detach()), [p.grad.clone() for p in model.parameters() if p.requires_grad and p.grad is not None]


def test_a_step_casts_no_frozen_weight_once_they_are_held_and_computes_the_same(tiny_pe_moe: tuple) -> None:
    model, batch, _ = tiny_pe_moe
    frozen_before = frozen_parameters(model)
    casting = dispatched(lambda: bf16_step(model, batch), frozen_before)
    loss, grads = bf16_step(model, batch)
    assert casting.cast_bytes > 0  # autocast casts each frozen fp32 weight again at every use

    loaded = {k: v.clone() for k, v in model.state_dict().items()}
    held = hold_frozen_in(model, torch.bfloat16)
    trunks = [model.text_trunk, model.image_trunk]
    in_layers = {p.dtype for t in trunks for m in t.modules() if isinstance(m, torch.nn.Linear) for p in m.parameters()}
    assert held > 0 and in_layers == {torch.bfloat16}
    assert {p.dtype for p in model.parameters() if p.requires_grad} == {torch.float32}  # nothing trained is touched
    norms = [p for t in trunks for m in t.modules() if isinstance(m, torch.nn.LayerNorm) for p in m.parameters()]
    assert norms and {p.dtype for p in norms} == {torch.float32}  # autocast runs norms in fp32: left as they are

    saved = trainable_state(model)  # a checkpoint keeps the weights as loaded, not their bf16 rounding
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[k], v) for k, v in loaded.items())
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float32}
    holding = dispatched(lambda: bf16_step(model, batch), frozen_parameters(model))
    assert holding.cast_bytes == 0 and holding.ops < casting.ops
    loss_held, grads_held = bf16_step(model, batch)
    assert loss_held == loss and len(grads_held) == len(grads)
    assert all(torch.equal(a, b) for a, b in zip(grads, grads_held, strict=True))  # the same rounding, done once


def test_the_benchmarks_gpu_proxies_move_the_way_the_gpu_goals_need(tiny_pe_moe: tuple) -> None:
    """``geomoe bench pe_moe_step``'s CPU proxies for issue 38's GPU goals, on a fresh model: holding the frozen
    layers in bf16 removes every frozen cast, the fused AdamW update dispatches fewer ops than foreach, and a step
    executes the FLOPs one expert per row needs, not more (3 experts routed: the trunks once, one tail per row)."""
    _, (ids, mask, images, _, _), spec = tiny_pe_moe
    proxies = dispatch_proxies(spec, ids, mask, images)
    cast = proxies["bf16_frozen_cast_MiB_per_step"]
    assert cast["cast_at_each_use"] > 0 and cast["held_in_bf16"] == 0
    assert proxies["aten_ops_per_step"]["fused"] < proxies["aten_ops_per_step"]["foreach"]
    flops = flop_ratio(spec, ids, mask, images)
    assert 0.98 <= flops["ratio"] <= 1.05, flops
