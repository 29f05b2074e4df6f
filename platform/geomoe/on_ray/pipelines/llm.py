"""The ``http`` and ``vllm`` engines: generation through ``ray.data.llm`` processors (Ray layer).

``http`` sends OpenAI chat requests to any compatible server (a vLLM server, a ``ray.serve.llm`` app, a hosted
API) with a qps limit and retries; ``vllm`` runs vLLM engine actors on GPUs, with the multimodal stage when
the requests carry images. Both return one text per item, or None where a request failed after its retries
(or the engine answered without text): the caller counts it, nothing is dropped.
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from geomoe.core.config import EngineSpec

Messages = list[dict[str, Any]]


def processor_config(engine: EngineSpec, multimodal: bool) -> Any:
    """The ray.data.llm processor config for ``engine`` (kind ``http`` or ``vllm``)."""
    from ray.data.llm import HttpRequestProcessorConfig, vLLMEngineProcessorConfig

    if engine.kind == "http":
        assert engine.url is not None  # checked by EngineSpec validation
        return HttpRequestProcessorConfig(
            url=engine.url,
            qps=engine.qps,
            max_retries=engine.max_retries,
            base_retry_wait_time_in_s=engine.retry_wait_s,
            batch_size=engine.batch_size,
            concurrency=engine.concurrency,
        )
    if engine.kind == "vllm":
        return vLLMEngineProcessorConfig(
            model_source=engine.model,
            engine_kwargs=engine.engine_kwargs,
            batch_size=engine.batch_size,
            concurrency=engine.concurrency,
            accelerator_type=engine.accelerator_type,
            should_continue_on_error=True,  # a failed row comes back with its error and is counted
            prepare_multimodal_stage={"enabled": multimodal},
        )
    raise ValueError(f"engine kind {engine.kind!r} does not run through ray.data.llm")


class RequestBuilder:
    """preprocess: an item -> the processor's request row (OpenAI ``payload`` for http; ``messages`` and
    ``sampling_params`` for vLLM). A class, not a closure, so Ray ships only the settings it needs."""

    def __init__(self, engine: EngineSpec, to_messages: Callable[[dict[str, Any]], Messages]) -> None:
        self.kind, self.to_messages = engine.kind, to_messages
        self.sampling = {"max_tokens": engine.max_new_tokens, "temperature": engine.temperature, "top_p": engine.top_p}
        self.model = engine.model

    def __call__(self, item: dict[str, Any]) -> dict[str, Any]:
        messages = self.to_messages(item)
        if self.kind == "http":
            return {"row": item["row"], "payload": {"model": self.model, "messages": messages, **self.sampling}}
        return {"row": item["row"], "messages": messages, "sampling_params": self.sampling}


def response_text(row: dict[str, Any]) -> dict[str, Any]:
    """postprocess: the generated text of a processor's output row (None when it has none)."""
    text = row.get("generated_text")
    if text is None:
        try:
            text = row["http_response"]["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            text = None
    return {"row": row["row"], "text": None if text is None else str(text)}


def generate(
    engine: EngineSpec,
    items: list[dict[str, Any]],
    to_messages: Callable[[dict[str, Any]], Messages],
    multimodal: bool = False,
) -> list[str | None]:
    """One text (or None) per item, in order. ``to_messages`` runs in the Ray Data tasks (so an image is read
    there, not shipped from the driver); ``multimodal``: the messages carry images."""
    import ray.data
    from ray.data.llm import build_processor

    processor = build_processor(
        processor_config(engine, multimodal),
        preprocess=RequestBuilder(engine, to_messages),
        postprocess=response_text,
    )
    texts: list[str | None] = [None] * len(items)
    with _tolerate_failed_blocks():  # a Dataset copies the DataContext when it is created: create it inside
        requests = ray.data.from_items(
            [{**item, "row": i} for i, item in enumerate(items)],
            override_num_blocks=max(1, len(items) // engine.batch_size),
        )
        for row in processor(requests).iter_rows():
            if row.get("text") is not None:  # error rows come back without text
                texts[int(row["row"])] = str(row["text"])
    # A run with failed blocks leaves its executor in a reference cycle (through the errors' tracebacks), and its
    # HTTP actors keep their CPUs until that is collected: Ray's GC round comes a minute later, and meanwhile the
    # next stage waits for CPUs (measured in a plain process: one actor per run kept 1 CPU until gc.collect()).
    del requests
    if None in texts:  # only a run with failed requests leaves the cycle
        gc.collect()
    return texts


@contextmanager
def _tolerate_failed_blocks() -> Iterator[None]:
    """The HTTP stage raises once a request has used up its retries. Let that block fail alone: its rows come
    back as None and are counted, instead of one bad request failing the whole dataset."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.max_errored_blocks
    context.max_errored_blocks = -1
    try:
        yield
    finally:
        context.max_errored_blocks = saved
