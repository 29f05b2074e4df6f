"""The retriever on Ray Serve over real HTTP on 127.0.0.1: a query returns the offline index search's top k for
the same checkpoint, re-ranking orders as the offline re-ranker does (captioning missing images once), the
localizer predicts the offline batch path's box, bad requests get 4xx with a message, and the token is enforced."""

from __future__ import annotations

import base64
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Imported at collection, not inside the fuzzing test: pytest rewrites a plugin's modules as they are imported, and
# that lazy import, late in a full run, once failed in CPython 3.11.7's AST validator ("AST constructor recursion
# depth mismatch")
import schemathesis.specs.openapi.schemas  # noqa: F401

from geomoe.core import ownership, registry, storage
from geomoe.core.config import JobSpec, parse_spec
from geomoe.families.pe_moe.spec import PEMoEModelSpec
from geomoe.families.smgeo.spec import SMGeoModelSpec
from ports import start_serve
from tiny_jobs import smgeo_job, tiny_retriever, toy_job

URL = ""  # the app's base URL: set by ``served``, which starts Serve on a port of its own


def call(path: str, body: dict | None = None, token: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {token}"} if token else {})
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(URL + path, data=data, headers=headers, method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def post_json(path: str, body: dict, token: str | None = "s3cret") -> tuple[int, Any]:
    return call(path, body, token)


def b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


@pytest.fixture(scope="module")
def served(
    tiny_synth: tuple[Path, dict], tmp_path_factory: pytest.TempPathFactory, new_bucket: Any
) -> Iterator[dict[str, Any]]:
    """The quickstart app's deployments on tiny models: PE-MoE + index, CGRS with a caption store that lacks a
    third of the gallery and a tiny VLM captioner for those, and an SMGeo localizer. The index, the checkpoint
    and the caption store are served from the S3 server on 127.0.0.1 (each replica copies the index into a
    verified local cache); the tests compare with the same files on local disk."""
    import pyarrow.parquet as pq
    import torch

    from geomoe.core.data.caption_store import write_caption_store
    from geomoe.core.models.checkpoint import save_checkpoint
    from geomoe.core.models.tiny import build_tiny_vlm
    from geomoe.families.pe_moe.index import read_index
    from geomoe.families.smgeo.model import SMGeo
    from geomoe.on_ray.serving.app import compose
    from ray import serve

    root, _ = tiny_synth
    out = tmp_path_factory.mktemp("serve")
    spec, model, tokenizer = tiny_retriever(root, out, dtype="float32")
    ids = read_index(out / "index").ids
    uncaptioned = set(ids[::3])
    scene = pq.read_table(root / "geotext" / "gallery_captions.parquet").to_pylist()
    write_caption_store(out / "captions.parquet", [r for r in scene if r["image_id"] not in uncaptioned])
    smgeo_spec = smgeo_job(root, out)
    torch.manual_seed(0)
    (out / "smgeo").mkdir()
    save_checkpoint(out / "smgeo", SMGeo(smgeo_spec.model_as(SMGeoModelSpec)), smgeo_spec, 1, 0)
    build_tiny_vlm(out / "vlm", [r["caption"] for r in scene])
    toy_spec = parse_spec(JobSpec, toy_job(root, out), "toy")  # a family from a .py file, with predict of its own
    (out / "toy").mkdir()
    save_checkpoint(out / "toy", registry.family("toy_platform").build_model(toy_spec.model), toy_spec, 1, 0)
    bucket = new_bucket("served-app")
    for name in ("index", "ckpt"):
        ownership.upload_dir(out / name, f"{bucket}/{name}", ownership.Claim("test upload"))
    storage.write_bytes_atomic(f"{bucket}/captions.parquet", (out / "captions.parquet").read_bytes())
    args = {
        "index": f"{bucket}/index",
        "checkpoint": f"{bucket}/ckpt",
        "token": "s3cret",
        "rerank": {"captions": f"{bucket}/captions.parquet", "top_n": 8, "lexical_weight": 1.0},
        "captioner": {"engine": {"kind": "transformers", "model": str(out / "vlm"), "max_new_tokens": 12}},
        "localizer": str(out / "smgeo"),
        "predictors": {"toy": str(out / "toy")},
    }
    global URL
    URL = start_serve()
    # the toy's predictor asks for no CPU of its own, as a Serve config file may set per deployment: the other
    # deployments and the fuzzing test's second app book all 4 of the session cluster's CPUs
    no_cpu = {"Predictor-toy": {"ray_actor_options": {"num_cpus": 0}}}
    serve.run(compose(args, options=no_cpu), name="retriever", route_prefix="/", blocking=False)
    try:
        yield {"model": model.eval(), "tokenizer": tokenizer, "spec": spec, "built_from": str(out / "ckpt"),
               "out": out, "uncaptioned": uncaptioned, "root": root, **args,
               "local_index": str(out / "index"), "local_captions": str(out / "captions.parquet")}  # fmt: skip
    finally:
        serve.shutdown()


def test_search_over_http_returns_the_offline_top_k(served: dict[str, Any]) -> None:
    from geomoe.families.pe_moe.encode import embed_texts
    from geomoe.families.pe_moe.index import query_rows, read_index

    query = "drone view of a building with a red roof"
    status, body = call("/search", {"query": query, "k": 5}, token="s3cret")
    assert status == 200, body
    t, g = embed_texts(
        served["model"], served["tokenizer"], [query], served["spec"].model_as(PEMoEModelSpec).text.max_length
    )
    offline = read_index(served["local_index"]).search(query_rows(t, g), 5)[0]  # served: the same index in S3
    assert [r["image_id"] for r in body["results"]] == [image_id for image_id, _ in offline]
    assert [r["score"] for r in body["results"]] == pytest.approx([s for _, s in offline], abs=1e-5)
    assert sum(body["expert_weights"].values()) == pytest.approx(1.0, abs=1e-5)
    # a query is normalised like the prepared test queries (X-VLM pre_caption): case and punctuation don't matter
    status, shouted = call("/search", {"query": "Drone view of a building, with a RED roof!", "k": 5}, token="s3cret")
    assert status == 200 and shouted["results"] == body["results"]
    status, body = call("/search", {"query": query, "k": 50, "platforms": ["satellite"]}, token="s3cret")
    assert status == 200 and body["results"] and {r["platform"] for r in body["results"]} == {"satellite"}


def raw_post(path: str, body: bytes, headers: dict[str, str]) -> tuple[int, Any]:
    request = urllib.request.Request(URL + path, data=body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def test_bad_requests_and_tokens_are_refused_with_a_message(served: dict[str, Any]) -> None:
    from geomoe.on_ray.serving.gate import MAX_BODY_BYTES

    assert call("/healthz") == (200, {"status": "ok", "waiting_for": []})  # every deployment answered
    assert call("/search", {"query": "a roof"})[0] == 401  # no token
    assert call("/search", {"query": "a roof"}, token="wrong")[0] == 401
    # the token before anything about the body: garbage without a token is 401, not 422
    assert raw_post("/search", b"{not json", {"Content-Type": "application/json"})[0] == 401
    auth = {"Authorization": "Bearer s3cret"}
    status, body = raw_post("/search", b'{"query": "a roof"}', auth | {"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in body["detail"]
    # over the size limit: refused from Content-Length, before the body is read (here: none is sent at all)
    huge = auth | {"Content-Type": "application/json", "Content-Length": str(MAX_BODY_BYTES + 1)}
    port = int(URL.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in huge.items())
        sock.sendall(f"POST /search HTTP/1.1\r\nHost: 127.0.0.1\r\n{head}\r\n".encode())
        answer = ""
        while "request body is over" not in answer and (part := sock.recv(4096)):
            answer += part.decode("latin-1")
    assert answer.startswith("HTTP/1.1 413") and "request body is over" in answer

    # a streamed body without Content-Length is counted and cut at the limit
    def chunks() -> Iterator[bytes]:
        yield b'{"query": "'
        for _ in range(MAX_BODY_BYTES // (1 << 20) + 1):
            yield b"x" * (1 << 20)
        yield b'"}'

    request = urllib.request.Request(URL + "/search", data=chunks(), method="POST",
                                     headers=auth | {"Content-Type": "application/json"})  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=60)
    assert refused.value.code == 413
    for bad, field in (({"query": ""}, "query"), ({"query": "x" * 1001}, "query"), ({"query": "a", "k": 0}, "k"),
                       ({"query": "a", "k": 101}, "k"), ({"query": "a", "platforms": ["boat"]}, "platforms"),
                       ({"query": "a", "extra": 1}, "extra")):  # fmt: skip
        status, body = call("/search", bad, token="s3cret")
        assert status == 422 and field in json.dumps(body["detail"]), (bad, body)
    status, info = call("/info", token="s3cret")
    assert status == 200 and info["index"]["count"] > 0 and info["index"]["checkpoint"] == served["built_from"]


def fuzz(base_url: str, headers: dict[str, str]) -> tuple[int, list[str]]:
    """Schemathesis's full run (examples, coverage, fuzzing and stateful phases; positive and negative data; every
    check) against the live app's own OpenAPI schema, seeded and bounded: the number of requests sent and one line
    per failed check."""
    import schemathesis
    from schemathesis import engine
    from schemathesis.engine import events

    # An image field's content (decodable, within the pixel limit) and the click inside the drone image are checked
    # beyond what JSON Schema can say: there a schema-valid request may get 413 or 422, and nowhere else.
    beyond_schema = {"positive_data_acceptance": {"expected-statuses": ["2xx", 401, 413, 422]}}
    config = schemathesis.Config.from_dict(
        {
            "seed": 20,
            "headers": headers,
            "generation": {"max-examples": 25, "mode": "all"},
            "checks": {"enabled": True},
            "operations": [{"include-path": "/localize", "checks": beyond_schema}],
        }
    )
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json", config=config)
    sent, failures = 0, []
    for event in engine.from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished | events.FuzzScenarioFinished):
            sent += len(event.recorder.interactions)
            for case_id, checks in event.recorder.checks.items():
                failures += [failed(event.recorder, case_id, c) for c in checks if c.failure_info is not None]
        elif isinstance(event, events.NonFatalError | events.FatalError):
            failures.append(f"schemathesis error: {event}")
        elif isinstance(event, events.EngineFinished):
            failures += [f"after run: {f.title}" for f in event.failures]
    return sent, sorted(set(failures))


def failed(recorder: Any, case_id: str, check: Any) -> str:
    """One line for a failed check: the operation, the check, the request body and the answer."""
    answer = recorder.interactions.get(case_id)
    response = answer.response if answer is not None else None
    said = f"{response.status_code} {response.content[:160]!r}" if response is not None else "no response"
    body = recorder.cases[case_id].value.body if case_id in recorder.cases else None
    return f"{recorder.label} {check.name}: {check.failure_info.failure.title}; sent {str(body)[:160]}; got {said}"


def test_the_app_keeps_its_openapi_contract_under_fuzzing_with_and_without_the_token(served: dict[str, Any]) -> None:
    """Every generated request, valid or not, is answered with a documented status code and body shape: no 5xx, no
    coercion (``"rerank": 0`` is refused), a body that is not JSON gets a documented code, the token is enforced."""
    for headers in ({"Authorization": "Bearer s3cret"}, {}):
        sent, failures = fuzz(URL, headers)
        print(f"schemathesis, token configured, {'with' if headers else 'without'} it: {sent} requests")
        assert sent > 50 and not failures, "\n".join([str(headers), str(sent), *failures])
    # an app with no token configured (search only): its schema claims no authentication and no /localize, and the
    # app keeps to that
    from geomoe.on_ray.serving.app import build_app
    from ray import serve

    open_args = {"index": served["local_index"], "checkpoint": served["built_from"]}
    serve.run(build_app(open_args), name="open", route_prefix="/open", blocking=False)
    try:
        open_url = f"{URL}/open"
        schema = json.loads(urllib.request.urlopen(f"{open_url}/openapi.json", timeout=60).read())
        assert "securitySchemes" not in schema.get("components", {}) and "/localize" not in schema["paths"]
        assert "/predict/{name}" not in schema["paths"]  # no predictors configured
        assert all("security" not in op for ops in schema["paths"].values() for op in ops.values())
        sent, failures = fuzz(open_url, {})
        print(f"schemathesis, no token configured: {sent} requests")
        assert sent > 50 and not failures, "\n".join(["no token configured", str(sent), *failures])
    finally:
        serve.delete("open")  # its replicas' CPUs are the next tests'

    status, body = call("/search", {"query": "a roof", "rerank": 0}, token="s3cret")
    assert status == 422 and body["errors"][0]["field"] == "body.rerank", body
    status, body = call("/search", {"query": "a roof", "k": "3"}, token="s3cret")
    assert status == 422 and body["errors"][0]["field"] == "body.k", body


def offline_reranked(served: dict[str, Any], query: str, generated: dict[str, str]) -> list[str]:
    """The offline evaluator's CGRS over the whole gallery, with the store plus the service's VLM captions."""
    import numpy as np
    import pyarrow.parquet as pq

    from geomoe.core.config import RerankSpec
    from geomoe.core.data.caption_store import write_caption_store
    from geomoe.core.retrieval.rerank import top_n
    from geomoe.families.pe_moe.encode import embed_texts
    from geomoe.families.pe_moe.evaluate import rerank_order
    from geomoe.families.pe_moe.index import query_rows, read_index

    store = pq.read_table(served["local_captions"]).to_pylist()
    extra = [{"image_id": i, "caption": c, "model_id": "vlm", "prompt_sha256": ""} for i, c in generated.items()]
    path = write_caption_store(str(served["out"] / "offline_captions.parquet"), store + extra)
    index = read_index(served["local_index"])
    t, g = embed_texts(
        served["model"], served["tokenizer"], [query], served["spec"].model_as(PEMoEModelSpec).text.max_length
    )
    scores_1N = index.rows.astype(np.float64) @ query_rows(t, g)[0].astype(np.float64)
    rerank = RerankSpec.model_validate(served["rerank"] | {"captions": str(path)})
    images = [{"image_id": i} for i in index.ids]
    vectors = np.zeros((1, len(images), 1))  # only diversity reads them
    top_1T = top_n(scores_1N[None], rerank.top_n)
    first_top = (np.take_along_axis(scores_1N[None], top_1T, axis=1), top_1T)
    max_length = served["spec"].model_as(PEMoEModelSpec).text.max_length
    order, _ = rerank_order(
        served["model"], served["tokenizer"], max_length, [{"caption": query}], first_top, images, vectors, rerank
    )
    return [index.ids[n] for n in order[0]]


def test_reranking_matches_the_offline_reranker_and_captions_missing_images_once(served: dict[str, Any]) -> None:
    changed = 0
    for query in ("drone view of a building with a red roof", "a satellite image of a tall glass tower"):
        status, first = post_json("/search", {"query": query, "k": 8})
        status, body = post_json("/search", {"query": query, "k": 8, "rerank": True})
        assert status == 200, body
        online = [r["image_id"] for r in body["results"]]
        assert sorted(online) == sorted(r["image_id"] for r in first["results"])  # re-ordered, same candidates
        changed += online != [r["image_id"] for r in first["results"]]
        generated = {r["image_id"]: r["captions"][0] for r in body["results"] if r["image_id"] in served["uncaptioned"]}
        assert generated and all(generated.values())  # the VLM captioned the candidates the store lacks
        assert online == offline_reranked(served, query, generated)
    assert changed  # re-ranking changes the order for at least one query
    status, info = call("/info", token="s3cret")
    captioned = info["rerank"]["captions_generated"]
    assert 0 < captioned <= len(served["uncaptioned"]) and info["rerank"]["captions_failed"] == 0
    post_json("/search", {"query": "drone view of a building with a red roof", "k": 8, "rerank": True})
    assert call("/info", token="s3cret")[1]["rerank"]["captions_generated"] == captioned  # cached, not asked again


def test_localize_returns_the_offline_box_and_refuses_bad_images(served: dict[str, Any], tmp_path: Path) -> None:
    import numpy as np
    from PIL import Image

    from geomoe.families.smgeo.localization import decode_pair
    from geomoe.families.smgeo.model import load_smgeo
    from geomoe.families.smgeo.pipelines import PredictBoxes

    folder = served["root"] / "cvogl" / "CVOGL_DroneAerial"
    drone, tile = sorted((folder / "query").iterdir())[0], sorted((folder / "satellite").iterdir())[0]
    body = {"drone_image": b64(drone), "click": [10.0, 12.0], "satellite_tile": b64(tile)}
    status, answer = post_json("/localize", body)
    assert status == 200, answer
    predictor = PredictBoxes(served["localizer"], clicks=(True,))  # the offline batch path
    model, spec, _ = load_smgeo(served["localizer"])
    row = {"query_path": str(drone), "reference_path": str(tile), "click_x": 10.0, "click_y": 12.0, "box": [0, 0, 1, 1]}
    decoded = decode_pair(row, spec.model_as(SMGeoModelSpec).query_size, spec.model_as(SMGeoModelSpec).reference_size)
    offline = predictor({k: v[None] for k, v in decoded.items()} | {"sample_id": np.array([0])})["pred_0"][0]
    assert answer["box"] == pytest.approx(offline.tolist(), abs=1e-3)
    # the confidence: the sigmoid of the best heatmap cell, recomputed from the checkpoint on the same inputs
    import torch

    with torch.no_grad():
        out = model(*(torch.from_numpy(decoded[k][None]) for k in ("query", "click", "reference")))
    assert answer["score"] == pytest.approx(float(torch.sigmoid(out.heatmap_logits.max())), abs=1e-4)
    from bad_inputs import png_header_only

    bomb = base64.b64encode(png_header_only(20_000, 20_000)).decode()
    huge = tmp_path / "huge.png"
    Image.new("RGB", (4097, 4097)).save(huge)
    for bad, code, words in (
        ({**body, "satellite_tile": b64(huge)}, 413, "satellite_tile"),
        ({**body, "drone_image": "x" * (12 * 1024 * 1024)}, 413, "drone_image"),
        ({**body, "drone_image": "not base64!"}, 422, "drone_image"),
        ({**body, "drone_image": base64.b64encode(b"plain text").decode()}, 422, "not a readable image"),
        ({**body, "click": [10_000.0, 1.0]}, 422, "outside"),
        ({**body, "satellite_tile": bomb}, 413, "satellite_tile"),  # refused from its header, never decoded
        ({**body, "drone_image": base64.b64encode(drone.read_bytes()[:300]).decode()}, 422, "not a readable image"),
    ):
        status, answer = post_json("/localize", bad)
        assert status == code and words in json.dumps(answer["detail"]), (code, answer)
    assert post_json("/localize", body, token=None)[0] == 401


def test_a_family_from_a_file_serves_its_own_predictions_at_its_route(served: dict[str, Any]) -> None:
    """The toy family (tests/toy_family.py, loaded from its file in the replica) serves ``predict`` at
    /predict/toy: the offline model's probabilities for the same image; its own input errors are 422s naming the
    input; another name is a 404; a checkpoint of a family without ``predict`` is refused before anything starts."""
    import torch

    from geomoe.core.data.images import open_image
    from geomoe.core.errors import SpecError
    from geomoe.core.platforms import PLATFORMS
    from geomoe.on_ray.serving.app import _predictor_checkpoints
    from toy_family import thumbnail

    image = sorted((served["root"] / "geotext").rglob("*.jpg"))[0]
    status, body = post_json("/predict/toy", {"inputs": {"image": b64(image)}})
    assert status == 200 and body["name"] == "toy", body
    loaded = registry.family("toy_platform").load_checkpoint(served["predictors"]["toy"])
    with torch.no_grad():
        offline = torch.softmax(loaded.model(torch.from_numpy(thumbnail(open_image(image), 8)[None])), 1)[0]
    expected = dict(zip(PLATFORMS, offline.tolist(), strict=True))
    assert body["outputs"]["probabilities"] == pytest.approx(expected, abs=1e-6)
    assert body["outputs"]["platform"] == max(expected, key=lambda p: expected[p])
    status, body = post_json("/predict/toy", {"inputs": {"image": base64.b64encode(b"not an image").decode()}})
    assert status == 422 and body["detail"].startswith("inputs.image: not a readable image file"), body
    status, body = post_json("/predict/toy", {"inputs": {}})
    assert status == 422 and "inputs.image: an image file, base64, is required" in body["detail"], body
    status, body = post_json("/predict/other", {"inputs": {}})
    assert status == 404 and "no predictor named 'other' (served: toy)" in body["detail"], body
    assert call("/info", token="s3cret")[1]["predictors"] == ["toy"]
    with pytest.raises(SpecError, match=r"predictors\.retriever: a pe_moe checkpoint; its family has no predict"):
        _predictor_checkpoints({"retriever": served["built_from"]})


def test_serving_from_the_model_registry_answers_exactly_like_serving_from_the_path(
    served: dict[str, Any], mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The served checkpoint registered on a real MLflow server (copied into its run's artifacts, proxied by the
    server), then a second app built from ``models:/<name>/<version>``: the same answers as the app serving the
    checkpoint's path."""
    from geomoe.core import tracking
    from geomoe.core.config import load_job
    from geomoe.on_ray.serving.app import build_app
    from geomoe.on_ray.serving.schemas import serve_spec
    from ray import serve

    monkeypatch.setenv(tracking.ENV, mlflow_server)
    monkeypatch.setenv("GEOMOE_CACHE", str(tmp_path / "cache"))
    job = load_job(Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml", ["name=served_tiny"])
    with tracking.job_run(job, str(tmp_path / "run")) as tracker:
        assert tracker is not None
        registered = tracking.register(tracker, "served_tiny", served["built_from"], {})
    args = {"index": served["local_index"], "checkpoint": registered, "token": "s3cret"}
    resolved = serve_spec(args).checkpoint  # the registry's copy (downloaded once into the cache), not the path
    assert resolved is not None and resolved.startswith(str(tmp_path / "cache")) and resolved != served["built_from"]
    serve.run(build_app(args), name="from-registry", route_prefix="/registry", blocking=False)
    try:
        for query in ("drone view of a building with a red roof", "a satellite image of a tall glass tower"):
            status, from_path = post_json("/search", {"query": query, "k": 10})
            assert status == 200, from_path
            status, from_registry = post_json("/registry/search", {"query": query, "k": 10})
            assert status == 200, from_registry
            assert from_registry["results"] == from_path["results"]
            assert from_registry["expert_weights"] == from_path["expert_weights"]
        # this app has neither a re-ranker nor a localizer: documented codes, the error shape of every error
        status, body = post_json("/registry/search", {"query": "a roof", "rerank": True})
        assert (status, body["status"]) == (409, 409) and "no re-ranker" in body["detail"]
        status, body = post_json(
            "/registry/localize", {"drone_image": "eA==", "click": [1, 1], "satellite_tile": "eA=="}
        )
        assert (status, body["status"]) == (404, 404) and "no localizer" in body["detail"]
    finally:
        serve.delete("from-registry")


def test_every_model_holder_puts_its_model_on_the_device_ray_gave_it(
    served: dict[str, Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The Serve deployments and the Ray Data actors and tasks that hold a model, built here with this process
    told it holds a GPU: each must move every parameter (and the gallery rows) onto it. The device is ``meta`` so
    that no GPU is needed; a holder that kept its model on the CPU (the production config gives QueryEncoder,
    Reranker and Localizer ``num_gpus``) fails here."""
    import torch

    from geomoe.core.config import CaptionSpec, RefineSpec
    from geomoe.core.engines.prompts import load_caption_prompt
    from geomoe.core.models.tiny import build_tiny_causal_lm
    from geomoe.families.pe_moe.pipelines import ImageEmbedder, _on_gpu
    from geomoe.families.pe_moe.serving import GallerySearch, QueryEncoder, Reranker
    from geomoe.families.smgeo.pipelines import PredictBoxes
    from geomoe.families.smgeo.serving import Localizer
    from geomoe.on_ray import ray_env
    from geomoe.on_ray.pipelines.caption import CaptionBatch
    from geomoe.on_ray.pipelines.refine import Normalisation, RefineBatch
    from geomoe.on_ray.serving.captioner import Captioner
    from geomoe.on_ray.serving.chat import ChatCompletions
    from geomoe.on_ray.serving.predictor import Predictor

    def device_of(module: torch.nn.Module) -> set[str]:
        return {t.device.type for t in [*module.parameters(), *module.buffers()]}

    import ray

    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    assert ray_env.worker_device() == "cuda"  # an actor or replica with num_gpus > 0
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert ray_env.worker_device() == "cpu"
    monkeypatch.setattr(ray_env, "worker_device", lambda: "meta")
    lm = str(build_tiny_causal_lm(tmp_path / "lm", ["a red roof", "a glass tower"]))
    checkpoint, index = served["built_from"], served["local_index"]
    holders = {
        "QueryEncoder": QueryEncoder.func_or_class(checkpoint).model,
        "Reranker": Reranker.func_or_class(checkpoint, index, served["rerank"], None).model,
        "Captioner": Captioner.func_or_class(served["captioner"]).local.model,
        "Localizer": Localizer.func_or_class(served["localizer"]).model,
        "Predictor (toy family)": Predictor.func_or_class(served["predictors"]["toy"]).loaded.model,
        "ImageEmbedder": ImageEmbedder(checkpoint).model,
        "PredictBoxes": PredictBoxes(served["localizer"], clicks=(True,)).model,
        "CaptionBatch": CaptionBatch(
            CaptionSpec(engine=served["captioner"]["engine"], output="unused"), load_caption_prompt(None)
        ).captioner.model,
        "RefineBatch": RefineBatch(
            RefineSpec(engine={"kind": "transformers", "model": lm}, output_dir="x"), Normalisation(30, 12)
        ).engine.model,
        "on_model_device": _on_gpu(checkpoint, lambda model, *_: model),
        "ChatCompletions (VLM)": ChatCompletions.func_or_class(served["captioner"]["engine"]["model"]).captioner.model,
        "ChatCompletions (LLM)": ChatCompletions.func_or_class(lm).engine.model,
    }
    assert {name: device_of(model) for name, model in holders.items()} == {name: {"meta"} for name in holders}
    rows = GallerySearch.func_or_class(index).index.rows
    assert isinstance(rows, torch.Tensor) and rows.device.type == "meta"
