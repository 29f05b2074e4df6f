"""Serve config files (serve/*.yaml) checked before anything starts: Ray Serve's own schema, then our builder's
args (``ServeSpec``: files present, keys valid), so a bad config fails in a second with the file and key named."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomoe.core.errors import SpecError

BUILDER = "geomoe.on_ray.serving.app:build_app"
DEPLOYMENTS = ("QueryEncoder", "GallerySearch", "Reranker", "Captioner", "Localizer", "Ingress")


def check_serve_schema(path: str | Path) -> dict[str, Any]:
    """The config as a dict, checked against Ray Serve's schema and our deployment names (not the files its args
    name: a config for a cluster names the cluster's paths); SpecError naming the file and the key."""
    from pydantic import ValidationError
    from ray.serve.schema import ServeDeploySchema

    from geomoe.core.config.parsing import read_yaml

    source = str(path)
    if not Path(path).is_file():
        raise SpecError(source, "", "Serve config not found")
    raw = read_yaml(path)
    try:
        ServeDeploySchema.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        raise SpecError(source, ".".join(str(p) for p in first["loc"]), first["msg"]) from err
    for i, app in enumerate(raw.get("applications", [])):
        _check_deployments(source, f"applications[{i}]", app)
    return dict(raw)


def check_serve_config(path: str | Path) -> list[str]:
    """Lines describing each application (its route and deployments); SpecError naming the file and the key."""
    from geomoe.on_ray.serving.schemas import serve_spec

    source = str(path)
    raw = check_serve_schema(path)
    lines: list[str] = []
    for i, app in enumerate(raw.get("applications", [])):
        key = f"applications[{i}].args"
        if app.get("import_path") == BUILDER:
            spec = serve_spec(app.get("args") or {}, f"{source}: {key}")
            lines.append(_describe(app, spec.model_dump()))
        else:
            lines.append(f"{app.get('name')}: {app.get('import_path')} at {app.get('route_prefix', '/')}")
    return lines


def _check_deployments(source: str, key: str, app: dict[str, Any]) -> None:
    """Ray's schema ignores unknown deployment keys (a misspelt autoscaling_config would silently not apply)."""
    from ray.serve.schema import DeploymentSchema

    known = set(DeploymentSchema.model_fields)
    for j, deployment in enumerate(app.get("deployments") or []):
        unknown = sorted(set(deployment) - known)
        if unknown:
            raise SpecError(source, f"{key}.deployments[{j}]", f"unknown deployment option(s) {unknown}")
        if app.get("import_path") != BUILDER:
            continue
        predictors = ((app.get("args") or {}).get("predictors") or {}) if isinstance(app.get("args"), dict) else {}
        expected = [*DEPLOYMENTS, *(f"Predictor-{name}" for name in predictors)]  # one per predictors entry
        if deployment.get("name") not in expected:
            reason = f"no deployment {deployment.get('name')!r} in the retriever; expected one of {expected}"
            raise SpecError(source, f"{key}.deployments[{j}].name", reason)


def _describe(app: dict[str, Any], args: dict[str, Any]) -> str:
    endpoints = ["/search", "/info", "/healthz"] + (["/localize"] if args.get("localizer") else [])
    endpoints += [f"/predict/{name}" for name in args.get("predictors") or {}]
    extras = [name for name in ("rerank", "captioner", "localizer") if args.get(name)]
    deployments = ", ".join(d["name"] for d in app.get("deployments", []))
    return (
        f"{app.get('name')}: {' '.join(endpoints)} at {app.get('route_prefix', '/')}; index {args['index']}; "
        f"with {', '.join(extras) or 'search only'}; deployments configured: {deployments or 'defaults'}"
    )
