"""The paper's real-size architectures build with random weights (no download) and run one forward.

Marked slow: XLM-R large (BGE-M3's architecture, 24 layers x 1024) and EVA02-L-14 at 384 px are ~1 B
parameters together; excluded from `make test`, run with `pytest -m slow`.
"""

import pytest
import torch

from geomoe.core.models.encoders import ImageTrunk, TextTrunk, load_image_tower
from geomoe.families.pe_moe.model import PEMoE

pytestmark = pytest.mark.slow


def test_real_size_pe_moe_builds_and_runs() -> None:
    from transformers import XLMRobertaConfig, XLMRobertaModel

    text = XLMRobertaModel(
        XLMRobertaConfig(vocab_size=250_002, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                         intermediate_size=4096, max_position_embeddings=8194, type_vocab_size=1, pad_token_id=1),
        add_pooling_layer=False,
    )  # fmt: skip
    eva = load_image_tower("EVA02-L-14", None, 384)
    assert len(eva.blocks) == 24 and eva.num_features == 1024 and eva.patch_embed.grid_size == (27, 27)
    model = PEMoE(TextTrunk(text, 2), ImageTrunk(eva, 4), num_experts=3, embed_dim=1024)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    assert 200e6 < trainable < 300e6  # 3 x (2 text layers + 4 image blocks + projection) + gate
    assert frozen > 800e6
    with torch.no_grad():
        ids, mask = torch.tensor([[0, 100, 200, 2]] * 3), torch.ones(3, 4, dtype=torch.long)
        out = model(ids, mask, torch.randn(3, 3, 384, 384), torch.arange(3))
    assert out.t.shape == (3, 1024) and out.v.shape == (3, 1024) and out.gate_logits.shape == (3, 3)


def test_real_size_smgeo_builds_and_runs_at_1024() -> None:
    """Swin-T, 6 experts, top-2, GMoE in even blocks of stages 1-3, 1024 px: one forward with real weights' shapes
    (the parameter counts of Tables II and IV: tests/unit/test_smgeo_params.py, on the meta device)."""
    from geomoe.families.smgeo.model import SMGeo
    from geomoe.families.smgeo.spec import SMGeoModelSpec

    model = SMGeo(SMGeoModelSpec(name="smgeo")).eval()
    assert len(model.moe_layers) == 5 and [len(m.experts) for m in model.moe_layers] == [6] * 5
    with torch.no_grad():
        out = model(torch.randn(1, 3, 1024, 1024), torch.tensor([[512.0, 512.0]]), torch.randn(1, 3, 1024, 1024))
    assert out.heatmap_logits.shape == (1, 32, 32) and out.box.shape == (1, 4, 32, 32)
