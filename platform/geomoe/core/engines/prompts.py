"""Refinement prompts as versioned data, and the checks a generated caption must pass before it replaces one.

A generated text is rejected (and the original caption kept, the row counted by reason) when it is empty, too
short or too long, looks like chat boilerplate ("Sure, here is ..."), or, for an augmented satellite sample
(a flipped or rotated tile), brings in a directional phrase the original did not have.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from geomoe.core import storage
from geomoe.core.data.transforms import has_directional
from geomoe.core.errors import SpecError
from geomoe.core.storage import file_sha256

PROMPT_DIR = Path(__file__).resolve().parents[1] / "data" / "prompts"
BUILTIN = "builtin:"  # ``builtin:refine_v1`` names a prompt file shipped in PROMPT_DIR
DEFAULT_REFINE_PROMPTS = "builtin:refine_v2"
DEFAULT_CAPTION_PROMPT = "builtin:caption_v2"
BUILTIN_PROMPTS = PROMPT_DIR / "refine_v2.yaml"
BUILTIN_CAPTION_PROMPT = PROMPT_DIR / "caption_v2.yaml"
BOILERPLATE = re.compile(
    r"^\s*(sure|certainly|of course|here is|here's|as an ai|i cannot|i can't|rewritten description)\b"
    r"|<\|?im_|\[/?inst\]",
    re.IGNORECASE,
)


def prompt_path(name: str | Path | None, default: str) -> Path:
    """A prompt file: ``builtin:<name>`` (or None for ``default``) from PROMPT_DIR, else the path given."""
    name = str(name or default)
    if name.startswith(BUILTIN):
        builtin = PROMPT_DIR / f"{name[len(BUILTIN) :]}.yaml"
        if not builtin.is_file():
            known = ", ".join(sorted(BUILTIN + p.stem for p in PROMPT_DIR.glob("*.yaml")))
            raise SpecError(name, "", f"no such built-in prompt (known: {known})")
        return builtin
    return Path(name)


@dataclass(frozen=True)
class RefinePrompts:
    system: str
    platforms: dict[str, str]
    sha256: str

    def messages(self, caption: str, platform: str, augmented: bool = False) -> list[dict[str, Any]]:
        """The chat request; an augmented copy uses the ``<platform>_augmented`` template when there is one."""
        key = f"{platform}_augmented" if augmented and f"{platform}_augmented" in self.platforms else platform
        template = self.platforms.get(key)
        if template is None:
            raise ValueError(f"refinement prompts have no template for platform {platform!r}")
        return [
            {"role": "system", "content": self.system},
            {"role": "user", "content": template.format(caption=caption)},
        ]


def load_prompts(path: str | Path | None = None) -> RefinePrompts:
    """Prompts from ``path`` (default: built-in refine_v2); a bad file is a SpecError naming file and field."""
    path = prompt_path(path, DEFAULT_REFINE_PROMPTS)
    if not path.is_file():
        raise SpecError(str(path), "", "prompt file not found")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not isinstance(raw.get("system"), str):
        raise SpecError(str(path), "system", "a prompt file needs a 'system' text")
    platforms = raw.get("platforms")
    if not isinstance(platforms, dict) or not platforms:
        raise SpecError(str(path), "platforms", "a mapping platform -> user prompt template is required")
    for name, template in platforms.items():
        if not isinstance(template, str) or "{caption}" not in template:
            raise SpecError(str(path), f"platforms.{name}", "a template must be text containing {caption}")
    return RefinePrompts(raw["system"], {str(k): v for k, v in platforms.items()}, file_sha256(path))


@dataclass(frozen=True)
class CaptionPrompt:
    template: str
    sha256: str
    name: str

    @property
    def platform_aware(self) -> bool:
        """The prompt tells the VLM each image's platform label (information a Track 4 gallery lacks)."""
        return "{platform}" in self.template

    def check_labels_allowed(self, opted_in: bool, field: str) -> None:
        if self.platform_aware and not opted_in:
            raise SpecError(
                self.name,
                field,
                "this caption prompt gives the VLM each image's platform label, which a real gallery (Track 4) does "
                "not have; set platform_labels: true to opt in, or use the platform-agnostic builtin:caption_v2",
            )

    def text(self, platform: str) -> str:
        return self.template.format(platform=platform)

    def messages(self, image_url: str, platform: str) -> list[dict[str, Any]]:
        """One OpenAI-style user turn with the image (a data: URL) and the prompt: what vLLM's multimodal stage
        and any OpenAI-compatible server accept."""
        content = [
            {"type": "image_url", "image_url": {"url": image_url}},
            {"type": "text", "text": self.text(platform)},
        ]
        return [{"role": "user", "content": content}]


def load_caption_prompt(path: str | Path | None = None) -> CaptionPrompt:
    """The captioning prompt from ``path`` (default: built-in caption_v2, which names no platform)."""
    name = str(path or DEFAULT_CAPTION_PROMPT)
    path = prompt_path(path, DEFAULT_CAPTION_PROMPT)
    if not path.is_file():
        raise SpecError(str(path), "", "prompt file not found")
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    if not isinstance(raw, dict) or not isinstance(raw.get("prompt"), str) or not raw["prompt"].strip():
        raise SpecError(str(path), "prompt", "a caption prompt file needs a non-empty 'prompt' text")
    try:
        raw["prompt"].format(platform="satellite")
    except (KeyError, IndexError, ValueError) as err:
        raise SpecError(str(path), "prompt", f"only {{platform}} may be substituted: {err}") from err
    return CaptionPrompt(raw["prompt"], file_sha256(path), name)


def image_data_url(path: str | Path) -> str:
    """The image file as a base64 data: URL (images travel in the request; servers never fetch files)."""
    import base64
    import mimetypes

    mime = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(storage.read_bytes(path)).decode()}"


def clean_generation(text: str) -> str:
    """Strip whitespace and one pair of surrounding quotes; collapse internal whitespace."""
    text = " ".join(text.split())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return text


def caption_verdict(raw: str | None, max_words: int) -> tuple[str | None, str | None]:
    """(cleaned caption, None) when a generated gallery caption may be used, else (None, why): the rule the
    caption stage and the serving Captioner share. ``raw`` None: the engine failed."""
    text = None if raw is None else clean_generation(raw)
    reason = rejection(text, "", False, 1, max_words)
    return (text, None) if reason is None else (None, reason)


def rejection(generated: str | None, original: str, augmented: bool, min_words: int, max_words: int) -> str | None:
    """Why ``generated`` may not replace ``original`` (a short reason), or None when it may."""
    if generated is None:
        return "engine failed"
    words = len(generated.split())
    if words == 0:
        return "empty"
    if words < min_words:
        return "too short"
    if words > max_words:
        return "too long"
    if BOILERPLATE.search(generated):
        return "chat boilerplate"
    if augmented and has_directional(generated) and not has_directional(original):
        return "new directional phrase on an augmented satellite sample"
    return None
