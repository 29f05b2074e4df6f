"""An OpenAI-compatible ``/v1/chat/completions`` endpoint on Ray Serve, backed by the transformers engine.

For CPU machines and tests: the ``http`` engine (ray.data.llm's HttpRequestProcessorConfig) talks to this the
way it talks to a vLLM server or a ``ray.serve.llm`` app. Greedy unless the request sets a temperature.
Usage: ``serve.run(chat_app("/models/tiny-llama"), route_prefix="/v1/chat/completions")``.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class ChatCompletions:
    def __init__(self, model: str, max_new_tokens: int = 64) -> None:
        from geomoe.engines.local import TransformersEngine

        self.model_id, self.max_new_tokens = model, max_new_tokens
        self.engine = TransformersEngine(model, max_new_tokens=max_new_tokens)

    async def __call__(self, request: Any) -> Any:
        from starlette.responses import JSONResponse

        body = await request.json()
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            return JSONResponse({"error": {"message": "messages must be a non-empty list"}}, status_code=400)
        sampling = {
            "max_new_tokens": int(body.get("max_tokens", self.max_new_tokens)),
            "temperature": float(body.get("temperature", 0.0)),
            "top_p": float(body.get("top_p", 1.0)),
        }
        text = self.engine.generate([messages], **sampling)[0]
        if text is None:
            return JSONResponse({"error": {"message": "generation failed"}}, status_code=500)
        return JSONResponse(
            {
                "id": f"chatcmpl-{uuid.uuid4().hex[:12]}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", self.model_id),
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            }
        )


def chat_app(model: str, max_new_tokens: int = 64) -> Any:
    return ChatCompletions.bind(model, max_new_tokens)  # type: ignore[attr-defined]
