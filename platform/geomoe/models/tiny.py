"""Tiny models with random weights, built and saved locally, loadable by the real loading code.

Nothing is downloaded: the tokenizer is a Unigram model trained here on the job's own captions and
wrapped as an XLM-R tokenizer; the text model is a small XLMRobertaModel; the image model is open_clip's
EVA-CLIP class with a micro timm Eva. Real configurations load hub ids or paths through the same functions.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from geomoe.io import atomic_dir

SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R ids 0..4


def train_tokenizer(corpus: Iterable[str], vocab_size: int = 1000) -> Any:
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import XLMRobertaTokenizer  # the fast (tokenizers-backed) class in transformers 5

    tokenizer = Tokenizer(models.Unigram())
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=vocab_size, special_tokens=SPECIALS, unk_token="<unk>")
    tokenizer.train_from_iterator(list(corpus), trainer=trainer)
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
    out: str | Path, corpus: Iterable[str], hidden: int = 64, layers: int = 4, heads: int = 2, max_length: int = 64
) -> Path:
    """Write a random XLM-R model and its tokenizer to ``out`` (a folder AutoModel and BGE-M3 loaders accept)."""
    from transformers import XLMRobertaConfig, XLMRobertaModel

    tokenizer = train_tokenizer(corpus)
    config = XLMRobertaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=2 * hidden,
        max_position_embeddings=max_length + 4,
        type_vocab_size=1,
        pad_token_id=1,
        bos_token_id=0,
        eos_token_id=2,
        initializer_range=0.2,  # tiny random models with the default 0.02 embed every text almost identically
    )
    with atomic_dir(out) as tmp:
        XLMRobertaModel(config, add_pooling_layer=False).save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return Path(out)


def save_tiny_image_model(out: str | Path, name: str = "geomoe-eva02-micro") -> Path:
    """Write the random weights of a tiny EVA-CLIP as an open_clip checkpoint file (``pretrained=<file>``)."""
    import open_clip
    import torch

    from geomoe.models.encoders import register_tiny_architectures

    register_tiny_architectures()
    model = open_clip.create_model(name, pretrained=None)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    tmp.replace(out)
    return out
