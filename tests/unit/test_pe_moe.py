"""PE-MoE on tiny real model classes (XLMRobertaModel, open_clip EVA-CLIP with a micro timm Eva)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest
import torch

from geomoe.core.data.transforms import normalize_caption
from geomoe.core.errors import ModelError
from geomoe.core.models.tiny import RECIPE_FILE, built_recipe, text_model_recipe, text_settings
from geomoe.families.pe_moe.driver import backbone_corpus
from geomoe.families.pe_moe.factory import build_pe_moe, ensure_tiny_models, tokenize
from geomoe.families.pe_moe.losses import gate_loss, hard_negative_loss, multi_positive_info_nce
from geomoe.families.pe_moe.model import PEMoE, fused_scores
from geomoe.families.pe_moe.spec import ImageEncoderSpec, PEMoEModelSpec, TextEncoderSpec, TinyModelsSpec

CORPUS = ["a red flat roof with a pond", "drone view of a tall white building", "street view of a brick facade"] * 20


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("tiny")
    ensure_tiny_models(spec(root), CORPUS)
    return root


def spec(root: Path, **kw: object) -> PEMoEModelSpec:
    image = ImageEncoderSpec(name="geomoe-eva02-micro", pretrained=str(root / "image.pt"), image_size=64, tail_blocks=2)
    base = dict(
        embed_dim=32,
        gate_hidden=16,
        text=TextEncoderSpec(source=str(root / "text"), tail_layers=2, max_length=16),
        image=image,
        tiny=TinyModelsSpec(text_hidden=32, text_layers=3, text_heads=2),
    )
    return PEMoEModelSpec.model_validate({**base, **kw})


def batch(tokenizer: object, n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ids, mask = tokenize(tokenizer, CORPUS[:n], max_length=16)
    return ids, mask, torch.randn(n, 3, 64, 64)


@pytest.mark.parametrize(
    ("fusion", "experts"),
    [
        ("unified", [{"name": "all", "platforms": ["satellite", "drone", "ground"]}]),
        ("static", None),
        ("dynamic", None),
    ],
)
def test_each_fusion_mode_forward_backward(tiny_dir: Path, fusion: str, experts: object) -> None:
    extra = {"fusion": fusion} | ({"experts": experts} if experts else {})
    model, tok = build_pe_moe(spec(tiny_dir, **extra))
    ids, mask, images = batch(tok)
    shared, t = model.encode_text(ids, mask)
    v = model.encode_image(images)
    g = model.gate_weights(shared)
    scores = fused_scores(t, v, g)
    k = 1 if fusion == "unified" else 3
    assert t.shape == (k, 4, 32) and v.shape == (k, 4, 32) and g.shape == (4, k) and scores.shape == (4, 4)
    assert torch.allclose(g.sum(dim=1), torch.ones(4))
    loss = multi_positive_info_nce(t[0], v[0], model.logit_scale.exp(), torch.arange(4))
    if fusion == "dynamic":
        loss = loss + gate_loss(model.gate_logits(shared), torch.tensor([0, 1, 2, 0]))
    loss.backward()
    assert torch.isfinite(loss)
    assert model.experts[0].visual_proj.weight.grad is not None
    assert model.experts[0].text_tail.layers[0].attention.self.query.weight.grad is not None


def test_trunk_is_frozen_and_runs_once_per_batch(tiny_dir: Path) -> None:
    model, tok = build_pe_moe(spec(tiny_dir))
    calls = {"text": 0, "image": 0}
    model.text_trunk.register_forward_hook(lambda *a: calls.__setitem__("text", calls["text"] + 1))
    model.image_trunk.register_forward_hook(lambda *a: calls.__setitem__("image", calls["image"] + 1))
    ids, mask, images = batch(tok)
    shared, t = model.encode_text(ids, mask)
    v = model.encode_image(images)
    fused_scores(t, v, model.gate_weights(shared)).sum().backward()
    assert calls == {"text": 1, "image": 1}  # three experts, one trunk pass each
    trunk_params = [*model.text_trunk.parameters(), *model.image_trunk.parameters()]
    assert trunk_params and all(p.grad is None and not p.requires_grad for p in trunk_params)
    model.train()
    assert not model.text_trunk.training and not model.image_trunk.training


def test_fused_score_equals_per_expert_formula(tiny_dir: Path) -> None:
    model, tok = build_pe_moe(spec(tiny_dir))
    ids, mask, images = batch(tok)
    with torch.no_grad():
        shared, t = model.encode_text(ids, mask)
        v = model.encode_image(images)
        g = model.gate_weights(shared)
        fused = fused_scores(t, v, g)
    for q in range(4):
        for n in range(4):
            expected = sum(g[q, k] * torch.cosine_similarity(t[k, q], v[k, n], dim=0) for k in range(3))
            assert torch.allclose(fused[q, n], expected, atol=1e-5)


def test_training_forward_routes_each_row_to_its_own_expert(tiny_dir: Path) -> None:
    model, tok = build_pe_moe(spec(tiny_dir))
    ids, mask, images = batch(tok, 6)
    experts = torch.tensor([0, 1, 2, 2, 1, 0])
    negatives = torch.randn(6, 2, 3, 64, 64)
    model.eval()
    with torch.no_grad():
        out = model(ids, mask, images, experts, negatives)
        _, t_all = model.encode_text(ids, mask)
        v_all = model.encode_image(images)
        v_neg_all = model.encode_image(negatives.flatten(0, 1)).unflatten(1, (6, 2))
    rows = torch.arange(6)
    assert out.t.shape == (6, 32) and out.v.shape == (6, 32) and out.v_neg.shape == (6, 2, 32)
    torch.testing.assert_close(out.t, t_all[experts, rows], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.v, v_all[experts, rows], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(out.v_neg, v_neg_all[experts, rows], atol=1e-5, rtol=1e-4)


def test_gate_top_k_keeps_k_experts(tiny_dir: Path) -> None:
    model, tok = build_pe_moe(spec(tiny_dir, gate_top_k=1))
    ids, mask, _ = batch(tok)
    with torch.no_grad():
        g = model.gate_weights(model.encode_text(ids, mask)[0])
    assert ((g > 0).sum(dim=1) == 1).all() and torch.allclose(g.sum(dim=1), torch.ones(4))


def test_spec_rejects_overlapping_experts() -> None:
    with pytest.raises(ValueError, match="one expert only"):
        PEMoEModelSpec(experts=[{"name": "a", "platforms": ["drone"]}, {"name": "b", "platforms": ["drone"]}])  # type: ignore[list-item]


def test_hard_negative_loss_prefers_the_positive() -> None:
    t = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    good = hard_negative_loss(t, t, -t[:, None, :].repeat(1, 2, 1), torch.tensor(10.0))
    bad = hard_negative_loss(t, -t, t[:, None, :].repeat(1, 2, 1), torch.tensor(10.0))
    assert good < 0.01 < bad


def test_multi_positive_pulls_same_building_images_together() -> None:
    t = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]), dim=-1)

    def pull_on_image1_towards_caption0(groups: list[int]) -> float:
        v = t.clone().requires_grad_(True)
        multi_positive_info_nce(t, v, torch.tensor(10.0), torch.tensor(groups)).backward()
        assert v.grad is not None
        return float(-(v.grad[1] @ t[0]))  # > 0: a descent step moves image 1 towards caption 0

    assert pull_on_image1_towards_caption0([0, 0, 1]) > 0  # same building: a positive
    assert pull_on_image1_towards_caption0([0, 1, 2]) < 0  # different buildings: pushed apart


def test_pe_moe_rejects_unified_with_many_experts(tiny_dir: Path) -> None:
    model, _ = build_pe_moe(spec(tiny_dir))
    with pytest.raises(ValueError, match="exactly one expert"):
        PEMoE(model.text_trunk, model.image_trunk, num_experts=3, embed_dim=32, fusion="unified")


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_caption_similarity_uses_the_text_models_own_dense_embedding(tiny_dir: Path, pool: str) -> None:
    """CGRS's "BGE-M3 dense" similarity is the full frozen text model's pooled last layer, normalised (BGE-M3's
    dense vector with CLS pooling), not the trunk's state ``tail_layers`` before the end (the gate's input)."""
    import torch.nn.functional as F
    from transformers import XLMRobertaModel

    from geomoe.core.models.encoders import masked_mean

    model, tok = build_pe_moe(spec(tiny_dir, text={**spec(tiny_dir).text.model_dump(), "pool": pool}))
    model.eval()
    ids, mask, _ = batch(tok)
    full = XLMRobertaModel.from_pretrained(str(tiny_dir / "text"), add_pooling_layer=False).eval()
    with torch.no_grad():
        last = full(input_ids=ids, attention_mask=mask).last_hidden_state
        shared, _ = model.encode_text(ids, mask)
    pooled = last[:, 0] if pool == "cls" else masked_mean(last, mask)
    dense = model.dense_text(ids, mask)
    torch.testing.assert_close(dense, F.normalize(pooled, dim=-1), atol=1e-5, rtol=1e-4)
    assert (dense - F.normalize(shared, dim=-1)).abs().max() > 1e-3  # not the trunk's shared state


def test_a_tiny_model_folder_serves_only_the_captions_it_was_built_from(tmp_path: Path) -> None:
    ensure_tiny_models(spec(tmp_path), CORPUS)
    weights, image = tmp_path / "text" / "model.safetensors", tmp_path / "image.pt"
    built = weights.stat().st_mtime_ns, image.stat().st_mtime_ns
    ensure_tiny_models(spec(tmp_path), CORPUS[::-1])  # the same captions in another order: the same model, reused
    assert (weights.stat().st_mtime_ns, image.stat().st_mtime_ns) == built
    with pytest.raises(ModelError, match=r"model\.text\.source: .* built from other captions"):
        ensure_tiny_models(spec(tmp_path), [*CORPUS, "a blue domed roof"])  # another job's data: never reused
    with pytest.raises(ModelError, match="other captions or settings"):  # nor another seed
        ensure_tiny_models(spec(tmp_path, tiny=TinyModelsSpec(text_hidden=32, text_layers=3, seed=1)), CORPUS)
    (tmp_path / "text" / RECIPE_FILE).unlink()  # as an older geomoe left it: both rebuilt, with the recipe
    ensure_tiny_models(spec(tmp_path), [*CORPUS, "a blue domed roof"])
    settings = text_settings(32, 3, 2, 16, 0, None) | {"image": "geomoe-eva02-micro"}
    assert built_recipe(tmp_path / "text") == text_model_recipe([*CORPUS, "a blue domed roof"], settings)
    assert image.stat().st_mtime_ns != built[1]


def test_the_backbone_learns_the_datasets_captions_not_the_refined_ones() -> None:
    """The corpus reads the raw captions only (that prepare and refine keep them is the pipelines' part: the
    e2e calibration test trains an unrefined and a refined row on one world, which the recipe check would refuse
    if their corpora differed)."""
    raw = ["In this picture we can see a red roof. The building has 8 floors.", "A brick facade; a pond."]
    rows = {"caption_raw": [*raw, raw[0]], "augment": ["", "", "rot90"]}

    class Prepared:  # the one method backbone_corpus reads
        def __init__(self, captions: list[str]) -> None:
            self.table = pa.table({**rows, "caption": captions})

        def read_split(self, split: str, columns: list[str]) -> pa.Table:
            assert split == "train"
            return self.table.select(columns)

    refined = Prepared(["drone view of a red roof", "street view of a brick facade", "satellite view of a roof"])
    unrefined = Prepared([normalize_caption(c, 30) for c in rows["caption_raw"]])
    corpus = backbone_corpus(refined, 6)  # type: ignore[arg-type]
    assert corpus == backbone_corpus(unrefined, 6) == ["in this picture we can see", "a brick facade a pond"]  # type: ignore[arg-type]
