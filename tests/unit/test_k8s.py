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

from geomoe.core.errors import SpecError
from geomoe.on_ray import k8s

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
    from geomoe.core.config import load_job

    manifest = k8s.ray_job(f"jobs/{job}.yaml", values)
    assert_valid(manifest)
    spec = manifest["spec"]
    assert spec["entrypoint"] == f"geomoe run jobs/{job}.yaml" and spec["shutdownAfterJobFinishes"] is True
    groups = {g["groupName"]: g for g in spec["rayClusterSpec"]["workerGroupSpecs"]}
    group = groups["train"]
    job_spec = load_job(REPO / "jobs" / f"{job}.yaml")
    resources = job_spec.resources
    template = group["template"]["spec"]
    pod = template["containers"][0]
    limits = pod["resources"]["limits"]
    if resources.use_gpu:  # a pod holds as many of the job's workers as one 8-GPU node does, and no more
        per_pod = min(resources.num_workers, 8)
        assert limits["nvidia.com/gpu"] == str(per_pod)
        assert group["replicas"] == -(-resources.num_workers // 8)
        assert limits["cpu"] == str(int(per_pod * resources.cpus_per_worker))
    shm = next(v for v in template["volumes"] if v["name"] == "dshm")  # Ray's object store: memory, 30% of the pod
    assert shm["emptyDir"]["medium"] == "Memory" and {"name": "dshm", "mountPath": "/dev/shm"} in pod["volumeMounts"]
    assert int(shm["emptyDir"]["sizeLimit"][:-2]) == int(int(limits["memory"][:-2]) * 0.3)
    uses_vllm = any(getattr(job_spec, s) and getattr(job_spec, s).engine.kind == "vllm" for s in ("refine", "caption"))
    assert pod["image"] == (values.llm_image if uses_vllm else values.image)
    env = {e["name"]: e["value"] for e in pod["env"]}
    assert env["GEOMOE_STORAGE"] == values.env["GEOMOE_STORAGE"]
    # CPU pods beside the training pods for the data tasks: room for data_concurrency CPUs, on whole nodes
    data = groups["data"]
    assert data["replicas"] == -(-resources.data_concurrency // values.cpu_workers.cpu)
    assert data["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"] == str(values.cpu_workers.cpu)


def _pod(manifest: dict[str, Any]) -> tuple[int, dict[str, str]]:
    group = next(g for g in manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "train")
    return group["replicas"], group["template"]["spec"]["containers"][0]["resources"]["limits"]


def test_the_job_resources_decide_the_pods(values: k8s.K8sValues) -> None:
    twenty = k8s.ray_job("jobs/pe_moe_geotext.yaml", values, ["resources.num_workers=20"])
    assert _pod(twenty) == (3, {"cpu": "64", "memory": "709Gi", "nvidia.com/gpu": "8"})  # 20 GPUs on 8-GPU nodes
    assert twenty["spec"]["entrypoint"] == "geomoe run jobs/pe_moe_geotext.yaml --set resources.num_workers=20"
    assert_valid(twenty)
    # the paper's SMGeo job trains on one GPU: one 1-GPU pod, its 8 CPUs and their share of the node's memory
    assert _pod(k8s.ray_job("jobs/smgeo_cvogl.yaml", values)) == (
        1,
        {"cpu": "8", "memory": "89Gi", "nvidia.com/gpu": "1"},
    )
    sized = k8s.ray_job("jobs/smgeo_cvogl.yaml", values, ["resources.memory_per_worker=40"])
    assert _pod(sized)[1]["memory"] == "40Gi"
    with pytest.raises(SpecError, match=r"resources\.cpus_per_worker: .*do not fit a 94-CPU node"):
        k8s.ray_job("jobs/pe_moe_geotext.yaml", values, ["resources.cpus_per_worker=16"])
    with pytest.raises(
        SpecError, match=r"resources\.worker_resources\.accelerator_type:H100: asks for accelerator H100"
    ):
        k8s.ray_job("jobs/smgeo_cvogl.yaml", values, ['resources.worker_resources={"accelerator_type:H100": 0.001}'])


def test_a_sweep_becomes_a_rayjob_with_room_for_its_concurrent_trials(values: k8s.K8sValues) -> None:
    from geomoe.core.sweep import load_sweep

    manifest = k8s.ray_sweep("search_spaces/smgeo_experts.yaml", values)
    assert_valid(manifest)
    assert manifest["spec"]["entrypoint"] == "geomoe sweep search_spaces/smgeo_experts.yaml"
    sweep, _ = load_sweep(REPO / "search_spaces" / "smgeo_experts.yaml")
    assert _pod(manifest) == (sweep.max_concurrent, {"cpu": "8", "memory": "89Gi", "nvidia.com/gpu": "1"})
    # the trials' drivers and data tasks: max_concurrent x (trial_cpus + data_concurrency) CPUs beside them
    data = next(g for g in manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "data")
    beside = sweep.max_concurrent * (sweep.trial_cpus + 4)  # smgeo_cvogl's data_concurrency
    assert data["replicas"] == -(-beside // values.cpu_workers.cpu)
    env = manifest["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]["containers"][0]["env"]
    assert {"name": "GEOMOE_STORAGE", "value": values.env["GEOMOE_STORAGE"]} in env  # where the sweep writes
    with pytest.raises(SpecError, match=r"smgeo_topk\.yaml: output_root: .* share no disk"):
        k8s.ray_sweep("search_spaces/smgeo_topk.yaml", values.model_copy(update={"env": {}}))


@pytest.mark.parametrize("job", LOCAL_JOBS)
def test_a_job_on_local_paths_is_refused_with_the_key_named(job: str, values: k8s.K8sValues) -> None:
    with pytest.raises(SpecError, match=rf"{job}\.yaml: output_root: .* pods of a Kubernetes cluster share no disk"):
        k8s.ray_job(f"jobs/{job}.yaml", values)


def test_the_production_serve_config_becomes_a_valid_rayservice(values: k8s.K8sValues) -> None:
    manifest = k8s.ray_service("serve/production.yaml", values)
    assert_valid(manifest)
    (group,) = manifest["spec"]["rayClusterConfig"]["workerGroupSpecs"]
    pod = group["template"]["spec"]
    assert pod["containers"][0]["image"] == values.llm_image  # its vlm application is ray.serve.llm (vLLM)
    assert pod["nodeSelector"] == values.infer_workers.node_selector  # the A10G nodes its vLLM asks for
    claims = [v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["geomoe-shared"]  # its /mnt/shared paths are the same files on every pod
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


def test_a_serve_config_is_refused_when_its_files_or_accelerators_are_not_on_the_cluster(
    values: k8s.K8sValues, tmp_path: Path
) -> None:
    with pytest.raises(
        SpecError, match=r"quickstart\.yaml: applications\[0\]\.args\.index: runs/quickstart/index is a local path"
    ):
        k8s.ray_service("serve/quickstart.yaml", values)
    raw = yaml.safe_load((REPO / "serve" / "production.yaml").read_text())
    raw["applications"][0]["args"]["llm_configs"][0]["accelerator_type"] = "H100"
    (tmp_path / "h100.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"llm_configs\[0\]\.accelerator_type: accelerator H100: the Serve cluster"):
        k8s.ray_service(tmp_path / "h100.yaml", values)
    raw["applications"][0]["args"]["llm_configs"][0]["accelerator_type"] = "A100"  # the values have it, but not
    (tmp_path / "a100.yaml").write_text(yaml.safe_dump(raw))  # on the nodes the RayService runs on
    with pytest.raises(SpecError, match=r"accelerator A100: the Serve cluster's nodes \(infer_workers\) have A10G"):
        k8s.ray_service(tmp_path / "a100.yaml", values)
    unmounted = values.model_copy(update={"shared_volumes": []})
    with pytest.raises(SpecError, match=r"args\.index: /mnt/shared/geomoe/runs/pe_moe_geotext/index is a local path"):
        k8s.ray_service("serve/production.yaml", unmounted)
    raw = yaml.safe_load((REPO / "serve" / "production.yaml").read_text())
    raw["applications"][1]["args"]["predictors"] = {"toy": "/home/me/toy"}  # a family's own predictions
    raw["applications"][1]["deployments"].append({"name": "Predictor-toy", "num_replicas": 1})  # its deployment
    (tmp_path / "predictor.yaml").write_text(yaml.safe_dump(raw))
    with pytest.raises(SpecError, match=r"applications\[1\]\.args\.predictors\.toy: /home/me/toy is a local path"):
        k8s.ray_service(tmp_path / "predictor.yaml", values)


def test_accelerators_agree_across_specs_serve_configs_values_and_cluster_yaml(values: k8s.K8sValues) -> None:
    """What is asked for (Serve configs' accelerator_type, jobs' accelerator_type: worker resources) must be what
    both cluster definitions offer, and the two (k8s values, cluster.yaml) must offer the same."""
    from geomoe.core.config import load_job

    cluster = yaml.safe_load((REPO / "cluster.yaml").read_text())
    launched = {
        key.split(":", 1)[1]
        for node in cluster["available_node_types"].values()
        for key in node.get("resources", {})
        if key.startswith("accelerator_type:")
    }
    assert values.accelerators() == launched == {"A100", "A10G"}
    asked = {
        a
        for config in (REPO / "serve").glob("*.yaml")
        for _, a in k8s.accelerators_asked(yaml.safe_load(config.read_text()))
    }
    for job in (REPO / "jobs").glob("*.yaml"):
        keys = load_job(job).resources.worker_resources
        asked |= {k.split(":", 1)[1] for k in keys if k.startswith("accelerator_type:")}
    assert asked and asked <= launched


def test_the_images_pin_what_pyproject_pins() -> None:
    """k8s/Dockerfile installs the project as pinned; k8s/Dockerfile.llm installs k8s/requirements-llm.lock, the
    resolution of k8s/requirements-llm.txt, which pins every package as pyproject does except the three vLLM
    decides (torch, torchvision, numpy, through Ray's llm extra); the lock agrees with both."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pins = dict(d.split("==", 1) for d in project["dependencies"])
    main = (REPO / "k8s" / "Dockerfile").read_text()
    assert "RUN pip install --no-cache-dir -e .\n" in main and "vllm" not in main.lower().split("#")[0]
    ray_tag = pins["ray[data,train,tune,serve]"]
    base = f"FROM rayproject/ray:{ray_tag}-py311-cu128"
    llm = (REPO / "k8s" / "Dockerfile.llm").read_text()
    assert base in main and base in llm and "-r k8s/requirements-llm.lock" in llm and "--no-deps -e ." in llm
    wanted = dict(x.split("==", 1) for x in _requirements("requirements-llm.txt"))
    assert wanted.pop("ray[data,train,tune,serve,llm]") == ray_tag
    vllm_decides = ("torch", "torchvision", "numpy")
    assert wanted == {k: v for k, v in pins.items() if k not in vllm_decides and not k.startswith("ray[")}
    locked = {
        k.lower().replace("_", "-"): v for k, v in (x.split("==", 1) for x in _requirements("requirements-llm.lock"))
    }
    assert all(locked[k.lower().replace("_", "-")] == v for k, v in wanted.items())
    assert locked["ray"] == ray_tag and locked["vllm"] == "0.29.0" and locked["torch"] == "2.13.0"
    assert (
        yaml.safe_load((REPO / "cluster.yaml").read_text())["docker"]["image"]
        == f"rayproject/ray:{ray_tag}-py311-cu128"
    )


def _requirements(name: str) -> list[str]:
    lines = (REPO / "k8s" / name).read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.lstrip().startswith("#")]


@pytest.mark.slow
def test_the_llm_image_lock_installs() -> None:
    """pip's resolver on the LLM image's lock (network: PyPI; a few minutes): `pytest -m slow`."""
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--quiet", "--ignore-installed", "-r",
         str(REPO / "k8s" / "requirements-llm.lock")],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
