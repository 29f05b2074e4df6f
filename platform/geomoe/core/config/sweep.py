"""Sweep specs: a base job, the parameters and variants to vary, the paper's rows to compare with."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from geomoe.core.config.parsing import Strict


class SearchSpec(Strict):
    """How one swept parameter varies: exactly one of ``grid`` (every value), ``choice`` (sampled),
    ``uniform`` or ``loguniform`` ([low, high], sampled)."""

    grid: list[Any] | None = None
    choice: list[Any] | None = None
    uniform: tuple[float, float] | None = None
    loguniform: tuple[float, float] | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SearchSpec:
        given = [k for k in ("grid", "choice", "uniform", "loguniform") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of grid, choice, uniform, loguniform (got {given or 'none'})")
        for name in ("uniform", "loguniform"):
            bounds = getattr(self, name)
            if bounds is not None and (bounds[0] >= bounds[1] or (name == "loguniform" and bounds[0] <= 0)):
                raise ValueError(f"{name} needs [low, high] with low < high (and low > 0 for loguniform)")
        if self.grid == [] or self.choice == []:
            raise ValueError("grid and choice need at least one value")
        return self


class AshaSpec(Strict):
    """Early stopping of poor trials (ASHA) on a metric every epoch reports (SMGeo: val_acc50)."""

    max_t: int = Field(ge=1, description="epochs of the longest trial")
    grace_period: int = Field(1, ge=1)
    reduction_factor: float = Field(2.0, gt=1)


class PaperRow(Strict):
    """A published row: the swept values it corresponds to, and its numbers (metric name -> value)."""

    label: str
    params: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, float]
    note: str = Field(
        "",
        description="a caveat on the printed numbers (a likely typo, a conflict with the text): "
        "printed under the report's table; the numbers stay as the paper prints them",
    )


class PaperSpec(Strict):
    source: str = Field(description="where the numbers come from, e.g. 'SMGeo Table II (val)'")
    rows: list[PaperRow]
    min_change: float = Field(
        0.0,
        ge=0,
        description="a change between two published rows smaller than this (points) reads as no change in the "
        "verdicts (the tables are rounded; 85.25 -> 85.26 is not a claim)",
    )


class CalibratedMechanism(Strict):
    """One ablated mechanism and its planted world: the paper row that adds the mechanism (compared, as in the
    verdicts, with the row before it, with ``against``, or with itself less the mechanism: ``without``) and the
    synthgeo knob that makes its premise true (``planted``) or false (``unplanted``: the null world; a YAML key
    ``null`` would read as None)."""

    name: str
    row: str = Field(description="the label of the paper row that adds the mechanism (or has it: ``without``)")
    against: str | None = Field(
        None, description="the paper row it is compared with (default: the row before it, as in the verdicts)"
    )
    without: list[str] = Field(
        default_factory=list,
        description="overrides that take the mechanism out of ``row``, for a mechanism the paper claims but no table "
        "row ablates (stage 2's hard negatives): ``row`` is then compared with itself under them (a variant "
        "'<its variant>-without-<name>'), and the paper's claim is a direction (the sweep's mode) with no number",
    )
    knob: str = Field(pattern=r"^data\.synthesize\.planted\.[a-z_]+$", description="data.synthesize.planted.<effect>")
    planted: float = Field(gt=0, le=1, description="the knob in the planted world")
    unplanted: float = Field(0.0, ge=0, le=1, description="the knob in the null world, where the premise is false")

    @model_validator(mode="after")
    def _one_baseline(self) -> CalibratedMechanism:
        if self.without and self.against:
            raise ValueError("give `against` (another paper row) or `without` (the row less the mechanism), not both")
        return self


class CalibrationSpec(Strict):
    """``geomoe calibrate``: every mechanism's two rows swept on its planted and its null world on the sweep's seeds,
    and the row compared against again on ``aa_seeds`` (A/A comparisons: a configuration against itself)."""

    mechanisms: list[CalibratedMechanism] = Field(min_length=1)
    aa_seeds: list[int] = Field(
        description="seeds for the A/A repeats (none of the sweep's seeds); [] runs none (no false-alarm rate then "
        "but the null worlds')"
    )
    overrides: list[str] = Field(default_factory=list, description="applied to every world's sweep after the sweep's")


class SweepVariant(Strict):
    """The 2-core variant of a sweep (``--quickstart``): another base job and overrides; what else it gives
    (variants, params, num_samples, scheduler, max_concurrent) replaces the sweep's."""

    base: str
    overrides: list[str] = Field(default_factory=list)
    variants: dict[str, list[str]] | None = None
    params: dict[str, SearchSpec] | None = None
    num_samples: int | None = Field(None, ge=1)
    scheduler: AshaSpec | None = None
    max_concurrent: int | None = Field(None, ge=1)
    seeds: list[int] | None = None
    calibration: CalibrationSpec | None = None


