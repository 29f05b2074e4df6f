"""Gallery captioning on Ray Data with tiny random captioners built here: every image is captioned or counted by
reason, and the store is what re-ranking reads. A chat VLM gives the same captions locally (transformers engine)
and through an OpenAI-compatible server (http engine); the vLLM engine's processor is assembled as on a GPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from geomoe.core.config import JobSpec, parse_spec
from geomoe.core.data.caption_store import read_caption_store
from geomoe.core.engines.prompts import load_caption_prompt
from geomoe.core.models.tiny import build_tiny_captioner, build_tiny_vlm
from geomoe.on_ray.pipelines.caption import caption_gallery, gallery_images
from geomoe.on_ray.pipelines.prepare import prepare
from ports import start_serve

CORPUS = ["a red roof building", "drone view of a grey building near a pond"]


def caption_job(root: Path, out: Path, engine: dict, store: str = "captions.parquet", max_words: int = 60) -> JobSpec:
    raw = {
        "name": "caption_t",
        "stages": ["prepare", "caption"],
        "data": {"format": "geotext", "root": str(root / "geotext")},
        "preprocess": {"output_dir": str(out / "prepared")},
        "caption": {"engine": engine, "output": str(out / store), "max_words": max_words},
        "resources": {"data_concurrency": 1},
    }
    return parse_spec(JobSpec, raw, "test")


def captioned(spec: JobSpec, manifest: dict) -> dict:
    """The caption stage's work (as jobs.run_caption calls it) for a caption job."""
    assert spec.caption is not None
    return caption_gallery(spec.caption, manifest, spec.name)


def test_gallery_captioning_writes_a_store_and_counts_failures(tiny_synth: tuple[Path, dict], tmp_path: Path) -> None:
    root, counts = tiny_synth
    model = build_tiny_captioner(tmp_path / "i2t", CORPUS, 32)
    engine = {"kind": "transformers", "model": str(model), "max_new_tokens": 8, "batch_size": 4}
    spec = caption_job(root, tmp_path, engine, max_words=3)
    manifest = prepare(spec)
    report = captioned(spec, manifest)
    images = gallery_images(manifest, "test")
    assert report["images"] == len(images) == sum(counts["geotext"]["test"]["images"].values())
    assert report["captioned"] + sum(report["failed_by_reason"].values()) == report["images"]
    assert set(report["failed_by_reason"]) <= {"empty", "too long", "chat boilerplate", "engine failed"}
    assert report["prompt_sha256"] == ""  # an image-to-text model is given no prompt
    store = read_caption_store(tmp_path / "captions.parquet") if report["captioned"] else {}
    assert len(store) == report["captioned"]
    assert captioned(spec, manifest) == report  # the same inputs: the store is reused, not redone
    longer = caption_job(root, tmp_path, engine, max_words=30)
    long_report = captioned(longer, manifest)
    assert long_report["inputs_key"] != report["inputs_key"]  # changed settings: redone
    # the same greedy captions under both limits: at most 3 words kept at 3, the others counted too long
    words = {image: len(texts[0].split()) for image, texts in read_caption_store(tmp_path / "captions.parquet").items()}
    assert long_report["captioned"] > 0 and set(store) == {image for image, n in words.items() if n <= 3}
    assert report["failed_by_reason"].get("too long", 0) == sum(n > 3 for n in words.values())


