"""The VLM captioner on Ray Serve: captions of gallery images a caption store lacks, for a re-ranker (local
transformers, or an OpenAI-compatible URL such as a ``ray.serve.llm`` app), by the caption stage's prompt,
cleaning and rejection rules."""

from __future__ import annotations

import asyncio
from typing import Any

from geomoe.core.config import ServeCaptionerSpec
from ray import serve


@serve.deployment(ray_actor_options={"num_cpus": 0.5})
class Captioner:
    """Captions of gallery images for the re-ranker: the caption stage's prompt, cleaning and rejection rules."""

    def __init__(self, spec: dict[str, Any]) -> None:
        from geomoe.core.engines.prompts import load_caption_prompt

        self.spec = ServeCaptionerSpec.model_validate(spec)
        self.prompt = load_caption_prompt(self.spec.prompts)
        self.prompt.check_labels_allowed(self.spec.platform_labels, "captioner.prompts")
        engine = self.spec.engine
        if engine.kind == "transformers":
            from geomoe.core.engines.local import TransformersCaptioner
            from geomoe.on_ray.ray_env import worker_device

            self.local = TransformersCaptioner(engine.model, engine.max_new_tokens, device=worker_device())

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
    async def caption(self, items: list[tuple[str, str]]) -> list[str | None]:
        """(image path, platform) -> caption, or None when the VLM failed or wrote an unusable caption."""
        from geomoe.core.engines.prompts import caption_verdict

        if self.spec.engine.kind == "transformers":
            texts = self.local.caption([p for p, _ in items], [self.prompt.text(f) for _, f in items])
        else:
            texts = list(await asyncio.gather(*(asyncio.to_thread(self._over_http, p, f) for p, f in items)))
        return [caption_verdict(t, self.spec.max_words)[0] for t in texts]

    def _over_http(self, path: str, platform: str) -> str | None:
        """One OpenAI chat request with the image as a data: URL; retried with backoff, None when it never works."""
        from geomoe.core.engines.http_chat import chat_completion
        from geomoe.core.engines.prompts import image_data_url

        return chat_completion(self.spec.engine, self.prompt.messages(image_data_url(path), platform))
