import numpy as np
from PIL import Image

from geomoe.core.data.transforms import (
    SatelliteAugment,
    directional_matcher,
    has_directional,
    normalize_caption,
    prepare_caption,
    remove_directional,
    split_sentences,
    split_statements,
)


def test_normalize_caption_matches_xvlm_pre_caption() -> None:
    raw = 'A Red-roofed (large) building; "next" to a road/path!  Trees: many.'
    assert normalize_caption(raw) == "a red roofed large building next to a road path trees many"
    assert normalize_caption("one two three four", max_words=2) == "one two"
    assert normalize_caption("  ...  ") == ""


def test_split_sentences_and_statements() -> None:
    text = "The roof is red. A road runs by! Is it tall? yes; very"
    assert split_sentences(text) == ["The roof is red.", "A road runs by!", "Is it tall?", "yes;", "very"]
    long = "The image shows a large building with a red roof, a pond and many trees and the grass is green."
    parts = split_statements(long, max_words=8)
    assert len(parts) >= 2 and all(p for p in parts)
    assert split_statements("Short one.", max_words=8) == ["Short one."]


def test_directional_phrases_detected_on_word_boundaries() -> None:
    for text in [
        "To the north of the lake",
        "on the left side",
        "the TOP-LEFT corner",
        "in front of it",
        "lies to the south-east",
        "behind the hall",
    ]:
        assert has_directional(text), text
    for text in ["a bright roof", "a lefty player", "northernmost? no", "the frontier town", "a toppled tree"]:
        assert not has_directional(text), text


def test_remove_directional_keeps_clean_sentences() -> None:
    sentences = ["A red roof.", "A road runs along the north side.", "Many trees."]
    assert remove_directional(sentences) == ["A red roof.", "Many trees."]
    custom = directional_matcher(["red"])
    assert remove_directional(sentences, custom) == sentences[1:]


def test_prepare_caption_sanitises_before_normalising() -> None:
    raw = "A large building. A court lies to the east of it. Trees everywhere."
    plain = prepare_caption(raw, max_words=30)
    clean = prepare_caption(raw, max_words=30, sanitize=True)
    assert "east" in plain.caption and "east" not in clean.caption
    assert clean.caption == "a large building trees everywhere"
    assert clean.statements == ["a large building", "trees everywhere"]
    assert prepare_caption("Go north.", 30, sanitize=True).caption == ""
    # what an LLM refines: the text before normalisation, cased and punctuated, without the directional sentence
    assert plain.source == raw and clean.source == "A large building. Trees everywhere."


def test_satellite_augment_is_deterministic_and_geometrically_correct() -> None:
    a = SatelliteAugment.sample(np.random.default_rng(3))
    assert a == SatelliteAugment.sample(np.random.default_rng(3))
    pixels = np.zeros((4, 6, 3), dtype=np.uint8)
    pixels[0, 0] = 255  # top-left marker
    image = Image.fromarray(pixels)
    out = np.asarray(SatelliteAugment(1, False, False, 1.0, 1.0).apply(image))
    assert out.shape == (6, 4, 3) and out[5, 0].sum() > 0  # 90 deg CCW moves top-left to bottom-left
    out = np.asarray(SatelliteAugment(0, True, True, 1.0, 1.0).apply(image))
    assert out[3, 5].sum() > 0
    assert SatelliteAugment(0, False, False, 1.1, 0.9).is_geometric() is False
