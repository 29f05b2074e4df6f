"""The retriever on Ray Serve over real HTTP on 127.0.0.1: a query returns the offline index search's top k for
the same checkpoint, the platform filter holds, bad requests get 4xx with a message, and the token is enforced."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from geomoe.config import JobSpec, parse_spec
from geomoe.models.factory import ensure_tiny_models
from geomoe.pipelines.prepare import prepare
from geomoe.train.run import split_rows

URL = "http://127.0.0.1:8000"


def call(path: str, body: dict | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def served(tiny_synth: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    import torch
    from test_train import make_spec  # the tiny PE-MoE of the training tests

    from geomoe.models.checkpoint import save_checkpoint
    from geomoe.models.factory import build_pe_moe
    from geomoe.pipelines.index import build_index
    from geomoe.serving.app import build_app
    from ray import serve

    root, _ = tiny_synth
    out = tmp_path_factory.mktemp("serve")
    spec = make_spec(root, out)
    manifest = prepare(spec)
    ensure_tiny_models(spec.pe_moe, split_rows(manifest, "train", spec)["caption"].to_pylist())
    torch.manual_seed(0)
    model, tokenizer = build_pe_moe(spec.pe_moe)
    (out / "ckpt").mkdir()
    save_checkpoint(out / "ckpt", model, spec, 1, 0)
    raw = spec.model_dump(mode="json") | {"index": {"output_dir": str(out / "index"), "dtype": "float32"}}
    build_index(parse_spec(JobSpec, raw, "test"), manifest, str(out / "ckpt"))
    args = {"checkpoint": str(out / "ckpt"), "index": str(out / "index"), "token": "s3cret"}
    serve.run(build_app(args), name="retriever", route_prefix="/", blocking=False)
    try:
        yield {"model": model.eval(), "tokenizer": tokenizer, "spec": spec, **args}
    finally:
        serve.shutdown()


def test_search_over_http_returns_the_offline_top_k(served: dict[str, Any]) -> None:
    from geomoe.retrieval.embed import embed_texts
    from geomoe.retrieval.index import query_rows, read_index

    query = "drone view of a building with a red roof"
    status, body = call("/search", {"query": query, "k": 5}, token="s3cret")
    assert status == 200, body
    t, g = embed_texts(served["model"], served["tokenizer"], [query], served["spec"].pe_moe.text.max_length)
    offline = read_index(served["index"]).search(query_rows(t, g), 5)[0]
    assert [r["image_id"] for r in body["results"]] == [image_id for image_id, _ in offline]
    assert [r["score"] for r in body["results"]] == pytest.approx([s for _, s in offline], abs=1e-5)
    assert sum(body["expert_weights"].values()) == pytest.approx(1.0, abs=1e-5)
    status, body = call("/search", {"query": query, "k": 50, "platforms": ["satellite"]}, token="s3cret")
    assert status == 200 and body["results"] and {r["platform"] for r in body["results"]} == {"satellite"}


def test_bad_requests_and_tokens_are_refused_with_a_message(served: dict[str, Any]) -> None:
    assert call("/healthz") == (200, {"status": "ok"})
    assert call("/search", {"query": "a roof"})[0] == 401  # no token
    assert call("/search", {"query": "a roof"}, token="wrong")[0] == 401
    for bad, field in (({"query": ""}, "query"), ({"query": "x" * 1001}, "query"), ({"query": "a", "k": 0}, "k"),
                       ({"query": "a", "k": 101}, "k"), ({"query": "a", "platforms": ["boat"]}, "platforms"),
                       ({"query": "a", "extra": 1}, "extra")):  # fmt: skip
        status, body = call("/search", bad, token="s3cret")
        assert status == 422 and field in json.dumps(body["detail"]), (bad, body)
    status, info = call("/info", token="s3cret")
    assert status == 200 and info["index"]["count"] > 0 and info["index"]["checkpoint"] == served["checkpoint"]
