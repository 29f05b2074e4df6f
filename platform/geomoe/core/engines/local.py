"""``transformers`` engine: local chat generation with a causal LM, and image captioning with a VLM (small GPUs,
CPU tests)."""

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
    """Images (+ a prompt each) -> captions with a local transformers model. Two kinds load from a folder or id:
    a chat VLM (``AutoModelForImageTextToText`` with its ``AutoProcessor``: LLaVA, Qwen2-VL, ...) that follows
    the prompt, and an image-to-text model (VisionEncoderDecoder) that takes none (``takes_prompt`` False)."""

    def __init__(
        self, source: str, max_new_tokens: int = 48, min_new_tokens: int = 1, device: str = "cpu", batch_size: int = 8
    ) -> None:
        from transformers import AutoConfig

        self.takes_prompt = AutoConfig.from_pretrained(source).model_type != "vision-encoder-decoder"
        if self.takes_prompt:
            from transformers import AutoModelForImageTextToText, AutoProcessor

            self.processor = AutoProcessor.from_pretrained(source)
            self.processor.tokenizer.padding_side = "left"  # decoder-only generation pads on the left
            self.tokenizer = self.processor.tokenizer
            self.model = cast(Any, AutoModelForImageTextToText.from_pretrained(source))
        else:
            from transformers import AutoImageProcessor, AutoTokenizer, VisionEncoderDecoderModel

            self.tokenizer = AutoTokenizer.from_pretrained(source)
            self.processor = AutoImageProcessor.from_pretrained(source)
            self.model = cast(Any, VisionEncoderDecoderModel.from_pretrained(source))
        self.model.to(device).eval()
        self.device, self.batch_size = device, batch_size
        self.settings = {"max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens}

    def caption(self, paths: Sequence[str], prompts: Sequence[str] | None = None) -> list[str | None]:
        """Captions of the image files; None for an unreadable image or a failed batch (the caller counts it)."""
        out: list[str | None] = []
        for start in range(0, len(paths), self.batch_size):
            batch = list(paths[start : start + self.batch_size])
            texts = None if prompts is None else list(prompts[start : start + self.batch_size])
            try:
                out += self.describe([_open_rgb(p) for p in batch], texts)
            except Exception as err:  # unreadable image or generation error: counted by the caller
                log.warning("captioning failed for %d images: %s", len(batch), err)
                out += [None] * len(batch)
        return out

    def describe(self, images: Sequence[Any], prompts: Sequence[str] | None = None) -> list[str | None]:
        """Captions of PIL images; ``prompts`` (one per image) are used by chat VLMs and ignored otherwise."""
        import torch

        if not self.takes_prompt:
            pixels = self.processor(images=list(images), return_tensors="pt").pixel_values.to(self.device)
            with torch.no_grad():
                generated = self.model.generate(pixel_values=pixels, **self.settings)
            return [str(t) for t in self.tokenizer.batch_decode(generated, skip_special_tokens=True)]
        if prompts is None or len(prompts) != len(images):
            raise ValueError("a chat VLM needs one prompt per image")
        texts = [
            self.processor.apply_chat_template(
                [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": p}]}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for p in prompts
        ]
        encoded = self.processor(text=texts, images=list(images), return_tensors="pt", padding=True).to(self.device)
        with torch.no_grad():
            generated = self.model.generate(**encoded, pad_token_id=self.tokenizer.pad_token_id, **self.settings)
        new_tokens = generated[:, encoded["input_ids"].shape[1] :]
        return [str(t) for t in self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)]


def _open_rgb(path: str) -> Any:
    from geomoe.core.data.images import open_image

    return open_image(path).convert("RGB")
