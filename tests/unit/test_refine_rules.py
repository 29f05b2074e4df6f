"""Rules refinement (PE-MoE's textual domain alignment without an LLM) and its place in prepare."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import pytest

from geomoe.core.data.refine_rules import load_rules
from geomoe.core.data.transforms import prepare_caption
from geomoe.core.errors import SpecError

CAPTION = (
    "The image shows a large square building with a red flat roof. "
    "A road runs along the north side of the building. There are no trees around the building."
)


def test_builtin_rules_strip_the_opening_and_frame_the_subject_per_platform() -> None:
    rules = load_rules()
    refined = {
        p: rules.refine(["In this picture we can see a tall white building", "A road."], p, "k") for p in rules.frames
    }
    for platform, sentences in refined.items():
        assert len(sentences) == rules.sentences == 1
        assert "picture" not in sentences[0] and "a tall white building" in sentences[0]
        frame = next(f for f in rules.frames[platform] if f.replace("{}", "").strip() in sentences[0])
        assert frame, platform
    assert rules.refine(["A b c."], "drone", "same") == rules.refine(["A b c."], "drone", "same")  # stable
    assert len({rules.refine(["x"], "drone", str(k))[0] for k in range(40)}) > 1  # frames vary across captions


def test_refine_inside_prepare_caption() -> None:
    rules = load_rules()
    out = prepare_caption(CAPTION, 30, refine=partial(rules.refine, platform="satellite", key="img#0"))
    assert (
        out.caption.endswith("a large square building with a red flat roof") or "seen from a satellite" in out.caption
    )
    assert "road" not in out.caption and "the image shows" not in out.caption
    assert any(w in out.caption for w in ("satellite", "top down", "overhead"))


def test_bad_rules_file_names_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "rules.yaml"
    bad.write_text("sentences: 1\nlead_ins: []\n")
    with pytest.raises(SpecError, match=r"rules\.yaml: frames"):
        load_rules(bad)
    bad.write_text("sentences: 1\nlead_ins: ['(unclosed']\nframes: {drone: [x]}\n")
    with pytest.raises(SpecError, match="invalid refinement rules"):
        load_rules(bad)
    with pytest.raises(ValueError, match="no frames for platform 'ground'"):
        load_rules_with({"drone": ["drone view of"]}, tmp_path).refine(["a house"], "ground", "k")


def load_rules_with(frames: dict[str, list[str]], tmp_path: Path):  # type: ignore[no-untyped-def]
    path = tmp_path / "ok.yaml"
    path.write_text(f"sentences: 1\nframes: {frames}\n")
    return load_rules(path)
