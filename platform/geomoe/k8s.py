"""KubeRay manifests (API group ray.io, v1) generated from the project's own specs and one values file
(k8s/values.yaml): a RayJob per job spec, a RayService per Serve config, a standing RayCluster.

What a manifest holds comes from where it is decided: the number of training workers, their CPUs and whether they
use GPUs from the job spec's ``resources``; the image, pod shapes, namespace, storage locations and credentials
from the values file. Nothing is copied by hand, so a manifest cannot drift from the spec it runs. The pods share
no disk: a job whose data or outputs are local paths (not URIs, not declared shared mounts) is refused here,
before anything is submitted.
"""

from __future__ import annotations

import math
import os
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field

from geomoe.config import JobSpec, Strict, load_job, load_yaml, parse_spec
from geomoe.errors import SpecError

API_VERSION = "ray.io/v1"
GPU = "nvidia.com/gpu"


class PodShape(Strict):
    cpu: int = Field(ge=1, description="CPUs of one pod (a Kubernetes request and limit)")
    memory: str = Field(description="memory of one pod, a Kubernetes quantity such as 32Gi")
    gpus: int = Field(0, ge=0, description="GPUs of one pod")
    min_replicas: int = Field(0, ge=0)
    max_replicas: int = Field(1, ge=0)
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list)


class K8sValues(Strict):
    """k8s/values.yaml: what the cluster provides; the specs say what a job needs."""

    namespace: str = "geomoe"
    image: str = Field(description="an image with this repository at ``workdir`` (k8s/Dockerfile)")
    ray_version: str = "2.60.0"
    workdir: str = "/app"
    service_account: str | None = Field(None, description="its cloud identity reaches the bucket (no keys)")
    credentials_secret: str | None = Field(None, description="a Secret of AWS_* variables, when keys are needed")
    serve_token_secret: str = Field("geomoe-serve-token", description="Secret (key: token) for a Serve token_env")
    env: dict[str, str] = Field(default_factory=dict, description="GEOMOE_STORAGE, GEOMOE_DATA: used by the specs")
    head: PodShape
    cpu_workers: PodShape
    gpu_workers: PodShape


def load_values(path: str | Path) -> K8sValues:
    return parse_spec(K8sValues, load_yaml(path), str(path))


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


def _container(name: str, values: K8sValues, shape: PodShape, env: list[dict[str, Any]]) -> dict[str, Any]:
    amount = {"cpu": str(shape.cpu), "memory": shape.memory} | ({GPU: str(shape.gpus)} if shape.gpus else {})
    container: dict[str, Any] = {
        "name": name,
        "image": values.image,
        "workingDir": values.workdir,
        "resources": {"requests": amount, "limits": amount},
        "env": env,
    }
    if values.credentials_secret:
        container["envFrom"] = [{"secretRef": {"name": values.credentials_secret}}]
    return container


def _pod(container: dict[str, Any], values: K8sValues, shape: PodShape) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [container]}
    if values.service_account:
        spec["serviceAccountName"] = values.service_account
    if shape.node_selector:
        spec["nodeSelector"] = shape.node_selector
    if shape.tolerations:
        spec["tolerations"] = shape.tolerations
    return {"spec": spec}


def _env(values: K8sValues, extra: list[dict[str, Any]] | None = None) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in sorted(values.env.items())] + (extra or [])


def cluster_spec(
    values: K8sValues, groups: dict[str, tuple[PodShape, int]], env: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    """A RayCluster spec: a head that runs drivers only (num-cpus 0, as cluster.yaml) and the worker groups
    ``{name: (pod shape, starting replicas)}``, scaled by the in-tree autoscaler within each shape's bounds."""
    env = env if env is not None else _env(values)
    head = _container("ray-head", values, values.head, env)
    head["ports"] = [
        {"containerPort": 6379, "name": "gcs"},
        {"containerPort": 8265, "name": "dashboard"},
        {"containerPort": 10001, "name": "client"},
        {"containerPort": 8000, "name": "serve"},
    ]
    workers = []
    for name, (shape, replicas) in groups.items():
        low, high = min(shape.min_replicas, replicas), max(shape.max_replicas, replicas)
        workers.append(
            {
                "groupName": name,
                "replicas": replicas,
                "minReplicas": low,
                "maxReplicas": high,
                "rayStartParams": {},
                "template": _pod(_container("ray-worker", values, shape, env), values, shape),
            }
        )
    return {
        "rayVersion": values.ray_version,
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": _pod(head, values, values.head),
        },
        "workerGroupSpecs": workers,
    }


