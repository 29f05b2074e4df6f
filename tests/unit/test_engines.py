"""Refinement prompts and the checks a generated caption must pass before it may replace the original."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomoe.engines.prompts import (
    BUILTIN_PROMPTS,
    clean_generation,
    image_data_url,
    load_caption_prompt,
    load_prompts,
    rejection,
)
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


class FixedEngine:
    """A test double for an engine: returns the given outputs in order (None = a failed call)."""

    def __init__(self, outputs: list[str | None]) -> None:
        self.outputs = outputs

    def generate(self, requests: list) -> list[str | None]:
        assert len(requests) == len(self.outputs)
        return self.outputs


def test_refine_batch_replaces_only_valid_outputs_and_counts_the_rest() -> None:
    import pyarrow as pa

    from geomoe.config import RefineSpec
    from geomoe.pipelines.refine import RefineBatch, RefineMessages

    batch = RefineBatch.__new__(RefineBatch)  # everything but the model load
    batch.to_messages = RefineMessages(load_prompts())
    batch.refine = RefineSpec(engine={"model": "unused"}, output_dir="unused", min_words=2, max_words=10)
    batch.engine = FixedEngine([None, "Sure, here it is", "drone view of a red building", "a roof to the north"])
    rows = pa.table(
        {
            "caption": ["c0", "c1", "c2", "a red roof"],
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


def test_caption_prompt_is_versioned_data_and_carries_the_image() -> None:
    prompt = load_caption_prompt()
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

    from geomoe.serving.chat import image_turn

    Image.new("RGB", (5, 3), (200, 10, 10)).save(tmp_path / "a.png")
    url = image_data_url(tmp_path / "a.png")
    assert url.startswith("data:image/png;base64,")
    image, prompt = image_turn(load_caption_prompt().messages(url, "ground"))
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
    from geomoe.config import EngineSpec
    from geomoe.pipelines.llm import RequestBuilder, response_text

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
