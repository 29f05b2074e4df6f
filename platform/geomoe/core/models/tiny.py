"""Tiny models with random weights, built and saved locally, loadable by the real loading code.

Nothing is downloaded: the tokenizer is a Unigram model trained here on the job's own captions and
wrapped as an XLM-R tokenizer; the text model is a small XLMRobertaModel; the image model is open_clip's
EVA-CLIP class with a micro timm Eva. Real configurations load hub ids or paths through the same functions.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from geomoe.core.ownership import Claim, atomic_dir
from geomoe.core.storage import atomic_path

if TYPE_CHECKING:
    from geomoe.core.config import EngineSpec

log = logging.getLogger(__name__)

# A tiny model's folder is a model cache geomoe builds: absent, empty or geomoe's own (ownership.Claim).
TINY_MODEL = Claim("model (tiny: true)", stage="tiny model")

T = TypeVar("T")

RECIPE_FILE = "geomoe-tiny.json"  # what the model was built from (text_model_recipe)

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R ids 0..4


def seeded(seed: int, build: Callable[[], T]) -> T:
    """``build()`` under ``seed``: the same seed always gives the same weights; the caller's RNG is untouched."""
    import torch

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def tiny_llama_config(tokenizer: Any) -> Any:
    """The 2-layer, width-32 Llama of the tiny chat LLM and of the tiny VLM's language model."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def train_tokenizer(corpus: Iterable[str]) -> Any:
    """A SentencePiece-style Unigram tokenizer (XLM-R's kind) whose pieces are the corpus's words and characters.

    The pieces are scored by log frequency, so known words stay whole and unseen words fall back to characters.
    Built directly rather than with ``UnigramTrainer``, which on a small, repetitive caption corpus collapses
    to single characters (then a 48-token limit keeps only the first 48 characters of a caption).
    """
    import math
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import XLMRobertaTokenizer  # the fast (tokenizers-backed) class in transformers 5

    words: Counter[str] = Counter()
    chars: Counter[str] = Counter()
    for text in corpus:
        for word in text.lower().split():
            words["\u2581" + word] += 1
            chars.update(word)
    total = sum(words.values()) + sum(chars.values()) + 1
    pieces = [(t, 0.0) for t in SPECIALS] + [("\u2581", math.log(1 / total))]
    pieces += [(w, math.log(n / total)) for w, n in sorted(words.items())]
    pieces += [(c, math.log(n / total) - 10.0) for c, n in sorted(chars.items())]  # fallback: costly
    tokenizer = Tokenizer(models.Unigram(pieces, unk_id=SPECIALS.index("<unk>"), byte_fallback=False))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>",
        pair="<s> $A </s> </s> $B </s>",
        special_tokens=[(t, SPECIALS.index(t)) for t in ("<s>", "</s>")],
    )
    return XLMRobertaTokenizer(
        tokenizer_object=tokenizer,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        sep_token="</s>",
        cls_token="<s>",
        pad_token="<pad>",
        mask_token="<mask>",
    )


def save_tiny_text_model(
    out: str | Path,
    corpus: Iterable[str],
    hidden: int = 64,
    layers: int = 4,
    heads: int = 2,
    max_length: int = 64,
    seed: int = 0,
    intermediate: int | None = None,
    also: dict[str, Any] | None = None,
) -> Path:
    """Write a random XLM-R model and its tokenizer to ``out`` (a folder AutoModel and BGE-M3 loaders accept);
    ``intermediate``: the FFN width (default 2 x hidden; XLM-R's own is 4 x). Its recipe (``RECIPE_FILE``) records
    the corpus, these settings and ``also`` (what was built with it, e.g. the image model)."""
    import torch
    from transformers import XLMRobertaConfig, XLMRobertaModel

    corpus = list(corpus)
    tokenizer = train_tokenizer(corpus)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=intermediate or 2 * hidden,
        max_position_embeddings=max_length + 4,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.02,  # XLM-R's own: layers start near identity, so the trunk keeps word identity
    )
    model = seeded(seed, lambda: XLMRobertaModel(config, add_pooling_layer=False))
    with torch.no_grad():
        # Position (and segment) embeddings as large as the word embeddings make a random model's state of a text
        # depend on its length more than on its words; a pretrained model's do not. A tenth of the scale keeps
        # word identity dominant, so short queries and long captions with the same words land close together.
        model.embeddings.position_embeddings.weight.mul_(0.1)
        model.embeddings.token_type_embeddings.weight.mul_(0.1)
    recipe = text_model_recipe(
        corpus, text_settings(hidden, layers, heads, max_length, seed, intermediate) | (also or {})
    )
    with atomic_dir(out, TINY_MODEL) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / RECIPE_FILE).write_text(json.dumps(recipe, indent=2, sort_keys=True) + "\n")
    return Path(out)


def text_settings(
    hidden: int, layers: int, heads: int, max_length: int, seed: int, intermediate: int | None
) -> dict[str, Any]:
    return {
        "hidden": hidden,
        "layers": layers,
        "heads": heads,
        "max_length": max_length,
        "seed": seed,
        "intermediate": intermediate,
    }


def text_model_recipe(corpus: Iterable[str], settings: dict[str, Any]) -> dict[str, Any]:
    """What a tiny text model is a function of: its corpus (as a multiset: the tokenizer counts words) and its
    settings. Two builds with the same recipe write the same model."""
    lines = sorted(corpus)
    digest = hashlib.sha256("\n".join(lines).encode()).hexdigest()
    return {"corpus_sha256": digest, "corpus_texts": len(lines), "settings": settings}


def built_recipe(folder: str | Path) -> dict[str, Any] | None:
    """The recipe a tiny text model in ``folder`` was built from; None when it has none (built by a geomoe
    before recipes were recorded, or in their first format): such a folder is rebuilt."""
    path = Path(folder) / RECIPE_FILE
    recipe = json.loads(path.read_text()) if path.is_file() else None
    return recipe if isinstance(recipe, dict) and "settings" in recipe else None  # an earlier format: none


def save_tiny_image_model(out: str | Path, name: str = "geomoe-eva02-micro", seed: int = 0) -> Path:
    """Write the random weights of a tiny EVA-CLIP as an open_clip checkpoint file (``pretrained=<file>``)."""
    import open_clip
    import torch

    from geomoe.core.models.encoders import register_tiny_architectures

    register_tiny_architectures()
    model = seeded(seed, lambda: open_clip.create_model(name, pretrained=None))
    with atomic_path(out, ".pt") as tmp:  # a temporary name of its own: never a file that was there
        torch.save(model.state_dict(), tmp)
    return Path(out)


CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_causal_lm(path: str | Path, corpus: Iterable[str], seed: int = 0) -> Path:
    """A random 2-layer Llama with a chat template, saved where ``transformers`` loads it (tests, CPU demos).

    It generates words from the corpus in random order: enough to run the real generation and validation path.
    """
    from transformers import LlamaForCausalLM

    tokenizer = train_tokenizer(corpus)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "left"  # decoder-only generation pads on the left
    model = seeded(seed, lambda: LlamaForCausalLM(tiny_llama_config(tokenizer)))
    with atomic_dir(path, TINY_MODEL) as tmp:
        tokenizer.save_pretrained(tmp)
        model.save_pretrained(tmp)
    return Path(path)


def build_tiny_captioner(path: str | Path, corpus: Iterable[str], image_size: int = 64, seed: int = 0) -> Path:
    """A random image-to-text model (transformers' VisionEncoderDecoder: a 1-layer ViT and a 1-layer GPT-2)
    with its tokenizer and image processor, saved locally: a stand-in VLM for tests and CPU demos."""
    from transformers import GPT2Config, VisionEncoderDecoderConfig, ViTConfig, ViTImageProcessor
    from transformers import VisionEncoderDecoderModel as Captioner

    tokenizer = train_tokenizer(corpus)
    encoder = ViTConfig(
        image_size=image_size, patch_size=16, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=64,
    )  # fmt: skip
    special = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id}
    decoder = GPT2Config(
        vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128, add_cross_attention=True,
        pad_token_id=tokenizer.pad_token_id, **special,
    )  # fmt: skip
    config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(encoder, decoder)
    config.decoder_start_token_id, config.pad_token_id = tokenizer.bos_token_id, tokenizer.pad_token_id
    config.eos_token_id = tokenizer.eos_token_id
    model = seeded(seed, lambda: Captioner(config))
    # random weights may rank a special token first at every step: the caption then decodes to nothing (a test
    # of captioning once passed on 12 empty captions); a real captioner never writes these, the tiny one may not
    specials = [tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.unk_token_id]
    model.generation_config.suppress_tokens = sorted({t for t in specials if t is not None})
    with atomic_dir(path, TINY_MODEL) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ViTImageProcessor(size={"height": image_size, "width": image_size}).save_pretrained(tmp)
    return Path(path)


VLM_CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% for c in m['content'] %}{% if c['type'] in ('image', 'image_url') %}<image> {% else %}{{ c['text'] }}"
    "{% endif %}{% endfor %}{% endif %} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}"
)


def build_tiny_vlm(path: str | Path, corpus: Iterable[str], image_size: int = 32, seed: int = 0) -> Path:
    """A random chat VLM (LLaVA: a 1-layer CLIP vision tower, a projector and a 2-layer Llama) with its
    processor and chat template, saved where ``AutoModelForImageTextToText``/``AutoProcessor`` load it: the
    stand-in for Qwen2-VL or LLaVA in tests and CPU demos. It writes corpus words in random order."""
    from transformers import CLIPImageProcessor, CLIPVisionConfig, LlavaConfig, LlavaProcessor
    from transformers import LlavaForConditionalGeneration as Llava

    tokenizer = train_tokenizer(corpus)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template, tokenizer.padding_side = VLM_CHAT_TEMPLATE, "left"
    patch = max(4, image_size // 4)
    vision = CLIPVisionConfig(
        image_size=image_size, patch_size=patch, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2,
    )  # fmt: skip
    config = LlavaConfig(
        vision_config=vision,
        text_config=tiny_llama_config(tokenizer),
        image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
        vision_feature_layer=-1,
    )
    square = {"height": image_size, "width": image_size}
    processor = LlavaProcessor(
        image_processor=CLIPImageProcessor(size={"shortest_edge": image_size}, crop_size=square),
        tokenizer=tokenizer,
        patch_size=patch,
        vision_feature_select_strategy="default",  # drops the class token: (image_size / patch)^2 image tokens
        chat_template=VLM_CHAT_TEMPLATE,
        num_additional_image_tokens=1,
    )
    model = seeded(seed, lambda: Llava(config))
    with atomic_dir(path, TINY_MODEL) as tmp:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return Path(path)


def ensure_tiny_engine(engine: EngineSpec, corpus: Iterable[str], vision: bool, seed: int = 0) -> None:
    """With ``engine.tiny``, write a random chat LLM (or, ``vision``, a chat VLM) at ``engine.model`` when it is
    missing. Its vocabulary is the corpus's words, so its (random) outputs are word salad from the domain."""
    if not engine.tiny or (Path(engine.model) / "config.json").is_file():
        return
    log.info("building a tiny random %s at %s", "VLM" if vision else "LLM", engine.model)
    (build_tiny_vlm if vision else build_tiny_causal_lm)(engine.model, corpus, seed=seed)
