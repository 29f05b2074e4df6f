"""The tiny models of the tests, as job-spec sections (shared by tests/ray and tests/cluster; imported by module
name: pytest puts this folder on sys.path for its conftest.py)."""

from __future__ import annotations

from typing import Any


def tiny_pe_moe(models: str) -> dict[str, Any]:
    """A PE-MoE model section whose random tiny text and image models are built into ``models`` (a local cache)."""
    return {
        "embed_dim": 16,
        "gate_hidden": 16,
        "text": {"source": f"{models}/tiny_text", "tail_layers": 1, "max_length": 32, "pool": "mean"},
        "image": {
            "name": "geomoe-eva02-micro",
            "pretrained": f"{models}/tiny_image.pt",
            "image_size": 32,
            "tail_blocks": 1,
            "pool": "avg",
        },
        "tiny": {"text_hidden": 16, "text_layers": 2, "text_heads": 2},
    }


def tiny_smgeo() -> dict[str, Any]:
    """A scaled-down SMGeo model section: a 2-stage Swin (embed 16) with 3 experts, top-2, on 32/64-px inputs."""
    return {
        "name": "smgeo",
        "query_size": 32,
        "reference_size": 64,
        "backbone": {"embed_dim": 16, "depths": [1, 2], "num_heads": [1, 2], "window_size": 4, "drop_path": 0},
        "gmoe": {"experts": 3, "top_k": 2, "grid": [2, 2], "blocks": ["none", "even"]},
        "head_channels": 8,
    }
