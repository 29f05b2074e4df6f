"""KubeRay manifests (API group ray.io, v1) generated from the project's own specs and one values file
(k8s/values.yaml): a RayJob per job or sweep spec, a RayService per Serve config, a standing RayCluster.

What a manifest holds comes from where it is decided: the number of training workers, their CPUs, memory and
whether they use GPUs from the job spec's ``resources`` (a pod is cut from a node type to fit them); the node
types (their CPUs, memory, GPUs, accelerator), images, namespace, storage locations and credentials from the values
file. Nothing is copied by hand, so a manifest cannot drift from the spec it runs. The pods share no disk: a job or
Serve config whose files are local paths (not URIs, not on a volume every pod mounts) is refused here, before
anything is submitted, as is an accelerator no node type has.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from geomoe.core import storage
from geomoe.core.config import JobSpec, Strict, load_job, load_yaml, parse_spec
from geomoe.core.config.job import ResourcesSpec
from geomoe.core.errors import SpecError

API_VERSION = "ray.io/v1"
GPU = "nvidia.com/gpu"


class NodeType(Strict):
    """One kind of node the Kubernetes cluster offers, by what one pod on it may request: its allocatable CPUs
    and memory (the capacity less the kubelet's reserve and the DaemonSets), not its capacity, or a pod asking for
    the whole node stays Pending. A job's pods are cut from it by the job's own needs (``job_pod``); a standing
    cluster's pods take all of it."""

    cpu: int = Field(ge=1, description="CPUs a pod may request on one node (allocatable)")
    memory: str = Field(description="memory a pod may request on one node (allocatable), e.g. 28Gi")
    gpus: int = Field(0, ge=0, description="GPUs of one node")
    accelerator: str | None = Field(
        None,
        description="Ray's accelerator type of its GPUs (A100, A10G, H100): what Serve configs and jobs may ask for",
    )
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class SharedVolume(Strict):
    """A volume every pod mounts (a ReadWriteMany claim: EFS, Filestore, NFS): local paths under ``path`` in a job
    or Serve config are then the same files on every pod."""

    path: str = Field(pattern=r"^/", description="where every pod mounts it")
    claim: str = Field(description="the PersistentVolumeClaim (ReadWriteMany)")


class K8sValues(Strict):
    """k8s/values.yaml: what the cluster provides; the specs say what a job needs."""

    namespace: str = "geomoe"
    image: str = Field(description="an image with this repository at ``workdir`` (k8s/Dockerfile)")
    llm_image: str = Field(
        description="the same repository on Ray's LLM stack (vLLM and the torch it pins: k8s/Dockerfile.llm), for "
        "jobs with a vllm engine and Serve configs with a ray.serve.llm application"
    )
    ray_version: str = "2.60.0"
    workdir: str = "/app"
    service_account: str | None = Field(None, description="its cloud identity reaches the bucket (no keys)")
    credentials_secret: str | None = Field(None, description="a Secret of AWS_* variables, when keys are needed")
    serve_token_secret: str = Field("geomoe-serve-token", description="Secret (key: token) for a Serve token_env")
    env: dict[str, str] = Field(default_factory=dict, description="GEOMOE_STORAGE, GEOMOE_DATA: used by the specs")
    shared_volumes: list[SharedVolume] = Field(default_factory=list)
    object_store_fraction: float = Field(
        0.3, gt=0, lt=1, description="of a pod's memory, as /dev/shm: Ray's object store lives there (Ray's default)"
    )
    head: NodeType
    cpu_workers: NodeType
    gpu_workers: NodeType
    infer_workers: NodeType

    def node_types(self) -> dict[str, NodeType]:
        return {"cpu": self.cpu_workers, "gpu": self.gpu_workers, "infer": self.infer_workers}

    def accelerators(self) -> set[str]:
        return {t.accelerator for t in self.node_types().values() if t.accelerator}


@dataclass(frozen=True)
class Pod:
    """What one pod asks for (requests = limits)."""

    cpu: int
    memory_gi: int
    gpus: int = 0


def load_values(path: str | Path) -> K8sValues:
    return parse_spec(K8sValues, load_yaml(path), str(path))


def gibibytes(quantity: str) -> float:
    """A Kubernetes memory quantity (``64Gi``, ``512Mi``, ``1Ti``, ``1000G``) in GiB."""
    units = {"Ki": 2**-20, "Mi": 2**-10, "Gi": 1.0, "Ti": 2**10, "K": 1e3 / 2**30, "M": 1e6 / 2**30,
             "G": 1e9 / 2**30, "T": 1e12 / 2**30}  # fmt: skip
    for suffix in sorted(units, key=len, reverse=True):
        if quantity.endswith(suffix):
            return float(quantity[: -len(suffix)]) * units[suffix]
    return float(quantity) / 2**30


def whole_node(node: NodeType) -> Pod:
    return Pod(node.cpu, math.floor(gibibytes(node.memory)), node.gpus)


def job_pod(res: ResourcesSpec, node: NodeType, source: str) -> tuple[Pod, int]:
    """The pod a job's training workers are packed into, and how many: as many workers a pod as one node holds
    (by GPUs, else by CPUs) and no more than the job has; the pod asks for those workers' CPUs and GPUs, and for
    ``resources.memory_per_worker`` GiB each (default: the node's memory in proportion to the CPUs taken)."""
    if res.use_gpu:
        if node.gpus < 1:
            raise SpecError(source, "resources.use_gpu", "the values' gpu_workers nodes have no GPUs (gpus: 0)")
        per_pod = min(res.num_workers, node.gpus)
    else:
        per_pod = min(res.num_workers, max(1, int(node.cpu // res.cpus_per_worker)))
    cpu = math.ceil(per_pod * res.cpus_per_worker)
    if cpu > node.cpu:
        reason = f"{per_pod} workers x {res.cpus_per_worker} CPUs do not fit a {node.cpu}-CPU node of the values"
        raise SpecError(source, "resources.cpus_per_worker", reason)
    node_gi = gibibytes(node.memory)
    memory = per_pod * res.memory_per_worker if res.memory_per_worker else node_gi * cpu / node.cpu
    if memory > node_gi:
        reason = f"{per_pod} workers x {res.memory_per_worker} GiB do not fit a {node.memory} node of the values"
        raise SpecError(source, "resources.memory_per_worker", reason)
    return Pod(cpu, math.ceil(memory), per_pod if res.use_gpu else 0), math.ceil(res.num_workers / per_pod)


@contextmanager
def _environment(env: dict[str, str]) -> Iterator[None]:
    """The values' environment while a spec is read: its ${GEOMOE_STORAGE} is what the pods will see."""
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _container(name: str, values: K8sValues, pod: Pod, env: list[dict[str, Any]], image: str) -> dict[str, Any]:
    amount = {"cpu": str(pod.cpu), "memory": f"{pod.memory_gi}Gi"} | ({GPU: str(pod.gpus)} if pod.gpus else {})
    mounts = [{"name": "dshm", "mountPath": "/dev/shm"}]
    mounts += [{"name": f"shared-{i}", "mountPath": v.path} for i, v in enumerate(values.shared_volumes)]
    container: dict[str, Any] = {
        "name": name,
        "image": image,
        "workingDir": values.workdir,
        "resources": {"requests": amount, "limits": amount},
        "env": env,
        "volumeMounts": mounts,
    }
    if values.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": values.credentials_secret}}]
    return container


def _pod(container: dict[str, Any], values: K8sValues, node: NodeType, pod: Pod) -> dict[str, Any]:
    """The pod template: the container, /dev/shm as memory sized for Ray's object store (a container's default is
    64 MB, and Ray falls back to a slow disk-backed store), every shared volume, the node's placement."""
    shm = f"{max(1, math.floor(pod.memory_gi * values.object_store_fraction))}Gi"
    volumes: list[dict[str, Any]] = [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": shm}}]
    volumes += [
        {"name": f"shared-{i}", "persistentVolumeClaim": {"claimName": v.claim}}
        for i, v in enumerate(values.shared_volumes)
    ]
    spec: dict[str, Any] = {"containers": [container], "volumes": volumes}
    if values.service_account:
        spec["serviceAccountName"] = values.service_account
    if node.node_selector:
        spec["nodeSelector"] = node.node_selector
    if node.tolerations:
        spec["tolerations"] = node.tolerations
    return {"spec": spec}


def _env(values: K8sValues, extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in sorted(values.env.items())] + (extra or [])


Group = tuple[NodeType, Pod, int]  # a worker group: its node type, its pod, its starting replicas


def cluster_spec(
    values: K8sValues, groups: dict[str, Group], env: list[dict[str, Any]] | None = None, image: str | None = None
) -> dict[str, Any]:
    """A RayCluster spec: a head that runs drivers only (num-cpus 0, as cluster.yaml) and the worker groups
    ``{name: (node type, pod, starting replicas)}``, scaled by the in-tree autoscaler within the node type's
    bounds."""
    env = env if env is not None else _env(values)
    image = image or values.image
    head_pod = whole_node(values.head)
    head = _container("ray-head", values, head_pod, env, image)
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8000, "name": "serve"},
    ]
    workers = []
    for name, (node, pod, replicas) in groups.items():
        low, high = min(node.min_replicas, replicas), max(node.max_replicas, replicas)
        workers.append(
            {
                "groupName": name,
                "replicas": replicas,
                "minReplicas": low,
                "maxReplicas": high,
                "rayStartParams": {},
                "template": _pod(_container("ray-worker", values, pod, env, image), values, node, pod),
            }
        )
    return {
        "rayVersion": values.ray_version,
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod(head, values, values.head, head_pod),
        },
        "workerGroupSpecs": workers,
    }


def _metadata(name: str, values: K8sValues) -> dict[str, Any]:
    return {"name": name.replace("_", "-").lower(), "namespace": values.namespace, "labels": {"app": "geomoe"}}


def ray_cluster(values: K8sValues) -> dict[str, Any]:
    """A standing cluster for `geomoe submit` and sweeps: a whole node a pod (it cannot know the jobs to come), every
    node type at its minimum, autoscaled."""
    groups = {name: (node, whole_node(node), node.min_replicas) for name, node in values.node_types().items()}
    return {"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": _metadata("geomoe", values)} | {
        "spec": cluster_spec(values, groups)
    }


def _job_groups(
    res: ResourcesSpec, values: K8sValues, source: str, trials: int = 1, trial_cpus: float = 0.0
) -> dict[str, Group]:
    """The groups a job (or ``trials`` concurrent trials) runs in: ``train``, its training workers' pods (GPU or
    CPU, ``job_pod``); ``data``, CPU pods for what runs beside them (Ray Data's decoding and prepare tasks,
    ``data_concurrency`` each, and a sweep's trial drivers, ``trial_cpus`` each), autoscaled from one."""
    name = "gpu" if res.use_gpu else "cpu"
    node = values.gpu_workers if res.use_gpu else values.cpu_workers
    pod, pods = job_pod(res, node, source)
    beside = trials * (res.data_concurrency + trial_cpus)
    data = values.cpu_workers
    data_pods = max(1, math.ceil(beside / data.cpu))
    for key, amount in res.worker_resources.items():
        wanted = key.removeprefix("accelerator_type:")
        if key.startswith("accelerator_type:") and amount > 0 and wanted != node.accelerator:
            reason = f"asks for accelerator {wanted}; the values' {name}_workers nodes have {node.accelerator}"
            raise SpecError(source, f"resources.worker_resources.{key}", reason)
    return {"train": (node, pod, pods * trials), "data": (data, whole_node(data), data_pods)}


def needs_llm_stack(raw: Any) -> bool:
    """A spec or Serve config that runs vLLM in-process: an engine of kind vllm, or a ray.serve.llm application."""
    if isinstance(raw, dict):
        if raw.get("kind") == "vllm" or str(raw.get("import_path", "")).startswith("ray.serve.llm"):
            return True
        return any(needs_llm_stack(v) for v in raw.values())
    return isinstance(raw, list) and any(needs_llm_stack(v) for v in raw)


def _on_shared_volume(location: str, values: K8sValues) -> bool:
    return any(storage.is_inside(location, v.path) for v in values.shared_volumes)


def _require_shared(spec: JobSpec, source: str, values: K8sValues) -> None:
    """Pods share no disk: every location must be a URI, or a path on a mount the spec declares shared and the
    values mount in every pod."""
    for key, location in spec.locations().items():
        declared = spec.storage.is_shared(location) and (
            storage.is_uri(location) or _on_shared_volume(location, values)
        )
        if not declared:
            reason = (
                f"{location} is a local path, and the pods of a Kubernetes cluster share no disk: use a URI "
                "(s3://..., or ${GEOMOE_STORAGE} with env.GEOMOE_STORAGE in the values), or a volume every pod "
                "mounts: storage.shared_mounts in the spec and shared_volumes in the values"
            )
            raise SpecError(source, key, reason)


def _relative_to_repo(path: str | Path) -> str:
    """The spec's path inside the image (which carries this repository at ``workdir``)."""
    absolute = Path(path).resolve()
    try:
        return absolute.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        raise SpecError(
            str(path), "", "run from the repository root: the image carries the repository's specs"
        ) from None


def ray_job(job_path: str | Path, values: K8sValues, overrides: list[str] | None = None) -> dict[str, Any]:
    """A RayJob that runs ``geomoe run <job>`` on a cluster of its own, shaped by the job's resources, and
    deletes the cluster when the job ends (its outputs are in object storage). The values' ``env`` is set in
    every pod, so the driver reads the spec exactly as it was read here."""
    source = str(job_path)
    with _environment(values.env):
        spec = load_job(job_path, overrides).with_absolute_paths()
    _require_shared(spec, source, values)
    command = ["geomoe", "run", _relative_to_repo(job_path)]
    for override in overrides or []:
        command += ["--set", override]
    image = values.llm_image if needs_llm_stack(spec.model_dump(mode="json")) else values.image
    return _ray_job(spec.name, values, command, _job_groups(spec.resources, values, source), image)


def ray_sweep(sweep_path: str | Path, values: K8sValues, overrides: list[str] | None = None) -> dict[str, Any]:
    """A RayJob that runs ``geomoe sweep <sweep>`` on a cluster of its own: room for ``max_concurrent`` trials,
    each shaped by the base job's resources, on the base job's image; deleted when the sweep ends."""
    from geomoe.core.sweep import load_sweep

    source = str(sweep_path)
    with _environment(values.env):
        sweep, base_path = load_sweep(sweep_path, overrides=overrides or [])
        spec = load_job(base_path, list(sweep.overrides)).with_absolute_paths()
    root = storage.absolute(sweep.output_root)
    if not (storage.is_uri(root) or (spec.storage.is_shared(root) and _on_shared_volume(root, values))):
        reason = f"{sweep.output_root} is a local path, and the pods of a Kubernetes cluster share no disk: use a URI"
        raise SpecError(source, "output_root", reason)
    _require_shared(spec, str(base_path), values)
    command = ["geomoe", "sweep", _relative_to_repo(sweep_path)]
    for override in overrides or []:
        command += ["--set", override]
    groups = _job_groups(spec.resources, values, source, sweep.max_concurrent, sweep.trial_cpus)
    image = values.llm_image if needs_llm_stack(spec.model_dump(mode="json")) else values.image
    return _ray_job(sweep.name, values, command, groups, image)


def _ray_job(name: str, values: K8sValues, command: list[str], groups: dict[str, Group], image: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(name, values),
        "spec": {
            "entrypoint": shlex.join(command),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": cluster_spec(values, groups, image=image),
        },
    }


def ray_service(config_path: str | Path, values: K8sValues, name: str = "geomoe-serve") -> dict[str, Any]:
    """A RayService running a Serve config (serve/*.yaml) unchanged, on GPU workers autoscaled by Serve's
    replicas; a retriever's ``token_env`` is filled from the values' Secret, never written here."""
    from geomoe.on_ray.serving.config import check_serve_schema

    source = str(config_path)
    raw = check_serve_schema(config_path)
    _require_shared_serve(raw, source, values)
    node = values.infer_workers
    for key, wanted in accelerators_asked(raw):
        if wanted != node.accelerator:
            reason = f"accelerator {wanted}: the Serve cluster's nodes (infer_workers) have {node.accelerator}"
            raise SpecError(source, key, reason)
    token_envs = sorted({a["args"]["token_env"] for a in raw["applications"] if (a.get("args") or {}).get("token_env")})
    secret = values.serve_token_secret
    extra = [{"name": e, "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}} for e in token_envs]
    groups = {"infer": (node, whole_node(node), max(1, node.min_replicas))}
    image = values.llm_image if needs_llm_stack(raw) else values.image
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(name, values),
        "spec": {
            "serveConfigV2": yaml.safe_dump(raw, sort_keys=False),
            "rayClusterConfig": cluster_spec(values, groups, _env(values, extra), image),
        },
    }


SERVE_LOCATIONS = ("index", "checkpoint", "localizer", "rerank.captions", "captioner.prompts")


def accelerators_asked(raw: Any, key: str = "") -> list[tuple[str, str]]:
    """(dotted key, accelerator type) of every ``accelerator_type`` a Serve config (or any spec) asks for."""
    if isinstance(raw, dict):
        found = (
            [(f"{key}.accelerator_type".lstrip("."), str(raw["accelerator_type"]))]
            if raw.get("accelerator_type")
            else []
        )
        for k, v in raw.items():
            found += accelerators_asked(v, f"{key}.{k}".lstrip("."))
        return found
    if isinstance(raw, list):
        return [found for i, v in enumerate(raw) for found in accelerators_asked(v, f"{key}[{i}]")]
    return []


def _require_shared_serve(raw: dict[str, Any], source: str, values: K8sValues) -> None:
    """A Serve config's files (index, checkpoints, caption store, prompts) must be URIs, registry URIs or paths
    on a volume the values mount in every pod, as a job's are."""
    for i, app in enumerate(raw.get("applications", [])):
        args = app.get("args") or {}
        predictors: dict[str, Any] = args["predictors"] if isinstance(args.get("predictors"), dict) else {}
        for dotted in (*SERVE_LOCATIONS, *(f"predictors.{name}" for name in predictors)):
            value: Any = args
            for part in dotted.split(".", 1) if dotted.startswith("predictors.") else dotted.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            if not isinstance(value, str) or value.startswith(("models:/", "builtin:")) or storage.is_uri(value):
                continue
            if not (value.startswith("/") and _on_shared_volume(value, values)):
                reason = (
                    f"{value} is a local path, and the pods of a Kubernetes cluster share no disk: use a URI, or a "
                    "path under one of the values' shared_volumes"
                )
                raise SpecError(source, f"applications[{i}].args.{dotted}", reason)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, runtimeEnvYAML) as literal blocks, readable in the manifest."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)
_Dumper.ignore_aliases = lambda self, data: True  # type: ignore[method-assign]  # plain YAML, no &id001 anchors


def to_yaml(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False)