def test_a_caption_stage_killed_midway_resumes_without_captioning_again(
    tiny_synth: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The driver dies after the first part of captions is saved; the rerun asks the captioner only for the rest
    and writes exactly the store an undisturbed run writes (greedy decoding)."""
    from geomoe.on_ray.pipelines import caption

    root, _ = tiny_synth
    model = build_tiny_captioner(tmp_path / "i2t", CORPUS, 32)
    engine = {"kind": "transformers", "model": str(model), "max_new_tokens": 8, "batch_size": 2}
    undisturbed = caption_job(root, tmp_path, engine, "whole.parquet")
    manifest = prepare(undisturbed)
    whole = captioned(undisturbed, manifest)
    monkeypatch.setattr(caption, "FLUSH_ROWS", 2)
    flush = caption._flush

    def die_after_the_first_part(parts: str, produced: dict) -> None:
        flush(parts, produced)
        raise RuntimeError("the driver was killed")

    killed = caption_job(root, tmp_path, engine, "resumed.parquet")
    with monkeypatch.context() as patched:
        patched.setattr(caption, "_flush", die_after_the_first_part)
        with pytest.raises(RuntimeError, match="killed"):
            captioned(killed, manifest)
    assert not (tmp_path / "resumed.parquet").exists()  # nothing that looks finished
    asked: list[int] = []
    real = caption._captions
    monkeypatch.setattr(
        caption, "_captions", lambda c, p, images, parts: asked.append(len(images)) or real(c, p, images, parts)
    )
    report = captioned(killed, manifest)
    assert report["resumed"] == 2 and asked == [whole["images"] - 2]  # only the rest was captioned
    assert read_caption_store(tmp_path / "resumed.parquet") == read_caption_store(tmp_path / "whole.parquet")
    assert {k: v for k, v in report.items() if k not in ("seconds", "resumed", "store")} == {
        k: v for k, v in whole.items() if k not in ("seconds", "resumed", "store")
    }
    assert not (tmp_path / "resumed.parquet.parts").exists()  # cleaned up once the store is written


def test_chat_vlm_captions_alike_locally_and_over_http_and_counts_a_dead_server(
    tiny_synth: tuple[Path, dict], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Greedy decoding, one image per call on both paths: the served VLM must write exactly the local captions
    (the image survives the data: URL round trip; the served model is asked in chunks of 5, each saved for a
    resume). A port where nothing listens: every image is counted."""
    from geomoe.on_ray.pipelines import caption
    from geomoe.on_ray.serving.chat import chat_app
    from ray import serve

    monkeypatch.setattr(caption, "HTTP_CHUNK", 5)

    root, _ = tiny_synth
    vlm = build_tiny_vlm(tmp_path / "vlm", CORPUS)
    local = caption_job(root, tmp_path, {"model": str(vlm), "max_new_tokens": 8, "batch_size": 1}, "local.parquet")
    manifest = prepare(local)
    local_report = captioned(local, manifest)
    assert local_report["prompt_sha256"] == load_caption_prompt().sha256 and local_report["captioned"] > 0
    http = {"kind": "http", "model": "tiny-vlm", "max_new_tokens": 8, "batch_size": 2, "max_retries": 1}
    try:
        url = f"{start_serve()}/v1/chat/completions"
        serve.run(chat_app(str(vlm), max_new_tokens=8), name="vlm", route_prefix="/v1/chat/completions", blocking=False)
        served = caption_job(root, tmp_path, {**http, "url": url}, "served.parquet")
        served_report = captioned(served, manifest)
    finally:
        serve.shutdown()
    assert served_report["captioned"] == local_report["captioned"]
    assert read_caption_store(tmp_path / "served.parquet") == read_caption_store(tmp_path / "local.parquet")
    dead = {**http, "url": "http://127.0.0.1:9/v1/chat/completions", "retry_wait_s": 0.01}
    failed = captioned(caption_job(root, tmp_path, dead, "dead.parquet"), manifest)
    assert failed["captioned"] == 0 and failed["failed_by_reason"] == {"engine failed": failed["images"]}


def test_vllm_engine_assembles_the_multimodal_processor() -> None:
    """vLLM needs a GPU and is not installed here; what can be checked is the processor ray.data.llm builds from
    our engine spec: multimodal preparation, chat template, tokenizer, the vLLM engine stage, detokenizer."""
    from ray.data.llm import build_processor

    from geomoe.core.config import EngineSpec
    from geomoe.on_ray.pipelines.llm import RequestBuilder, processor_config, response_text

    engine = EngineSpec(kind="vllm", model="Qwen/Qwen2.5-VL-7B-Instruct", engine_kwargs={"max_model_len": 4096})
    config = processor_config(engine, multimodal=True)
    assert config.should_continue_on_error and config.engine_kwargs["max_model_len"] == 4096
    processor = build_processor(config, preprocess=RequestBuilder(engine, lambda item: []), postprocess=response_text)
    stages = [type(stage).__name__ for stage in processor.stages.values()]
    assert stages == [
        "PrepareMultimodalStage",
        "ChatTemplateStage",
        "TokenizeStage",
        "vLLMEngineStage",
        "DetokenizeStage",
    ]
    text_only = build_processor(processor_config(engine, multimodal=False))
    assert "PrepareMultimodalStage" not in [type(stage).__name__ for stage in text_only.stages.values()]
