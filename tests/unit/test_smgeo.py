"""SMGeo core: GMoE dispatch and entropy, the model's dependence on query and click, targets, decoding, IoU,
augmentation, and the spec checks. Tiny Swin (embed 16, 3 stages), seeded, no Ray."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geomoe.config import JobSpec, parse_spec
from geomoe.config.smgeo import SMGeoModelSpec
from geomoe.data.localization import augment_pair, centre_box_baseline, localization_report, size_bucket
from geomoe.errors import SpecError
from geomoe.losses import smgeo_objective, smgeo_targets
from geomoe.metrics import box_iou
from geomoe.models.gmoe import ExpertFFN, GridMoE, dense_reference, sparse_dispatch
from geomoe.models.smgeo import SMGeo, decode_boxes


def tiny_spec(**kw: object) -> SMGeoModelSpec:
    raw = {
        "name": "smgeo",
        "query_size": 32,
        "reference_size": 64,
        "backbone": {"embed_dim": 16, "depths": [2, 2, 2], "num_heads": [1, 2, 4], "window_size": 4, "drop_path": 0},
        "gmoe": {"experts": 3, "top_k": 2, "grid": [2, 2], "blocks": ["none", "even", "all"]},
        "head_channels": 16,
        **kw,
    }
    return SMGeoModelSpec.model_validate(raw)


def inputs(batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(batch, 3, 32, 32, generator=g),
        torch.rand(batch, 2, generator=g) * 32,
        torch.randn(batch, 3, 64, 64, generator=g),
    )


def moe_layer(experts: int = 4, top_k: int = 2, dim: int = 8) -> GridMoE:
    torch.manual_seed(0)
    pool = torch.nn.ModuleList(ExpertFFN(dim, 16) for _ in range(experts))
    return GridMoE(dim, pool, top_k, (3, 2))


def test_sparse_dispatch_matches_dense_computation_of_the_chosen_experts() -> None:
    layer = moe_layer()
    x = torch.randn(2, 6, 5, 8, requires_grad=True)
    sparse = layer(x)
    grads_sparse = torch.autograd.grad(sparse.square().sum(), [x, *layer.parameters()])
    layer.dense = True
    dense = layer(x)
    grads_dense = torch.autograd.grad(dense.square().sum(), [x, *layer.parameters()])
    torch.testing.assert_close(sparse, dense)
    for a, b in zip(grads_sparse, grads_dense, strict=True):
        torch.testing.assert_close(a, b)
    # and against a hand-written loop over tokens
    ids, gates = torch.tensor([[0, 2], [1, 0], [3, 1]]), torch.tensor([[0.7, 0.3], [0.5, 0.5], [0.9, 0.1]])
    tokens = torch.randn(3, 8)
    expected = torch.stack(
        [
            sum(g * layer.experts[int(e)](t) for e, g in zip(i, w, strict=True))
            for t, i, w in zip(tokens, ids, gates, strict=True)
        ]
    )
    torch.testing.assert_close(sparse_dispatch(tokens, ids, gates, layer.experts), expected)
    torch.testing.assert_close(dense_reference(tokens, ids, gates, layer.experts), expected)


def test_every_token_of_a_cell_uses_its_cells_experts_and_usage_counts_choices() -> None:
    layer = moe_layer(experts=4, top_k=1)
    layer.eval()
    x = torch.randn(1, 6, 4, 8)
    ids, gates = layer.route(x)
    assert ids.shape == (1, 6, 1) and torch.allclose(gates, torch.ones_like(gates))  # top-1: gate 1
    assert int(layer.usage.sum()) == 6  # 3 x 2 cells, one choice each
    y = layer(x)
    # the token at row 5, column 3 lies in cell (2, 1) of the 3 x 2 grid
    expert = layer.experts[int(ids[0, 2 * 2 + 1, 0])]
    torch.testing.assert_close(y[0, 5, 3], expert(x[0, 5, 3]))


def test_gate_entropy_term_has_gradient_into_the_router() -> None:
    model = SMGeo(tiny_spec())
    q, c, r = inputs()
    out = model(q, c, r)
    assert out.neg_entropy.requires_grad and -np.log(2) - 1e-6 <= float(out.neg_entropy.detach()) < 0
    out.neg_entropy.backward()
    for layer in model.moe_layers:
        assert layer.router.weight.grad is not None and layer.router.weight.grad.abs().sum() > 0


def test_prediction_depends_on_query_image_and_click() -> None:
    torch.manual_seed(0)
    model = SMGeo(tiny_spec()).eval()
    q, c, r = inputs()
    with torch.no_grad():
        base = model(q, c, r).heatmap_logits
        other_query = model(q.flip(-1), c, r).heatmap_logits
        other_click = model(q, 32 - c, r).heatmap_logits
        no_click = model(q, c, r, use_click=False).heatmap_logits
        other_ref = model(q, c, r.flip(-2)).heatmap_logits
    for changed in (other_query, other_click, no_click, other_ref):
        assert (changed - base).abs().max() > 1e-4


def test_upcycled_experts_reproduce_the_dense_block_at_init() -> None:
    """Experts start as copies of the block's FFN and the top-k gates sum to 1, so GMoE = FFN at first."""
    torch.manual_seed(0)
    spec = tiny_spec(gmoe={"experts": 3, "top_k": 2, "grid": [2, 2], "blocks": ["none", "none", "none"]})
    dense = SMGeo(spec).eval()
    moe = {"experts": 3, "top_k": 2, "grid": [2, 2], "blocks": ["none", "all", "all"], "share_per_stage": False}
    torch.manual_seed(0)
    sparse = SMGeo(tiny_spec(gmoe=moe)).eval()
    assert len(sparse.moe_layers) == 4 and len(sparse.moe_layers[0].experts) == 3
    shared = SMGeo(tiny_spec(gmoe={**moe, "share_per_stage": True}))
    assert shared.moe_layers[0].experts is shared.moe_layers[1].experts  # one pool per stage
    assert sparse.moe_layers[0].experts is not sparse.moe_layers[1].experts
    x = torch.randn(1, 4, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(sparse.backbone.forward_features(x), dense.backbone.forward_features(x))


def test_targets_and_decoding_round_trip_on_hand_made_boxes() -> None:
    boxes = torch.tensor([[8.0, 16.0, 24.0, 40.0], [40.0, 0.0, 64.0, 20.0]])
    heat, positive, target = smgeo_targets(boxes, (8, 8), (64, 64), sigma_ratio=0.15)
    # 64 px on an 8 x 8 map: 8 px per cell. Box 0: centre (16, 28) px = (2.0, 3.5) cells, size 2 x 3 cells
    torch.testing.assert_close(target[0], torch.tensor([0.0, 0.5, 2.0, 3.0]))
    assert int(positive[0]) == 3 * 8 + 2 and float(heat[0, 3, 2]) == 1.0 and 0 < float(heat[0, 3, 3]) < 1
    box_map = torch.zeros(2, 4, 8, 8)
    logits = torch.full((2, 8, 8), -5.0)
    for i in range(2):
        box_map[i].view(4, -1)[:, positive[i]] = target[i]
        logits[i].view(-1)[positive[i]] = 5.0
    torch.testing.assert_close(decode_boxes(logits, box_map, (64, 64)), boxes)


def test_iou_metrics_and_size_buckets_on_hand_made_boxes() -> None:
    assert box_iou(np.array([[0, 0, 10, 10]]), np.array([[5, 5, 15, 15]]))[0] == pytest.approx(25 / 175)
    pred = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [100, 100, 110, 110]], float)
    gt = np.array([[0, 0, 10, 10], [0, 0, 10, 20], [0, 0, 10, 10]], float)
    wh = np.full((3, 2), 1024.0)
    report = localization_report(pred, gt, wh, ["a", "a", "b"])
    assert report["overall"]["acc@0.5"] == pytest.approx(100 * 1 / 3)  # IoUs 1, 0.5 (not > 0.5), 0
    assert report["overall"]["acc@0.25"] == pytest.approx(100 * 2 / 3)
    assert report["overall"]["mIoU"] == pytest.approx(100 * 1.5 / 3)
    assert report["by_class"]["b"]["acc@0.25"] == 0 and report["by_class"]["a"]["count"] == 2
    sizes = size_bucket(
        np.array([[0, 0, 299, 299], [0, 0, 400, 400], [0, 0, 513, 513], [0, 0, 40, 40]]),
        np.array([[1024, 1024]] * 3 + [[128, 128]]),
    )
    assert sizes.tolist() == ["small", "medium", "large", "medium"]  # 40 px on a 128 px tile = 320 px on 1024
    centre = centre_box_baseline(np.array([[0, 0, 32, 16]]), np.array([[128, 128]]), np.array([[256, 256]]))
    np.testing.assert_allclose(centre, [[96, 112, 160, 144]])


