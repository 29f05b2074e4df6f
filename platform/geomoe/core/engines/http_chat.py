"""One OpenAI-compatible chat completion over HTTP, retried with backoff (core: urllib, no Ray). The Serve
captioner uses it for a VLM served elsewhere (a ``ray.serve.llm`` app, vLLM's server)."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from geomoe.core.config import EngineSpec


def chat_completion(engine: EngineSpec, messages: list[dict[str, Any]]) -> str | None:
    """The first choice's text, or None when every attempt failed (the caller counts it as no caption)."""
    assert engine.url is not None  # EngineSpec: the http engine needs url
    body = {
        "model": engine.model,
        "messages": messages,
        "max_tokens": engine.max_new_tokens,
        "temperature": engine.temperature,
    }
    request = urllib.request.Request(
        engine.url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    for attempt in range(engine.max_retries + 1):
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                return str(json.loads(response.read())["choices"][0]["message"]["content"])
        except (OSError, ValueError, KeyError, IndexError):
            time.sleep(engine.retry_wait_s * 2**attempt)
    return None
