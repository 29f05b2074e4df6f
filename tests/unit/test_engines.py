"""Refinement prompts and the checks a generated caption must pass before it may replace the original."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomoe.engines.prompts import BUILTIN_PROMPTS, clean_generation, load_prompts, rejection
from geomoe.errors import SpecError


def test_builtin_prompts_cover_every_platform_and_are_hashed() -> None:
    prompts = load_prompts()
    assert set(prompts.platforms) == {"satellite", "drone", "ground"} and len(prompts.sha256) == 64
    messages = prompts.messages("a red roof", "drone")
    assert [m["role"] for m in messages] == ["system", "user"] and "a red roof" in messages[1]["content"]
    with pytest.raises(ValueError, match="no template for platform 'boat'"):
        prompts.messages("x", "boat")
    assert load_prompts(BUILTIN_PROMPTS).sha256 == prompts.sha256


def test_bad_prompt_files_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "p.yaml"
    bad.write_text("system: s\nplatforms: {drone: 'no placeholder'}\n")
    with pytest.raises(SpecError, match=r"p\.yaml: platforms\.drone: a template must be text containing"):
        load_prompts(bad)
    with pytest.raises(SpecError, match="prompt file not found"):
        load_prompts(tmp_path / "none.yaml")


@pytest.mark.parametrize(
    ("generated", "augmented", "reason"),
    [
        (None, False, "engine failed"),
        ("", False, "empty"),
        ("roof", False, "too short"),
        (" ".join(["word"] * 41), False, "too long"),
        ("Sure, here is a drone view of a red building", False, "chat boilerplate"),
        ("a red building with a pond to the north", True, "new directional phrase on an augmented satellite sample"),
        ("a red building with a pond to the north", False, None),
        ("drone view of a tall grey building", False, None),
    ],
)
def test_rejection_reasons(generated: str | None, augmented: bool, reason: str | None) -> None:
    assert rejection(generated, "a red building with a pond", augmented, min_words=3, max_words=40) == reason


def test_clean_generation_strips_quotes_and_whitespace() -> None:
    assert clean_generation('  "drone view of\n a roof"  ') == "drone view of a roof"
