"""Shared fixtures. No network, no downloads: every dataset here is written by the test itself."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def tiny_synth(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A tiny synthgeo benchmark shared (read-only) by the tests of a session."""
    from geomoe.config import SynthSpec
    from geomoe.data.synthgeo import generate

    out = tmp_path_factory.mktemp("synth") / "synthgeo"
    spec = SynthSpec(
        train_buildings=4,
        test_buildings=3,
        drone_views=2,
        ground_views=1,
        image_size=32,
        localization_train=3,
        localization_val=2,
        localization_test=2,
        tile_size=64,
        query_size=32,
    )
    return out, generate(out, spec)
