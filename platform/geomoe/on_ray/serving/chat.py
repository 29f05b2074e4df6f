"""An OpenAI-compatible ``/v1/chat/completions`` endpoint on Ray Serve, backed by the transformers engine.

For CPU machines and tests: the ``http`` engine (ray.data.llm's HttpRequestProcessorConfig) talks to this the
way it talks to a vLLM server or a ``ray.serve.llm`` app. Greedy unless the request sets a temperature. A VLM
folder serves image turns: one ``image_url`` part (a base64 data: URL; nothing is fetched) plus text parts.
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
        from transformers import AutoConfig

        from geomoe.core.engines.local import TransformersCaptioner, TransformersEngine
        from geomoe.on_ray.ray_env import worker_device

        self.model_id, self.max_new_tokens = model, max_new_tokens
        config = AutoConfig.from_pretrained(model)
        self.vision = hasattr(config, "vision_config") or config.model_type == "vision-encoder-decoder"
        if self.vision:
            self.captioner = TransformersCaptioner(model, max_new_tokens, device=worker_device())
        else:
            self.engine = TransformersEngine(model, max_new_tokens=max_new_tokens, device=worker_device())

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
        if self.vision:
            try:
                image, prompt = image_turn(messages)
            except ValueError as err:
                return JSONResponse({"error": {"message": str(err)}}, status_code=400)
            text = self._describe(image, prompt)
        else:
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

    def _describe(self, image: Any, prompt: str) -> str | None:
        try:
            return self.captioner.describe([image], [prompt])[0]
        except Exception:  # reported to the client as a 500, like a failed text generation
            return None


def image_turn(messages: list[Any]) -> tuple[Any, str]:
    """(PIL image, prompt) of the last user turn: exactly one data: URL image part and its text parts."""
    import base64
    import binascii
    import io

    from PIL import Image, UnidentifiedImageError

    user = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
    content = user[-1].get("content") if user else None
    if not isinstance(content, list):
        raise ValueError("a VLM request needs a user turn whose content is a list of image_url and text parts")
    urls = [c.get("image_url", {}).get("url", "") for c in content if c.get("type") == "image_url"]
    if len(urls) != 1 or not urls[0].startswith("data:") or ";base64," not in urls[0]:
        raise ValueError("a VLM request needs exactly one image_url part holding a base64 data: URL")
    try:
        raw = base64.b64decode(urls[0].split(";base64,", 1)[1], validate=True)
        with Image.open(io.BytesIO(raw)) as decoded:
            image = decoded.convert("RGB")
    except (binascii.Error, UnidentifiedImageError, OSError) as err:
        raise ValueError(f"the image_url data is not a readable image: {err}") from err
    prompt = " ".join(str(c.get("text", "")) for c in content if c.get("type") == "text").strip()
    return image, prompt


def chat_app(model: str, max_new_tokens: int = 64) -> Any:
    return ChatCompletions.bind(model, max_new_tokens)  # type: ignore[attr-defined]