class SweepSpec(Strict):
    """A Ray Tune sweep over a job spec: every trial is the base job with its overrides, the trial's variant
    (a named override set) and its parameter values, trained on Ray Train inside the trial.

    Paths (``base``) are relative to the sweep file's folder. ``metric`` is a name the trial reports (see
    the family's metrics); ``report_metrics`` are the table's columns.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    base: str
    overrides: list[str] = Field(default_factory=list)
    variants: dict[str, list[str]] = Field(default_factory=dict, description="named override sets, swept as a grid")
    params: dict[str, SearchSpec] = Field(default_factory=dict)
    metric: str
    mode: Literal["max", "min"] = "max"
    report_metrics: list[str] = Field(min_length=1)
    searcher: Literal["grid", "optuna"] = "grid"
    num_samples: int = Field(1, ge=1, description="grid: repeats of the grid; optuna: trials")
    seeds: list[int] = Field(
        default_factory=list,
        description="each configuration once per seed (the job's seed): more trials, packed like any other; the "
        "report gives mean ± std over seeds and the pooled interval",
    )
    scheduler: AshaSpec | None = None
    max_concurrent: int = Field(1, ge=1)
    trial_cpus: float = Field(0.5, gt=0, description="the trial's own process; its Train workers come on top")
    output_root: str = "runs/sweeps"
    paper: PaperSpec | None = None
    calibration: CalibrationSpec | None = Field(
        None, description="planted-effect worlds for the paper rows' mechanisms (geomoe calibrate; synthgeo jobs)"
    )
    quickstart: SweepVariant | None = None

    @model_validator(mode="after")
    def _searcher_fits(self) -> SweepSpec:
        if not self.params and not self.variants:
            raise ValueError("a sweep needs params or variants to vary")
        sampled = [k for k, p in self.params.items() if p.grid is None]
        if self.searcher == "grid" and sampled:
            raise ValueError(f"searcher grid takes grid values only; {sampled} are sampled: use searcher optuna")
        if self.searcher == "optuna" and (self.variants or len(sampled) < len(self.params)):
            raise ValueError("searcher optuna cannot take grid values or variants (Tune's OptunaSearch limit)")
        if self.seeds and self.searcher != "grid":
            raise ValueError("seeds: repeat seeds with searcher grid (a searcher draws its own trials)")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: {self.seeds} repeats a seed")
        trained = self.seeds or [0]  # without seeds, each configuration trains once with seed 0
        if self.calibration and set(self.calibration.aa_seeds) & set(trained):
            raise ValueError(f"calibration.aa_seeds {self.calibration.aa_seeds} must differ from the seeds {trained}")
        if "seed" in self.params:
            raise ValueError("params.seed: give seeds as the sweep's seeds list")
        swept_data = [k for k in self.params if k.split(".")[0] in ("data", "preprocess")]
        if swept_data:
            raise ValueError(f"sweep data or preprocess through variants, not params: {swept_data}")
        return self