def _metadata(name: str, values: K8sValues) -> dict[str, Any]:
    return {"name": name.replace("_", "-").lower(), "namespace": values.namespace, "labels": {"app": "geomoe"}}


def ray_cluster(values: K8sValues) -> dict[str, Any]:
    """A standing cluster for `geomoe submit` and sweeps: CPU and GPU workers at their minimum, autoscaled."""
    groups = {"cpu": (values.cpu_workers, values.cpu_workers.min_replicas)}
    groups["gpu"] = (values.gpu_workers, values.gpu_workers.min_replicas)
    return {"apiVersion": API_VERSION, "kind": "RayCluster", "metadata": _metadata("geomoe", values)} | {
        "spec": cluster_spec(values, groups)
    }


def _worker_group(spec: JobSpec, values: K8sValues, source: str) -> tuple[str, PodShape, int]:
    """The job's training workers packed into pods of the values' shape: (group, shape, pods)."""
    res = spec.resources
    shape = values.gpu_workers if res.use_gpu else values.cpu_workers
    per_pod = shape.gpus if res.use_gpu else max(1, int(shape.cpu // res.cpus_per_worker))
    if res.use_gpu and per_pod < 1:
        raise SpecError(source, "resources.use_gpu", "the values' gpu_workers pods have no GPUs (gpus: 0)")
    if res.cpus_per_worker * min(per_pod, res.num_workers) > shape.cpu:
        reason = f"{per_pod} workers x {res.cpus_per_worker} CPUs do not fit a {shape.cpu}-CPU pod of the values"
        raise SpecError(source, "resources.cpus_per_worker", reason)
    return ("gpu" if res.use_gpu else "cpu"), shape, math.ceil(res.num_workers / per_pod)


def _require_shared(spec: JobSpec, source: str) -> None:
    """Pods share no disk: every location must be a URI or a mount the spec declares shared."""
    for key, location in spec.locations().items():
        if not spec.storage.is_shared(location):
            reason = (
                f"{location} is a local path, and the pods of a Kubernetes cluster share no disk: use a URI "
                "(s3://..., or ${GEOMOE_STORAGE} with env.GEOMOE_STORAGE in the values), or declare a volume "
                "every pod mounts: storage.shared_mounts"
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
    _require_shared(spec, source)
    group, shape, pods = _worker_group(spec, values, source)
    command = ["geomoe", "run", _relative_to_repo(job_path)]
    for override in overrides or []:
        command += ["--set", override]
    return {
        "apiVersion": API_VERSION,
        "kind": "RayJob",
        "metadata": _metadata(spec.name, values),
        "spec": {
            "entrypoint": shlex.join(command),
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 3600,
            "rayClusterSpec": cluster_spec(values, {group: (shape, pods)}),
        },
    }


def ray_service(config_path: str | Path, values: K8sValues, name: str = "geomoe-serve") -> dict[str, Any]:
    """A RayService running a Serve config (serve/*.yaml) unchanged, on GPU workers autoscaled by Serve's
    replicas; a retriever's ``token_env`` is filled from the values' Secret, never written here."""
    from geomoe.serving.config import check_serve_schema

    raw = check_serve_schema(config_path)
    token_envs = sorted({a["args"]["token_env"] for a in raw["applications"] if (a.get("args") or {}).get("token_env")})
    secret = values.serve_token_secret
    extra = [{"name": e, "valueFrom": {"secretKeyRef": {"name": secret, "key": "token"}}} for e in token_envs]
    groups = {"gpu": (values.gpu_workers, max(1, values.gpu_workers.min_replicas))}
    return {
        "apiVersion": API_VERSION,
        "kind": "RayService",
        "metadata": _metadata(name, values),
        "spec": {
            "serveConfigV2": yaml.safe_dump(raw, sort_keys=False),
            "rayClusterConfig": cluster_spec(values, groups, _env(values, extra)),
        },
    }


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2, runtimeEnvYAML) as literal blocks, readable in the manifest."""


def _text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)


_Dumper.add_representer(str, _text)
_Dumper.ignore_aliases = lambda self, data: True  # type: ignore[method-assign]  # plain YAML, no &id001 anchors


def to_yaml(manifest: dict[str, Any]) -> str:
    return yaml.dump(manifest, Dumper=_Dumper, sort_keys=False)