def test_augmentation_keeps_box_and_click_on_the_object() -> None:
    reference, query = torch.zeros(8, 3, 64, 64), torch.zeros(8, 3, 32, 32)
    reference[:, :, 10:20, 30:50] = 1.0  # the object, x 30..50, y 10..20
    query[:, :, 4:8, 20:24] = 1.0
    box, click = torch.tensor([[30.0, 10.0, 50.0, 20.0]]).repeat(8, 1), torch.tensor([[22.0, 6.0]]).repeat(8, 1)
    q, c, r, b = augment_pair(query, click, reference, box, torch.Generator().manual_seed(3))
    assert not torch.equal(r, reference) and not torch.equal(q, query)  # something happened
    for i in range(8):
        x1, y1, x2, y2 = b[i].round().int().tolist()
        assert r[i, 0, y1 + 1 : y2 - 1, x1 + 1 : x2 - 1].min() > 0.9  # inside the new box: the object
        assert r[i, 0].sum() <= r[i, 0, max(0, y1 - 1) : y2 + 1, max(0, x1 - 1) : x2 + 1].sum() + 1e-3  # none outside
        cx, cy = c[i].long().tolist()
        assert q[i, 0, cy, cx] == 1.0


def test_objective_is_finite_and_trains_every_part() -> None:
    torch.manual_seed(0)
    spec = tiny_spec()
    model = SMGeo(spec)
    q, c, r = inputs(batch=4)
    loss, parts = smgeo_objective(model(q, c, r), torch.tensor([[8.0, 8.0, 24.0, 30.0]] * 4), (64, 64), spec.loss)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"heatmap", "box", "neg_entropy"}
    assert model.heatmap.weight.grad.abs().sum() > 0 and model.box.weight.grad.abs().sum() > 0
    assert model.backbone.patch_embed.proj.weight.grad[:, 3].abs().sum() > 0  # the click channel learns


