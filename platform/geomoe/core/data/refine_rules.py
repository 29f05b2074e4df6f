"""Rules refinement: PE-MoE's textual domain alignment without an LLM (core, no Ray).

A training caption is rewritten for its image's platform: generic openings ("The image shows") are removed,
the leading sentence(s) are kept, and the first is framed with a phrase naming the platform ("drone view of"):
short platform-specific texts like the test queries, which is what PE-MoE's LLM refinement produces.
The rules are data (``rules/platform_framing_v1.yaml`` or a file named in the spec) and their hash is recorded
with every prepared dataset, so a change of rules is a change of inputs.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from geomoe.core.errors import SpecError
from geomoe.core.storage import file_sha256

BUILTIN_RULES = Path(__file__).parent / "rules" / "platform_framing_v1.yaml"


@dataclass(frozen=True)
class FramingRules:
    sentences: int
    lead_ins: tuple[re.Pattern[str], ...]
    frames: dict[str, tuple[str, ...]]
    sha256: str

    def refine(self, sentences: list[str], platform: str, key: str) -> list[str]:
        """The refined sentences of one caption; ``key`` (e.g. the image id) picks the frame reproducibly."""
        if not sentences:
            return []
        frames = self.frames.get(platform)
        if not frames:
            raise ValueError(f"refinement rules have no frames for platform {platform!r}")
        first = sentences[0].strip()
        for pattern in self.lead_ins:
            first = pattern.sub("", first, count=1).strip(" ,:")
        if not first:
            return self.refine(sentences[1:], platform, key) if len(sentences) > 1 else []
        pick = int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "little") % len(frames)
        subject = first[0].lower() + first[1:]
        frame = frames[pick]
        return [frame.replace("{}", subject) if "{}" in frame else f"{frame} {subject}", *sentences[1 : self.sentences]]


def load_rules(path: str | Path | None = None) -> FramingRules:
    """Parse a rules file (None = the built-in v1); errors name the file and the field."""
    source = Path(path) if path else BUILTIN_RULES
    try:
        data = yaml.safe_load(source.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise SpecError(str(source), "", f"cannot read refinement rules: {err}") from err
    if not isinstance(data, dict):
        raise SpecError(str(source), "", "refinement rules must be a mapping")
    try:
        sentences = int(data.get("sentences", 2))
        lead_ins = tuple(re.compile(rf"^\s*(?:{p})\b", re.IGNORECASE) for p in data.get("lead_ins", []))
        frames = {str(k): tuple(str(f) for f in v) for k, v in dict(data["frames"]).items()}
    except KeyError as err:
        raise SpecError(str(source), str(err.args[0]), "missing") from err
    except (TypeError, ValueError, re.error) as err:
        raise SpecError(str(source), "", f"invalid refinement rules: {err}") from err
    if sentences < 1 or any(not f for f in frames.values()):
        raise SpecError(str(source), "sentences/frames", "need sentences >= 1 and at least one frame per platform")
    return FramingRules(sentences, lead_ins, frames, file_sha256(source))
