"""``transformers`` engine: local chat generation with a causal LM (small GPUs, CPU tests)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any, cast

log = logging.getLogger(__name__)


class TransformersEngine:
    """Chat requests -> generated texts with ``AutoModelForCausalLM``; a failed batch gives None per request."""

    def __init__(
        self,
        source: str,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int = 0,
        device: str = "cpu",
        batch_size: int = 8,
    ) -> None:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.tokenizer.padding_side = "left"
        self.model = cast(Any, AutoModelForCausalLM.from_pretrained(source))
        self.model.to(device).eval()
        self.device, self.batch_size, self.seed = device, batch_size, seed
        self.sampling = self._sampling(max_new_tokens, temperature, top_p)

    @staticmethod
    def _sampling(max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        sampling: dict[str, Any] = {"max_new_tokens": max_new_tokens, "do_sample": temperature > 0}
        return sampling | ({"temperature": temperature, "top_p": top_p} if temperature > 0 else {})

    def generate(self, requests: Sequence[list[dict[str, Any]]], **sampling: Any) -> list[str | None]:
        """Texts for chat ``requests``; ``sampling`` (max_new_tokens, temperature, top_p) overrides the defaults."""
        settings = (
            self.sampling
            if not sampling
            else self._sampling(
                int(sampling.get("max_new_tokens", self.sampling["max_new_tokens"])),
                float(sampling.get("temperature", 0.0)),
                float(sampling.get("top_p", 1.0)),
            )
        )
        out: list[str | None] = []
        for start in range(0, len(requests), self.batch_size):
            batch = list(requests[start : start + self.batch_size])
            try:
                out += self._generate(batch, settings)
            except Exception as err:  # one bad batch must not lose the others; the caller counts the Nones
                log.warning("generation failed for %d requests: %s", len(batch), err)
                out += [None] * len(batch)
        return out

    def _generate(self, batch: list[list[dict[str, Any]]], settings: dict[str, Any]) -> list[str | None]:
        torch = self.torch
        prompts = [self.tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in batch]
        encoded = self.tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        torch.manual_seed(self.seed)
        with torch.no_grad():
            generated = self.model.generate(**encoded, pad_token_id=self.tokenizer.pad_token_id, **settings)
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        return [str(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


class TransformersCaptioner:
    """Image paths -> captions with a transformers image-to-text model (``AutoModelForVision2Seq`` class, e.g.
    VisionEncoderDecoder). Chat VLMs that take a prompt are served through the ``http`` or ``vllm`` engines."""

    def __init__(
        self, source: str, max_new_tokens: int = 48, min_new_tokens: int = 1, device: str = "cpu", batch_size: int = 8
    ) -> None:
        from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

        self.tokenizer = AutoTokenizer.from_pretrained(source)
        self.processor = AutoImageProcessor.from_pretrained(source)
        self.model = cast(Any, VisionEncoderDecoderModel.from_pretrained(source))
        self.model.to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.settings = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}

    def caption(self, paths: Sequence[str]) -> list[str | None]:
        out: list[str | None] = []
        for start in range(0, len(paths), self.batch_size):
            batch = list(paths[start : start + self.batch_size])
            try:
                out += self._caption(batch)
            except Exception as err:  # unreadable image or generation error: counted by the caller
                log.warning("captioning failed for %d images: %s", len(batch), err)
                out += [None] * len(batch)
        return out

    def _caption(self, paths: list[str]) -> list[str | None]:
        import torch
        from PIL import Image

        images = []
        for path in paths:
            with Image.open(path) as image:
                images.append(image.convert("RGB"))
        pixels = self.processor(images=images, return_tensors="pt").pixel_values.to(self.device)
        with torch.no_grad():
            generated = self.model.generate(pixel_values=pixels, **self.settings)
        return [str(t) for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
