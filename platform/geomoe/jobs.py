"""Run a JobSpec's stages in order on the Ray cluster the spec names (or a local one)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from geomoe.config import JobSpec
from geomoe.io import write_json_atomic

log = logging.getLogger(__name__)


def run_job(spec: JobSpec) -> dict[str, Any]:
    """Run every stage of ``spec``; return {stage: result}. Results are also saved under the run folder."""
    run_dir = Path(spec.output_root) / spec.name
    run_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(run_dir / "spec.json", spec.model_dump(mode="json"))
    results: dict[str, Any] = {}
    for stage in spec.stages:
        log.info("stage %s", stage)
        if stage == "synth":
            from geomoe.data.synthgeo import generate

            assert spec.data.synthesize is not None  # checked by JobSpec validation
            results["synth"] = generate(Path(spec.data.root).parent, spec.data.synthesize)
        elif stage == "prepare":
            from geomoe.pipelines.prepare import prepare

            results["prepare"] = prepare(spec)
    write_json_atomic(run_dir / "results.json", results)
    return results
