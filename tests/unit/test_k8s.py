"""KubeRay manifests generated from the specs, validated offline against KubeRay's v1 CRD schemas
(tests/data/kuberay, with their provenance), strictly: a field the schema does not declare is an error."""

from __future__ import annotations

import copy
import functools
import json
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from geomoe import k8s
from geomoe.errors import SpecError

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = REPO / "tests" / "data" / "kuberay"
CLUSTER_JOBS = ["cgrs_gallery_captions", "pe_moe_geotext", "pe_moe_track4_submit", "refine_captions_geotext"]
CLUSTER_JOBS += ["smgeo_cvogl"]
LOCAL_JOBS = ["quickstart", "smgeo_quickstart"]  # local paths: a cluster of pods cannot run them


def _strict(schema: Any) -> Any:
    """Unknown fields rejected wherever the schema lists an object's fields (and does not keep unknown ones)."""
    if isinstance(schema, dict):
        schema = {key: _strict(value) for key, value in schema.items()}
        if "properties" in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            schema.setdefault("additionalProperties", False)
        return schema
    if isinstance(schema, list):
        return [_strict(item) for item in schema]
    return schema


@functools.cache
def validator(kind: str) -> jsonschema.Draft7Validator:
    schema = _strict(json.loads((SCHEMAS / f"{kind}.v1.schema.json").read_text()))
    return jsonschema.Draft7Validator(schema)


def assert_valid(manifest: dict[str, Any]) -> None:
    assert manifest["apiVersion"] == "ray.io/v1"
    errors = [
        f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator(manifest["kind"]).iter_errors(manifest)
    ]
    assert not errors, errors


@pytest.fixture
def values(monkeypatch: pytest.MonkeyPatch) -> k8s.K8sValues:
    monkeypatch.chdir(REPO)  # the image carries the repository: specs are named relative to its root
    return k8s.load_values(REPO / "k8s" / "values.yaml")


@pytest.mark.parametrize("job", CLUSTER_JOBS)
def test_every_cluster_job_becomes_a_valid_rayjob_shaped_by_its_spec(job: str, values: k8s.K8sValues) -> None:
    from geomoe.config import load_job

    manifest = k8s.ray_job(f"jobs/{job}.yaml", values)
    assert_valid(manifest)
    spec = manifest["spec"]
    assert spec["entrypoint"] == f"geomoe run jobs/{job}.yaml" and spec["shutdownAfterJobFinishes"] is True
    (group,) = spec["rayClusterSpec"]["workerGroupSpecs"]
    resources = load_job(REPO / "jobs" / f"{job}.yaml").resources
    pod = group["template"]["spec"]["containers"][0]
    if resources.use_gpu:
        assert group["groupName"] == "gpu" and pod["resources"]["limits"]["nvidia.com/gpu"] == "8"
        assert group["replicas"] == -(-resources.num_workers // 8)  # 8 GPUs a pod: the job's workers packed
    env = {e["name"]: e["value"] for e in pod["env"]}
    assert env["GEOMOE_STORAGE"] == values.env["GEOMOE_STORAGE"]


def test_the_job_resources_decide_the_pods(values: k8s.K8sValues) -> None:
    sixteen = k8s.ray_job("jobs/pe_moe_geotext.yaml", values, ["resources.num_workers=20"])
    assert sixteen["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["replicas"] == 3  # 20 GPUs on 8-GPU pods
    assert sixteen["spec"]["entrypoint"] == "geomoe run jobs/pe_moe_geotext.yaml --set resources.num_workers=20"
    assert_valid(sixteen)
    with pytest.raises(SpecError, match=r"resources\.cpus_per_worker: .*do not fit a 96-CPU pod"):
        k8s.ray_job("jobs/pe_moe_geotext.yaml", values, ["resources.cpus_per_worker=16"])


@pytest.mark.parametrize("job", LOCAL_JOBS)
def test_a_job_on_local_paths_is_refused_with_the_key_named(job: str, values: k8s.K8sValues) -> None:
    with pytest.raises(SpecError, match=rf"{job}\.yaml: output_root: .* pods of a Kubernetes cluster share no disk"):
        k8s.ray_job(f"jobs/{job}.yaml", values)


def test_the_production_serve_config_becomes_a_valid_rayservice(values: k8s.K8sValues) -> None:
    manifest = k8s.ray_service("serve/production.yaml", values)
    assert_valid(manifest)
    served = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    assert served == yaml.safe_load((REPO / "serve" / "production.yaml").read_text())  # the config, unchanged
    head = manifest["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    token = next(e for e in head["env"] if e["name"] == "GEOMOE_TOKEN")  # the retriever's token_env
    assert token["valueFrom"]["secretKeyRef"] == {"name": "geomoe-serve-token", "key": "token"}


def test_the_shipped_raycluster_is_generated_from_the_values_and_valid(values: k8s.K8sValues) -> None:
    shipped = yaml.safe_load((REPO / "k8s" / "raycluster.yaml").read_text())
    assert shipped == k8s.ray_cluster(values), (
        "k8s/raycluster.yaml is stale: geomoe k8s cluster --out k8s/raycluster.yaml"
    )
    assert_valid(shipped)


def test_the_validation_has_teeth(values: k8s.K8sValues) -> None:
    manifest = k8s.ray_job("jobs/pe_moe_geotext.yaml", values)
    for path, bad in ((["spec", "shutdownAfterJobFinish"], True), (["spec", "rayClusterSpec", "rayVersion"], 2.6)):
        broken = copy.deepcopy(manifest)
        target = broken
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = bad
        assert list(validator("RayJob").iter_errors(broken)), path


def test_the_cli_writes_a_manifest(values: k8s.K8sValues, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from geomoe.cli import main

    out = tmp_path / "job.yaml"
    assert main(["k8s", "job", "jobs/smgeo_cvogl.yaml", "--out", str(out)]) == 0
    assert "RayJob smgeo-cvogl ->" in capsys.readouterr().out
    assert_valid(yaml.safe_load(out.read_text()))
    assert main(["k8s", "job"]) == 2 and "name the spec" in capsys.readouterr().err
