"""Serve config files are checked before anything starts: Ray's schema, then the builder's args."""

from pathlib import Path

import pytest
import yaml

from geomoe.core.errors import SpecError
from geomoe.on_ray.serving.config import check_serve_config

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_shipped_serve_configs_pass_ray_schema_and_fail_only_on_the_missing_index(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # relative paths resolve against the working folder: an empty one here, whatever `make demo` left in the
    # repository (its runs/quickstart/index is exactly what serve/quickstart.yaml names)
    monkeypatch.chdir(tmp_path)
    for name in ("quickstart.yaml", "production.yaml"):
        raw = yaml.safe_load((REPO / "serve" / name).read_text())
        with pytest.raises(SpecError, match=r"applications\[\d\]\.args.*index.*not found"):
            check_serve_config(write(tmp_path, raw))


def test_bad_serve_configs_name_the_key(tmp_path: Path) -> None:
    index = tmp_path / "index"
    index.mkdir()
    (index / "manifest.json").write_text('{"checkpoint": "/ckpt"}')
    app = {"name": "r", "route_prefix": "/", "import_path": "geomoe.on_ray.serving.app:build_app"}
    good = check_serve_config(write(tmp_path, {"applications": [app | {"args": {"index": str(index)}}]}))
    assert "/search" in good[0] and "search only" in good[0]
    # a predictor's deployment is configured by its name, Predictor-<name>; the endpoint is listed
    predicted = {"args": {"index": str(index), "predictors": {"toy": "/ckpt/toy"}}}
    deployments = [{"name": "Predictor-toy", "ray_actor_options": {"num_cpus": 0.5}}]
    described = check_serve_config(write(tmp_path, {"applications": [app | predicted | {"deployments": deployments}]}))
    assert "/predict/toy" in described[0] and "Predictor-toy" in described[0]
    gpu_engine = {"kind": "transformers", "model": "/models/vlm", "use_gpu": True}  # the deployment's num_gpus says
    for raw, words in (
        ({"applications": [app | {"args": {"index": str(index), "k": 3}}]}, "k"),
        ({"applications": [app | {"args": {"index": str(index)}, "deployments": [{"name": "X", "bad": 1}]}]}, "bad"),
        (
            {"applications": [app | {"args": {"index": str(index)}, "deployments": [{"name": "Predictor-toy"}]}]},
            "no deployment 'Predictor-toy'",
        ),  # not among the args' predictors
        ({"applications": [app | {"args": {"index": str(index), "predictors": {"a b": "/c"}}}]}, "not a name"),
        ({"applications": [app | {"args": {"index": str(index), "token_env": "GEOMOE_NOT_SET_ANYWHERE"}}]}, "not set"),
        ({"applications": [app | {"args": {"index": str(index), "captioner": {"engine": gpu_engine}}}]}, "num_gpus"),
    ):
        with pytest.raises(SpecError, match=words):
            check_serve_config(write(tmp_path, raw))
