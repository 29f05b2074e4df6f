"""Refinement prompts and the checks a generated caption must pass before it may replace the original."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomoe.core.engines.prompts import (
    BUILTIN_PROMPTS,
    clean_generation,
    image_data_url,
    load_caption_prompt,
    load_prompts,
    rejection,
)
from geomoe.core.errors import SpecError


def test_builtin_prompts_cover_every_platform_and_are_hashed() -> None:
    prompts = load_prompts()
    assert set(prompts.platforms) >= {"satellite", "drone", "ground"} and len(prompts.sha256) == 64
    messages = prompts.messages("a red roof", "drone")
    assert [m["role"] for m in messages] == ["system", "user"] and "a red roof" in messages[1]["content"]
    with pytest.raises(ValueError, match="no template for platform 'boat'"):
        prompts.messages("x", "boat")
    assert load_prompts(BUILTIN_PROMPTS).sha256 == prompts.sha256


def test_refine_v2_keeps_satellite_layout_and_bans_directions_only_on_augmented_copies() -> None:
    """PE-MoE sec. 3.1: satellite captions emphasise spatial relations; only rotated or flipped copies must be
    free of directions. v1 (every satellite caption direction-free) stays selectable."""
    v2 = load_prompts()
    original = v2.messages("a red roof", "satellite")[1]["content"]
    augmented = v2.messages("a red roof", "satellite", augmented=True)[1]["content"]
    assert "relative to it" in original and "Do not mention" not in original
    assert "Do not mention" in augmented and "north" in augmented
    assert v2.messages("x", "drone", augmented=True) == v2.messages("x", "drone")  # no drone_augmented template
    v1 = load_prompts("builtin:refine_v1")
    assert "Do not mention" in v1.messages("a red roof", "satellite")[1]["content"] and v1.sha256 != v2.sha256
    with pytest.raises(SpecError, match="no such built-in prompt"):
        load_prompts("builtin:refine_v9")


def test_caption_prompt_names_no_platform_unless_the_job_opts_in() -> None:
    """CGRS: a Track 4 gallery has no platform labels; the platform-aware v1 prompt needs an explicit opt-in."""
    v2 = load_caption_prompt()
    assert not v2.platform_aware and v2.name == "builtin:caption_v2"
    assert v2.text("satellite") == v2.text("ground")  # the label never reaches the VLM
    v2.check_labels_allowed(False, "caption.prompts")
    v1 = load_caption_prompt("builtin:caption_v1")
    assert v1.platform_aware and "satellite" in v1.text("satellite")
    with pytest.raises(SpecError, match="platform_labels: true"):
        v1.check_labels_allowed(False, "caption.prompts")
    v1.check_labels_allowed(True, "caption.prompts")


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


class FixedEngine:
    """A test double for an engine: returns the given outputs in order (None = a failed call)."""

    def __init__(self, outputs: list[str | None]) -> None:
        self.outputs = outputs
        self.requests: list = []

    def generate(self, requests: list) -> list[str | None]:
        assert len(requests) == len(self.outputs)
        self.requests = requests
        return self.outputs


def test_refine_batch_replaces_only_valid_outputs_and_counts_the_rest() -> None:
    import pyarrow as pa

    from geomoe.core.config import RefineSpec
    from geomoe.on_ray.pipelines.refine import Normalisation, RefineBatch, RefineMessages

    batch = RefineBatch.__new__(RefineBatch)  # everything but the model load
    batch.to_messages = RefineMessages(load_prompts())
    batch.refine = RefineSpec(engine={"model": "unused"}, output_dir="unused", min_words=2, max_words=10)
    batch.norm = Normalisation(caption_words=30, statement_words=12)
    batch.engine = FixedEngine([None, "Sure, here it is", "Drone view of a red building.", "a roof to the north"])
    rows = pa.table(
        {
            "caption": ["c0", "c1", "c2", "a red roof"],
            "caption_raw": ["C0!", "C1.", "C2, whole", "A red roof."],
            "statements": [["c0"], ["c1"], ["c2"], ["a red roof"]],
            "platform": ["drone", "drone", "drone", "satellite"],
            "augment": ["", "", "", "rot90"],
        }
    )
    out = batch(rows).to_pylist()
    assert [r["refine_status"] for r in out] == [
        "engine failed",
        "chat boilerplate",
        "refined",
        "new directional phrase on an augmented satellite sample",
    ]
    assert [r["caption"] for r in out] == ["c0", "c1", "drone view of a red building", "a red roof"]
    assert [r["original_caption"] for r in out] == ["c0", "c1", "c2", "a red roof"]
    assert out[2]["statements"] == ["drone view of a red building"] and out[0]["statements"] == ["c0"]
    # the LLM is asked about the raw caption (cased, punctuated, uncut), not the normalised one
    asked = [messages[-1]["content"] for messages in batch.engine.requests]
    assert "C2, whole" in asked[2] and "A red roof." in asked[3]


def test_caption_prompt_is_versioned_data_and_carries_the_image() -> None:
    prompt = load_caption_prompt("builtin:caption_v1")
    assert len(prompt.sha256) == 64 and "drone image" in prompt.text("drone")
    (turn,) = prompt.messages("data:image/png;base64,AAAA", "satellite")
    image, text = turn["content"]
    assert image == {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}
    assert text["type"] == "text" and "satellite image" in text["text"]


def test_bad_caption_prompt_files_name_the_field(tmp_path: Path) -> None:
    bad = tmp_path / "c.yaml"
    bad.write_text("prompt: 'describe the {colour}'\n")
    with pytest.raises(SpecError, match=r"c\.yaml: prompt: only \{platform\} may be substituted"):
        load_caption_prompt(bad)
    bad.write_text("version: 1\n")
    with pytest.raises(SpecError, match=r"c\.yaml: prompt: a caption prompt file needs a non-empty 'prompt'"):
        load_caption_prompt(bad)


def test_images_travel_as_data_urls_and_the_chat_server_decodes_them(tmp_path: Path) -> None:
    from PIL import Image

    from geomoe.on_ray.serving.chat import image_turn

    Image.new("RGB", (5, 3), (200, 10, 10)).save(tmp_path / "a.png")
    url = image_data_url(tmp_path / "a.png")
    assert url.startswith("data:image/png;base64,")
    image, prompt = image_turn(load_caption_prompt("builtin:caption_v1").messages(url, "ground"))
    assert image.size == (5, 3) and image.getpixel((0, 0)) == (200, 10, 10) and "ground image" in prompt
    with pytest.raises(ValueError, match="exactly one image_url part holding a base64 data: URL"):
        image_turn([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "http://x/a.png"}}]}])
    with pytest.raises(ValueError, match="not a readable image"):
        image_turn([{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "data:a;base64,AAAA"}}]}])
    with pytest.raises(ValueError, match="content is a list"):
        image_turn([{"role": "user", "content": "just text"}])


def test_processor_requests_and_responses_for_both_served_engines() -> None:
    """The rows handed to ray.data.llm: an OpenAI payload for http, messages + sampling_params for vLLM; and the
    text read back from either answer (None when there is none, so the row is counted as failed)."""
    from geomoe.core.config import EngineSpec
    from geomoe.on_ray.pipelines.llm import RequestBuilder, response_text

    to_messages = lambda item: [{"role": "user", "content": item["text"]}]  # noqa: E731
    http = RequestBuilder(EngineSpec(kind="http", model="m", url="http://h", max_new_tokens=9), to_messages)
    row = http({"row": 3, "text": "hi"})
    assert row == {
        "row": 3,
        "payload": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 9,
                    "temperature": 0.0, "top_p": 1.0},
    }  # fmt: skip
    vllm = RequestBuilder(EngineSpec(kind="vllm", model="/m", max_new_tokens=9), to_messages)({"row": 1, "text": "x"})
    assert vllm["messages"] == [{"role": "user", "content": "x"}] and vllm["sampling_params"]["max_tokens"] == 9
    answer = {"choices": [{"message": {"role": "assistant", "content": "a red roof"}}]}
    assert response_text({"row": 0, "http_response": answer}) == {"row": 0, "text": "a red roof"}
    assert response_text({"row": 0, "generated_text": "grey"}) == {"row": 0, "text": "grey"}
    assert response_text({"row": 5, "http_response": {"error": "boom"}}) == {"row": 5, "text": None}


def test_refined_captions_track4_and_served_queries_are_normalised_like_prepared_text(tmp_path: Path) -> None:
    """Every text the model sees goes through the same X-VLM pre_caption as the GeoText reader's prepared text."""
    import pyarrow as pa

    from geomoe.core.config import RefineSpec
    from geomoe.core.data.transforms import prepare_caption
    from geomoe.on_ray.pipelines.refine import Normalisation, apply_refinement

    raw = "The Tall, RED-brick building / with 3 floors!  Next to a car-park."
    expected = prepare_caption(raw, max_words=30, statement_words=12)  # what prepare writes for this string
    refine = RefineSpec(engine={"model": "unused"}, output_dir="unused")
    rows = pa.table({"caption": ["c"], "statements": [["c"]], "platform": ["drone"], "augment": [""]})
    refined = apply_refinement(rows, [raw], refine, Normalisation(30, 12)).to_pylist()[0]
    assert refined["caption"] == expected.caption == "the tall red brick building with 3 floors next to a car park"
    # sentence-level splitting holds for refined captions too (the paper's alignment: refinement and splitting)
    assert (
        refined["statements"]
        == expected.statements
        == ["the tall red brick building with 3 floors", "next to a car park"]
    )
