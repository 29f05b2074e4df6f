"""SMGeo core: GMoE dispatch and entropy, the model's dependence on query and click, targets, decoding, IoU,
augmentation, and the spec checks. Tiny Swin (embed 16, 3 stages), seeded, no Ray."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.errors import SpecError
from geomoe.core.metrics import box_iou
from geomoe.families.smgeo.gmoe import ExpertFFN, GridMoE, dense_reference, sparse_dispatch
from geomoe.families.smgeo.localization import augment_pair, centre_box_baseline, localization_report, size_bucket
from geomoe.families.smgeo.losses import smgeo_objective, smgeo_targets
from geomoe.families.smgeo.model import ClickPrompt, SMGeo, decode_boxes
from geomoe.families.smgeo.spec import SMGeoModelSpec

TINY_GMOE = {"experts": 3, "top_k": 2, "grid": [2, 2], "blocks": ["none", "even", "all"]}


def tiny_spec(**kw: object) -> SMGeoModelSpec:
    raw = {
        "name": "smgeo",
        "query_size": 32,
        "reference_size": 64,
        "backbone": {"embed_dim": 16, "depths": [2, 2, 2], "num_heads": [1, 2, 4], "window_size": 4, "drop_path": 0},
        "gmoe": TINY_GMOE,
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
    with torch.no_grad():  # routers that score every expert alike: p = 1/3 in every cell of every layer and view
        for layer in model.moe_layers:
            for router in layer.routers:
                router.weight.zero_()
                router.bias.zero_()
    # Eq. 21 sums p log p over all E = 3 experts: exactly -log 3 for uniform routing, averaged over layers and views
    assert float(model(q, c, r).neg_entropy.detach()) == pytest.approx(-np.log(3), abs=1e-6)
    model = SMGeo(tiny_spec())
    out = model(q, c, r)
    assert out.neg_entropy.requires_grad and float(out.neg_entropy.detach()) > -np.log(3) + 1e-4  # not uniform
    out.neg_entropy.backward()
    for layer in model.moe_layers:
        for router in layer.routers:  # both views' routers
            assert router.weight.grad is not None and router.weight.grad.abs().sum() > 0


def _route_with_logits(layer: GridMoE, logits: list[float]) -> None:
    """Route one cell through a router whose logits are exactly ``logits`` (zero weights, the logits as bias)."""
    router = layer.routers[0]
    with torch.no_grad():
        router.weight.zero_()
        router.bias.copy_(torch.tensor(logits))
    layer.route(torch.randn(1, 1, 1, router.in_features))


def test_gate_entropy_covers_all_experts_even_at_top_1() -> None:
    """Eq. 21-22 over the router's full softmax: non-zero with gradient at k = 1, and a router that always picks the
    same two experts with equal logits is penalised more (lower entropy) than one spread over all four."""
    layer = moe_layer(experts=4, top_k=1).eval()
    _route_with_logits(layer, [0.0, 0.0, 0.0, 0.0])
    balanced = float(layer.neg_entropy.detach())
    assert balanced == pytest.approx(-np.log(4), abs=1e-5)
    _route_with_logits(layer, [4.0, 4.0, -4.0, -4.0])  # collapsed onto two experts
    collapsed = layer.neg_entropy
    assert collapsed.requires_grad
    collapsed.backward()
    assert layer.routers[0].bias.grad is not None and layer.routers[0].bias.grad.abs().sum() > 0
    assert float(collapsed.detach()) > balanced + 0.5  # a larger loss term for the collapsed router


def test_each_view_routes_with_its_own_router() -> None:
    """Fig. 4: query and reference passes use different routers over the same experts; ``routers: shared`` has one."""
    torch.manual_seed(0)
    model = SMGeo(tiny_spec()).eval()
    layer = model.moe_layers[0]
    assert len(layer.routers) == 2
    with torch.no_grad():
        layer.routers[0].weight.normal_()  # make the two routers choose differently
        layer.routers[1].weight.normal_()
    x = torch.randn(4, 8, 8, layer.routers[0].in_features)
    layer.view = 0
    ids_query, _ = layer.route(x)
    layer.view = 1
    ids_reference, _ = layer.route(x)
    assert not torch.equal(ids_query, ids_reference)
    q, c, r = inputs()
    out = model(q, c, r)
    out.neg_entropy.backward()
    assert all(router.weight.grad is not None for router in layer.routers)  # both views trained
    shared = SMGeo(tiny_spec(gmoe={**TINY_GMOE, "routers": "shared"}))
    assert len(shared.moe_layers[0].routers) == 1


@pytest.mark.parametrize("click", ["prompt", "channel"])
def test_prediction_depends_on_query_image_and_click(click: str) -> None:
    torch.manual_seed(0)
    model = SMGeo(tiny_spec(click=click)).eval()
    q, c, r = inputs()
    with torch.no_grad():
        base = model(q, c, r).heatmap_logits
        other_query = model(q.flip(-1), c, r).heatmap_logits
        other_click = model(q, 32 - c, r).heatmap_logits
        no_click = model(q, c, r, use_click=False).heatmap_logits
        other_ref = model(q, c, r.flip(-2)).heatmap_logits
    for changed in (other_query, other_click, no_click, other_ref):
        assert (changed - base).abs().max() > 1e-4


@pytest.mark.parametrize("dense_path", [True, False])
def test_gmoe_blocks_equal_the_dense_block_at_init(dense_path: bool) -> None:
    """Beside a kept FFN the experts start at output 0; in its place they start as copies of it and the top-k
    gates sum to 1. Either way GMoE = FFN at first, so a pretrained backbone starts unchanged."""
    torch.manual_seed(0)
    spec = tiny_spec(gmoe={"experts": 3, "top_k": 2, "grid": [2, 2], "blocks": ["none", "none", "none"]})
    dense = SMGeo(spec).eval()
    ratio = 0.5 if dense_path else None
    moe = {
        **TINY_GMOE,
        "blocks": ["none", "all", "all"],
        "share_per_stage": False,
        "dense_path": dense_path,
        "expert_mlp_ratio": ratio,
    }
    torch.manual_seed(0)
    sparse = SMGeo(tiny_spec(gmoe=moe)).eval()
    assert len(sparse.moe_layers) == 4 and len(sparse.moe_layers[0].experts) == 3
    shared = SMGeo(tiny_spec(gmoe={**moe, "share_per_stage": True}))
    assert shared.moe_layers[0].experts is shared.moe_layers[1].experts  # one pool per stage
    assert sparse.moe_layers[0].experts is not sparse.moe_layers[1].experts
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(sparse.backbone.forward_features(x), dense.backbone.forward_features(x))


def _parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_parameter_count_grows_by_the_expert_formula() -> None:
    """Paper design at reduced width: each expert adds (d^2 + 1.5 d) per stage pool (hidden d/2, two layers with
    biases) and 2 (d + 1) per GMoE block (one router column per view); the dense FFNs stay. Table II's +0.74M per
    expert is this formula at Swin-T's widths (test_real_size checks the real rows)."""
    blocks = ["none", "even", "all"]  # stage dims 16, 32, 64; GMoE blocks: 1 in stage 1, 2 in stage 2
    dims, blocks_per_stage = [32, 64], [1, 2]
    dense = _parameters(SMGeo(tiny_spec(gmoe={**TINY_GMOE, "blocks": ["none"] * 3})))
    per_expert = sum(d * d + 3 * d // 2 + n * 2 * (d + 1) for d, n in zip(dims, blocks_per_stage, strict=True))
    for experts in (2, 3, 5):
        model = SMGeo(tiny_spec(gmoe={**TINY_GMOE, "experts": experts, "blocks": blocks}))
        assert _parameters(model) == dense + experts * per_expert
    # the full-size option replaces each FFN by E copies of its size (8 d^2 + 5 d each at mlp ratio 4)
    full = SMGeo(tiny_spec(gmoe={**TINY_GMOE, "blocks": blocks, "dense_path": False, "expert_mlp_ratio": None}))
    ffn = sum(8 * d * d + 5 * d for d in dims)
    routers = sum(n * 2 * 3 * (d + 1) for d, n in zip(dims, blocks_per_stage, strict=True))
    replaced = sum((n - 1) * (8 * d * d + 5 * d) for d, n in zip(dims, blocks_per_stage, strict=True))
    assert _parameters(full) == dense - ffn - replaced + 3 * ffn + routers


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


@pytest.mark.parametrize("click", ["prompt", "channel"])
def test_objective_is_finite_and_trains_every_part(click: str) -> None:
    torch.manual_seed(0)
    spec = tiny_spec(click=click)
    model = SMGeo(spec)
    q, c, r = inputs(batch=4)
    loss, parts = smgeo_objective(model(q, c, r), torch.tensor([[8.0, 8.0, 24.0, 30.0]] * 4), (64, 64), spec.loss)
    loss.backward()
    assert torch.isfinite(loss) and set(parts) == {"heatmap", "box", "neg_entropy"}
    assert model.heatmap.weight.grad.abs().sum() > 0 and model.box.weight.grad.abs().sum() > 0
    if click == "channel":
        assert model.backbone.patch_embed.proj.weight.grad[:, 3].abs().sum() > 0  # the click channel learns
    else:
        assert model.prompt is not None and model.prompt.point.grad.abs().sum() > 0  # the prompt embedding learns
        assert model.backbone.patch_embed.proj.weight.shape[1] == 3  # RGB only: pretrained weights fit as they are


def test_click_prompt_reads_the_query_features_at_the_click() -> None:
    """The encoding alone (features 0, the point embedding at its initial 0) attends to the query cell under the
    click: the Fourier features' dot product is a kernel of the distance, one cell wide."""
    prompt = ClickPrompt(64, cells_per_side=4)
    features = torch.zeros(6, 4, 4, 64)
    clicks = torch.tensor([[4.0, 4.0], [28.0, 4.0], [4.0, 28.0], [28.0, 28.0], [12.0, 20.0], [20.0, 12.0]])
    cells = (clicks // 8).long()  # a 32-px query, 4 x 4 cells of 8 px
    features[torch.arange(6), cells[:, 1], cells[:, 0], 10] = 1.0  # a marker in the clicked cell only
    readout = prompt(features, clicks, (32, 32))
    assert torch.all(readout[:, 10] > 0.35), readout[:, 10]  # the clicked cell: over 5x its uniform share (1/16)
    far = prompt(features, 32 - clicks, (32, 32))  # the opposite corner: the marker is far away
    assert torch.all(far[:, 10] < 0.05), far[:, 10]


def test_click_prompt_is_computed_in_fp32_under_autocast() -> None:
    """A GPU step runs under bf16 autocast: the prompt's angles (tens of radians at 32 cells a side) would lose
    half a radian in bf16, so the prompt opts out and gives exactly its fp32 readout (evaluation runs in fp32)."""
    torch.manual_seed(0)
    prompt = ClickPrompt(64, cells_per_side=32)
    features, clicks = torch.randn(3, 32, 32, 64), torch.rand(3, 2) * 1024
    plain = prompt(features, clicks, (1024, 1024))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        autocast = prompt(features, clicks, (1024, 1024))
        assert torch.matmul(features[0], features[0].mT).dtype == torch.bfloat16  # autocast is on around it
    assert torch.equal(autocast, plain)


def test_a_checkpoint_from_before_the_click_prompt_loads_as_a_channel_model(tmp_path: Path) -> None:
    """A stored spec without ``model.click`` was trained with the click as an input channel: it loads as one (read
    as today's default, the 4-channel patch embedding would not fit)."""
    from geomoe.core.config import load_job
    from geomoe.core.models.checkpoint import save_checkpoint
    from geomoe.families.smgeo.model import load_smgeo

    torch.manual_seed(0)
    spec = load_job(Path(__file__).resolve().parents[2] / "jobs" / "smgeo_quickstart.yaml")
    spec = spec.model_copy(update={"model": tiny_spec(click="channel")})
    model = SMGeo(spec.model_as(SMGeoModelSpec))
    save_checkpoint(tmp_path / "old", model, spec, 1, 0)
    manifest = tmp_path / "old" / "checkpoint.json"
    raw = json.loads(manifest.read_text())
    del raw["spec"]["model"]["click"]  # what a checkpoint written before the option holds
    manifest.write_text(json.dumps(raw))
    loaded, loaded_spec, _ = load_smgeo(str(tmp_path / "old"))
    assert loaded_spec.model_as(SMGeoModelSpec).click == "channel" and loaded.prompt is None
    q, c, r = inputs()
    with torch.no_grad():
        torch.testing.assert_close(loaded(q, c, r).heatmap_logits, model.eval()(q, c, r).heatmap_logits)


def test_pretrained_backbone_loads_from_a_local_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    first = SMGeo(tiny_spec())
    path = tmp_path / "swin.pth"
    torch.save(SMGeo(tiny_spec(gmoe={"experts": 3, "top_k": 2, "blocks": ["none"] * 3})).backbone.state_dict(), path)
    loaded = SMGeo(tiny_spec(backbone={**tiny_spec().backbone.model_dump(), "pretrained": str(path)}))
    saved = torch.load(path)
    torch.testing.assert_close(loaded.backbone.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    assert not torch.equal(first.backbone.patch_embed.proj.weight, saved["patch_embed.proj.weight"])
    kept = loaded.backbone.layers[1].blocks[0].mlp.dense  # the dense FFN beside the experts is the pretrained one
    torch.testing.assert_close(kept.fc1.weight, saved["layers.1.blocks.0.mlp.fc1.weight"])
    upcycled = SMGeo(
        tiny_spec(
            backbone={**tiny_spec().backbone.model_dump(), "pretrained": str(path)},
            gmoe={**TINY_GMOE, "dense_path": False, "expert_mlp_ratio": None},
        )
    )
    expert = upcycled.moe_layers[0].experts[0]
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
    with pytest.raises(SpecError, match=r"job\.yaml: train\.stage2_epochs: unknown key"):
        parse_spec(JobSpec, raw, "job.yaml")  # each family's train section has its own fields
    assert tiny_spec().moe_blocks() == [[], [0], [0, 1]]
    assert SMGeoModelSpec(name="smgeo").moe_blocks() == [[], [0], [0, 2, 4], [0]]


class _Shard:
    """A validation shard's ``iter_batches`` over fixed numpy batches (what Ray Train hands a worker)."""

    def __init__(self, batches: list[dict[str, np.ndarray]]) -> None:
        self.batches = batches

    def iter_batches(self, **_: object) -> list[dict[str, np.ndarray]]:
        return self.batches


def test_validation_and_test_decoding_agree_exactly_under_autocast() -> None:
    """The best epoch is picked by validation: it must decode exactly as the test evaluation does (fp32), even
    when the training loop runs with bf16 autocast around it."""
    from geomoe.families.smgeo.model import predict_input_boxes
    from geomoe.families.smgeo.step import validate

    torch.manual_seed(0)
    model = SMGeo(tiny_spec()).eval()
    q, c, r = inputs(batch=4)
    reference = np.full((4, 2), 1000.0)
    box = torch.tensor([[8.0, 8.0, 40.0, 40.0], [0.0, 10.0, 20.0, 60.0], [30.0, 30.0, 50.0, 44.0], [1, 2, 63, 63.0]])
    fp32, _ = predict_input_boxes(model, q, c, r)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under_autocast, _ = predict_input_boxes(model, q, c, r)
        shard = _Shard([{"query": q.numpy(), "click": c.numpy(), "reference": r.numpy(), "box": box.numpy(),
                         "reference_wh": reference}])  # fmt: skip
        metrics = validate(model, shard, 4, torch.device("cpu"), 64)
    np.testing.assert_array_equal(under_autocast, fp32)
    with torch.no_grad():
        out = model(q, c, r)
    np.testing.assert_array_equal(fp32, decode_boxes(out.heatmap_logits, out.box, (64, 64)).numpy())
    assert set(metrics) == {"val_acc25", "val_acc50", "val_miou"}


def test_validation_metrics_on_hand_made_boxes(monkeypatch: pytest.MonkeyPatch) -> None:
    """Predictions with IoU 1, 0.6, 0.3 and 0 against their boxes (64-px inputs of 128-px files): acc@0.25 = 3/4,
    acc@0.5 = 2/4, mIoU = 1.9 / 4, over two batches."""
    from geomoe.families.smgeo import step

    box = np.array([[0, 0, 20, 20], [0, 0, 20, 20], [10, 10, 30, 30], [0, 0, 10, 10]], np.float32)
    pred = np.array([[0, 0, 20, 20], [0, 0, 20, 12], [10, 10, 30, 16], [40, 40, 50, 50]], np.float32)
    zeros = np.zeros((4, 1), np.float32)
    batches = [
        {"query": zeros[i : i + 2], "click": zeros[i : i + 2], "reference": zeros[i : i + 2], "box": box[i : i + 2],
         "reference_wh": np.full((2, 2), 128.0), "pred": pred[i : i + 2]}
        for i in (0, 2)
    ]  # fmt: skip
    served = iter(batches)
    monkeypatch.setattr(step, "predict_input_boxes", lambda *_: (next(served)["pred"], None))
    metrics = step.validate(torch.nn.Identity(), _Shard(batches), 2, torch.device("cpu"), 64)
    assert metrics == pytest.approx({"val_acc25": 75.0, "val_acc50": 50.0, "val_miou": 47.5})


def test_reports_label_our_design_choices() -> None:
    from geomoe.families.smgeo import our_choices

    # the paper's text: plain average pooling, per-view routers, experts in place of the FFN
    assert our_choices(SMGeoModelSpec(gmoe={"dense_path": False, "expert_mlp_ratio": None})) == []
    ours = our_choices(SMGeoModelSpec(query_pool="click", gmoe={"routers": "shared"}))  # the FFN kept: the default
    assert len(ours) == 3 and all("(ours" in choice for choice in ours) and "FFN kept" in ours[2]
    authors = our_choices(SMGeoModelSpec(click="channel", gmoe={"dense_path": False, "expert_mlp_ratio": None}))
    assert authors == ["the click as a 4th input channel (the authors' code; the paper encodes it as a prompt)"]