def test_pretrained_backbone_loads_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = SMGeo(tiny_spec())
    path = tmp_path / "swin.pth"
    torch.save(SMGeo(tiny_spec(gmoe={"experts": 3, "top_k": 2, "blocks": ["none"] * 3})).backbone.state_dict(), path)
    loaded = SMGeo(tiny_spec(backbone={**tiny_spec().backbone.model_dump(), "pretrained": str(path)}))
    saved = torch.load(path)
    torch.testing.assert_close(loaded.backbone.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    assert not torch.equal(first.backbone.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    expert = loaded.moe_layers[0].experts[0]
    torch.testing.assert_close(expert.fc1.weight, saved["layers.1.blocks.0.mlp.fc1.weight"])  # upcycled from it


def test_spec_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match="one entry per backbone stage"):
        tiny_spec(gmoe={"blocks": ["none", "even"]})
    with pytest.raises(ValueError, match="top_k 4 exceeds"):
        tiny_spec(gmoe={"experts": 3, "top_k": 4, "blocks": ["none"] * 3})
    with pytest.raises(ValueError, match="outside the stage"):
        tiny_spec(gmoe={"blocks": ["none", [0, 2], "all"]})
    raw = {
        "name": "x",
        "data": {"format": "cvogl", "root": "d"},
        "preprocess": {"output_dir": "o"},
        "model": tiny_spec().model_dump(),
        "train": {"stage2_epochs": 3},
        "stages": ["prepare", "train"],
    }
    with pytest.raises(SpecError, match=r"job\.yaml: train\.stage2_epochs: Extra inputs are not permitted"):
        parse_spec(JobSpec, raw, "job.yaml")  # each family's train section has its own fields
    assert tiny_spec().moe_blocks() == [[], [0], [0, 1]]
    assert SMGeoModelSpec(name="smgeo").moe_blocks() == [[], [0], [0, 2, 4], [0]]
