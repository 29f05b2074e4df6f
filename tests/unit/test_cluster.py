"""cluster.yaml passes Ray's own cluster-launcher validation (offline) and has the node types we rely on."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from jsonschema import ValidationError

CLUSTER = Path(__file__).resolve().parents[2] / "cluster.yaml"


def test_cluster_config_is_valid_for_the_ray_launcher() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config  # private: Ray is pinned

    config = yaml.safe_load(CLUSTER.read_text())
    validate_config(prepare_config(config))
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}
    assert types["train_8gpu"]["resources"]["GPU"] == 8 and types["infer_1gpu"]["resources"]["GPU"] == 1
    assert types["train_8gpu"]["min_workers"] == 0 < types["train_8gpu"]["max_workers"]  # autoscaled from zero
    pinned = ["pip install --quiet -e /home/ray/geomoe"]  # the head's and the workers' stack, not infer_1gpu's
    assert (
        not config.get("setup_commands") and config["head_setup_commands"] == config["worker_setup_commands"] == pinned
    )
    llm = types["infer_1gpu"]["worker_setup_commands"]  # vLLM's node type: the LLM image's packages
    assert "k8s/requirements-llm.lock" in llm[0] and "--no-deps" in llm[1]
    # no shared disk: every node reaches the bucket through its instance profile, never through keys
    assert all("IamInstanceProfile" in t["node_config"] for t in types.values())
    assert "AWS_SECRET_ACCESS_KEY" not in CLUSTER.read_text()
    broken = {**config, "available_node_types": {**types, "spare": {"resources": {}, "max_workers": 1}}}
    with pytest.raises(ValidationError, match="node_config"):
        validate_config(prepare_config(broken))
