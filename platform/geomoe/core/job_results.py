"""Typed hand-offs between stages (core, no Ray): a trained stage's kept checkpoint, and a job's stage results.

What stages pass on is typed here; what they write to disk stays JSON (``stage<N>.json``, ``results.json``), so a
run folder written before these types existed still reads back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from geomoe.core import storage

BY_SEED = "by_seed"  # in a train stage's results with seeds: seed -> that seed's {model, baselines...}


@dataclass(frozen=True)
class Checkpoint:
    """The checkpoint a training stage kept, where it is (a path or URI), and what the stage reported.

    ``metrics``: the last epoch's report; ``best``: the kept epoch's report when the stage keeps its best epoch
    by a metric (else None: the last epoch is the kept one); ``kept``: every checkpoint Ray Train still holds;
    ``fingerprint``: what the stage was trained from (JobSpec.stage_fingerprint).
    """

    location: str
    metrics: dict[str, Any]
    fingerprint: str
    best: dict[str, Any] | None = None
    kept: list[dict[str, Any]] = field(default_factory=list)

    @property
    def epoch(self) -> int:
        return int((self.best or self.metrics)["epoch"])

    @property
    def reported(self) -> dict[str, Any]:
        """The kept epoch's report."""
        return self.best or self.metrics

    def to_json(self) -> dict[str, Any]:
        record: dict[str, Any] = {"checkpoint": self.location, "metrics": self.metrics, "fingerprint": self.fingerprint}
        if self.best is not None:
            record |= {"best": self.best, "kept": self.kept}
        return record

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Checkpoint:
        return cls(
            location=str(record["checkpoint"]),
            metrics=dict(record["metrics"]),
            fingerprint=str(record.get("fingerprint", "")),
            best=record.get("best"),
            kept=list(record.get("kept", [])),
        )

    def save(self, path: str) -> None:
        storage.write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str) -> Checkpoint | None:
        record = storage.read_json_if_exists(path)
        return None if record is None else cls.from_json(dict(record))


@dataclass
class JobResults:
    """A job's stage results in the order the stages ran (each stage's JSON output), and the time each took."""

    outputs: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def trained_checkpoint(self) -> str | None:
        """The checkpoint of the job's own model from its ``train`` stage (None without one)."""
        trained = self.outputs.get("train")
        return None if trained is None else str(trained["model"]["checkpoint"])

    def to_json(self) -> dict[str, Any]:
        """What ``results.json`` holds: {stage: output}."""
        return dict(self.outputs)
