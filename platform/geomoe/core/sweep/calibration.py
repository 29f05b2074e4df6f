"""Calibration of a sweep's verdicts on planted-effect worlds (core, no Ray): can the sweep see an effect when
there is one, and does it stay quiet when there is none?

For each mechanism of ``sweep.calibration`` (a paper row and the synthgeo knob that plants its premise), the
mechanism's two rows (that row and the one before it, or ``against``, or the row less the mechanism: ``without``,
for a mechanism the paper claims but no table row ablates) are swept on two worlds: the planted one
(the premise true) and the null one (false), on the sweep's seeds; the row compared against runs again on
``aa_seeds``. From the finished trials, with the report's own machinery (seed pooling, paired intervals, verdicts):
- the mechanism's comparison on each world, against the paper's direction: on the planted world "reproduced" is a
  detection (power); on the null world a "reproduced" claims the mechanism where its premise is false (a null-world
  detection). Other outcomes there are not counted against the sweep: the two rows may still differ for reasons
  other than the premise (refining captions that need none, say), which the table shows;
- A/A comparisons: the row compared against, on the sweep's seeds against itself on ``aa_seeds``, on both worlds:
  the true difference is zero by construction, so anything but "inconclusive" is a false alarm. A 95% interval
  keeps their share near 5% only if it accounts for everything that varies between the two sides.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from geomoe.core import storage
from geomoe.core.config import SweepSpec, load_job
from geomoe.core.config.data import PlantedSpec
from geomoe.core.config.sweep import CalibratedMechanism, PaperRow, SearchSpec
from geomoe.core.errors import SpecError
from geomoe.core.stats import Difference, verdict
from geomoe.core.sweep import VARIANT
from geomoe.core.sweep.calibration_table import beside_verdicts as beside_verdicts  # the table, re-exported
from geomoe.core.sweep.calibration_table import markdown as markdown
from geomoe.core.sweep.calibration_table import summary as summary
from geomoe.core.sweep.tables import Configuration, compare, configurations, report_rows

WORLDS = ("planted", "null")
RESULT_JSON = "calibration.json"
RESULT_MD = "calibration.md"
WORLD_TRIAL = "world_trial"  # the one key of a calibration trial's Tune config: "<world sweep>/<trial key>"


@dataclass(frozen=True)
class WorldRun:
    """One mechanism on one world: its two rows (``rows``: the labels of the row compared against and of its own
    row), read from the world's sweep (every row any mechanism compares on that world, on the sweep's seeds) and
    its A/A sweep (every row compared against there, on ``aa_seeds``). Mechanisms on the same world share both:
    a configuration is trained once per world and seed, whoever compares it."""

    mechanism: CalibratedMechanism
    world: str
    strength: float
    rows: tuple[str, str]
    sweep: SweepSpec
    aa_sweep: SweepSpec | None  # None without A/A seeds

    @property
    def sweeps(self) -> list[SweepSpec]:
        return [self.sweep] + ([self.aa_sweep] if self.aa_sweep else [])

    def paper_rows(self) -> tuple[PaperRow, PaperRow]:
        """(the row compared against, the mechanism's row) with their paper numbers (none for a row less the
        mechanism: ``without``)."""
        by_label = {r.label: r for r in self.sweep.paper.rows} if self.sweep.paper else {}
        row = by_label[self.rows[1]]
        return unpublished_row(self.mechanism, row) if self.mechanism.without else by_label[self.rows[0]], row


def location(sweep: SweepSpec, root: Path) -> str:
    """The calibration's folder: <output_root>/<sweep name>-calibration (each world's sweep is inside it)."""
    return storage.absolute(storage.join(sweep.output_root, f"{sweep.name}-calibration"), root)


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def selected(sweep: SweepSpec, only: Sequence[str] = ()) -> SweepSpec:
    """The sweep calibrating just the mechanisms ``only`` names (names or their slugs; every one when empty), renamed
    ``<sweep>-<their slugs>``: a part has folders of its own, since a world's sweep trains one grid of rows and the
    whole calibration's would refuse (or its rows outnumber) a folder that ran a part's."""
    if not only:
        return sweep
    if sweep.calibration is None:
        raise SpecError(sweep.name, "calibration", "this sweep has no calibration section")
    known, wanted = {slug(m.name): m for m in sweep.calibration.mechanisms}, {slug(n) for n in only}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise SpecError(sweep.name, "calibration.mechanisms", f"no mechanism {unknown}; it has {sorted(known)}")
    kept = [name for name in known if name in wanted]  # in the spec's order
    part = sweep.calibration.model_copy(update={"mechanisms": [known[name] for name in kept]})
    return sweep.model_copy(update={"calibration": part, "name": "-".join([sweep.name, *kept])})


def unpublished_row(mechanism: CalibratedMechanism, row: PaperRow) -> PaperRow:
    """``row`` less the mechanism (its ``without`` overrides, as a variant of their own); no published numbers."""
    variant = f"{row.params.get(VARIANT)}-without-{slug(mechanism.name)}"
    return PaperRow(label=f"{row.label} w/o {mechanism.name}", params=row.params | {VARIANT: variant}, metrics={})


def _with_unpublished(sweep: SweepSpec) -> SweepSpec:
    """The sweep with a variant per ``without`` mechanism: its row's variant, then the overrides taking it out."""
    mechanisms = [m for m in (sweep.calibration.mechanisms if sweep.calibration else []) if m.without]
    rows = {r.label: r for r in (sweep.paper.rows if sweep.paper else [])}
    variants = dict(sweep.variants)
    for mechanism in mechanisms:
        row = rows.get(mechanism.row)
        if row is None or row.params.get(VARIANT) not in sweep.variants:
            raise SpecError(sweep.name, "calibration.mechanisms.without", "needs a paper row of the sweep's variants")
        variants[unpublished_row(mechanism, row).params[VARIANT]] = [
            *sweep.variants[row.params[VARIANT]],
            *mechanism.without,
        ]
    return sweep.model_copy(update={"variants": variants})


def _rows(sweep: SweepSpec, mechanism: CalibratedMechanism) -> tuple[PaperRow, PaperRow]:
    """(the row compared against, the mechanism's row): the row before it unless ``against`` names another, or
    the row less the mechanism (``without``)."""
    rows = sweep.paper.rows if sweep.paper else []
    labels = [r.label for r in rows]
    first = 0 if mechanism.without else 1
    if mechanism.row not in labels[first:]:
        where = "a paper row" + (" after the first" if first else "")
        raise SpecError(sweep.name, "calibration.mechanisms.row", f"{mechanism.row!r}: not {where}")
    at = labels.index(mechanism.row)
    if mechanism.without:
        return unpublished_row(mechanism, rows[at]), rows[at]
    if mechanism.against is None:
        return rows[at - 1], rows[at]
    if mechanism.against not in labels[:at]:
        raise SpecError(sweep.name, "calibration.mechanisms.against", f"{mechanism.against!r}: not a row before it")
    return rows[labels.index(mechanism.against)], rows[at]


def _narrowed(sweep: SweepSpec, rows: list[PaperRow]) -> dict[str, Any]:
    """The variants and grid values of just these rows (every swept key must be given by each row)."""
    swept = ([VARIANT] if sweep.variants else []) + list(sweep.params)
    missing = sorted({k for k in swept for r in rows if k not in r.params})
    if missing:
        raise SpecError(sweep.name, "paper.rows", f"calibrated rows must give every swept key; missing {missing}")
    variants = {k: v for k, v in sweep.variants.items() if k in [r.params.get(VARIANT) for r in rows]}
    params = {k: SearchSpec(grid=list(dict.fromkeys(r.params[k] for r in rows))) for k in sweep.params}
    return {"variants": variants, "params": params}


def world_of(planted: PlantedSpec) -> str:
    """A world's name: its knobs away from synthgeo's defaults (``caption_gap-0``), or ``default``; a knob added
    later leaves the names of worlds that do not turn it as they were."""
    defaults = PlantedSpec().model_dump()
    turned = [f"{k}-{v:g}" for k, v in planted.model_dump().items() if v != defaults[k]]
    return "_".join(turned) or "default"


def _world_folders(base_path: Path, overrides: list[str], sweep: SweepSpec) -> tuple[str, list[str], list[str]]:
    """The world's name, the overrides that give it its own synthgeo and prepared folders (the base job's layout
    kept), named by its planted knobs (``world_of``: two mechanisms whose worlds coincide share them), inside the
    calibration's folder: the sweep's storage, an object store on a cluster whose machines share no disk; and the
    overrides that give its A/A sweep prepared (and refined) folders of its own. Tiny random models, built from a
    world's own captions (the originals, which no seed changes), go to ``<sweep>-calibration/<world>`` in the folder
    of the base job's own (``FamilyModelSpec.tiny_models_in``).

    Why the A/A sweep prepares apart: preparing is seeded (the augmented copies), a sweep prepares with its first
    seed, and the A/A seeds are other seeds; in one folder the A/A sweep's preparation would replace the one the
    world's own trials train on, and which one a trial read would depend on the order the two were prepared in."""
    base = load_job(base_path, overrides)
    synth = base.data.synthesize
    if synth is None or synth.output_dir is None:
        raise SpecError(str(base_path), "data.synthesize", "calibration plants effects in synthgeo: the job needs it")
    try:
        inside = PurePosixPath(base.data.root).relative_to(PurePosixPath(synth.output_dir))
    except ValueError as err:
        raise SpecError(str(base_path), "data.root", "must lie inside data.synthesize.output_dir") from err
    world_name = world_of(synth.planted)
    world = storage.join(sweep.output_root, f"{sweep.name}-calibration", "worlds", world_name)
    data = [
        f"data.synthesize.output_dir={storage.join(world, 'data')}",
        f"data.root={storage.join(world, 'data', str(inside))}",
        *base.model.tiny_models_in(f"{sweep.name}-calibration/{world_name}"),  # local: weights load from local folders
    ]
    own, aa = ([f"preprocess.output_dir={storage.join(world, name)}"] for name in ("prepared", "prepared-aa"))
    if base.refine is not None:  # refined from the prepared captions: as seeded as they are
        own.append(f"refine.output_dir={storage.join(world, 'refined')}")
        aa.append(f"refine.output_dir={storage.join(world, 'refined-aa')}")
    return world_name, data + own, data + aa


def plan(sweep: SweepSpec, base_path: Path, quick: bool = False) -> list[WorldRun]:
    """Every mechanism's planted and null world, each world swept once: the rows its mechanisms compare on the
    sweep's seeds, and the rows they compare against on the A/A seeds; ``quick``: the first seed of each."""
    calibration = sweep.calibration
    if calibration is None:
        raise SpecError(sweep.name, "calibration", "this sweep has no calibration section")
    if sweep.scheduler is not None:  # one Tune run trains every world's trials: ASHA would stop some by others
        raise SpecError(sweep.name, "scheduler", "a calibration trains every trial to its end: remove the scheduler")
    names = [slug(m.name) for m in calibration.mechanisms]
    if len(set(names)) < len(names):
        raise SpecError(sweep.name, "calibration.mechanisms", f"two mechanisms share a name: {names}")
    sweep = _with_unpublished(sweep)
    worlds: dict[str, tuple[list[str], list[str], set[str], set[str]]] = {}  # name -> overrides (its A/A's), rows
    planned = []
    for mechanism in calibration.mechanisms:
        before, row = _rows(sweep, mechanism)
        pair = (before.label, row.label)
        for kind, strength in zip(WORLDS, (mechanism.planted, mechanism.unplanted), strict=True):
            overrides = [*sweep.overrides, *calibration.overrides, f"{mechanism.knob}={strength}"]
            world_name, folders, aa_folders = _world_folders(base_path, overrides, sweep)
            no_rows: tuple[set[str], set[str]] = (set(), set())
            world = ([*overrides, *folders], [*overrides, *aa_folders], *no_rows)
            _, _, rows, aa_rows = worlds.setdefault(world_name, world)
            rows.update(pair)
            aa_rows.add(before.label)
            planned.append((mechanism, kind, strength, pair, world_name))
    sweeps = {name: _world_sweeps(sweep, name, *world, quick) for name, world in worlds.items()}
    return [WorldRun(m, kind, strength, pair, *sweeps[name]) for m, kind, strength, pair, name in planned]


def _world_sweeps(
    sweep: SweepSpec,
    name: str,
    overrides: list[str],
    aa_overrides: list[str],
    rows: set[str],
    aa_rows: set[str],
    quick: bool,
) -> tuple[SweepSpec, SweepSpec | None]:
    """A world's sweep of ``rows`` on the sweep's seeds and its A/A sweep of ``aa_rows`` on the A/A seeds, with
    ``aa_overrides`` (its own prepared folders: ``_world_folders``). The trials are in the order of the sweep's
    variants, a row less a mechanism last. A grid sweep trains the product of the rows' values: rows that differ in
    several keys at once may add points no row names."""
    common = {
        "output_root": storage.join(sweep.output_root, f"{sweep.name}-calibration"),
        "overrides": overrides,
        "calibration": None,
        "quickstart": None,
    }
    ordered = [r for r in _every_row(sweep) if r.label in rows]
    main = _world_sweep(sweep, common | {"name": name, "seeds": main_seeds(sweep, quick)}, ordered)
    aa = aa_seeds(sweep, quick)
    if not aa:
        return main, None
    again = [r for r in ordered if r.label in aa_rows]
    return main, _world_sweep(sweep, common | {"name": f"{name}-aa", "seeds": aa, "overrides": aa_overrides}, again)


def _every_row(sweep: SweepSpec) -> list[PaperRow]:
    """Every row a calibration may compare: the paper's, each preceded by itself less each ``without`` mechanism
    of it."""
    mechanisms = [m for m in (sweep.calibration.mechanisms if sweep.calibration else []) if m.without]
    ordered = []
    for row in sweep.paper.rows if sweep.paper else []:
        ordered += [unpublished_row(m, row) for m in mechanisms if m.row == row.label]
        ordered.append(row)
    return ordered


def world_sweeps(runs: list[WorldRun]) -> list[SweepSpec]:
    """Every sweep the runs read, once (mechanisms on one world share its sweeps), in the plan's order."""
    return list({s.name: s for run in runs for s in run.sweeps}.values())


def _world_sweep(sweep: SweepSpec, update: dict[str, Any], rows: list[PaperRow]) -> SweepSpec:
    """The sweep narrowed to ``rows`` (their variants or grid values, and the published ones' numbers)."""
    published = [r for r in rows if sweep.paper and r in sweep.paper.rows]
    paper = sweep.paper.model_copy(update={"rows": published}).model_dump() if sweep.paper else None
    return SweepSpec.model_validate(sweep.model_dump() | update | _narrowed(sweep, rows) | {"paper": paper})


def main_seeds(sweep: SweepSpec, quick: bool = False) -> list[int]:
    seeds = sweep.seeds or [0]
    return seeds[:1] if quick else seeds


def aa_seeds(sweep: SweepSpec, quick: bool = False) -> list[int]:
    seeds = sweep.calibration.aa_seeds if sweep.calibration else []
    return seeds[:1] if quick else seeds


def _entry(
    run: WorldRun, comparison: str, metric: str, ours: Difference | None, claimed: float, published: bool = True
) -> dict[str, Any]:
    """One comparison's row; ``claimed``: the paper's change (0 for an A/A comparison; its sign alone when the
    paper gives no number: ``published`` false)."""
    found = verdict(claimed, ours) if ours is not None else "no paired values"
    if comparison != "mechanism":
        kind, as_expected = "aa", found == "inconclusive"  # the true difference is 0 by construction
    elif run.world == "planted":
        kind, as_expected = "planted", found == "reproduced"
    else:  # the premise is false, but the rows may still differ for other reasons: only a detection is wrong
        kind, as_expected = "null", found != "reproduced"
    return {
        "more_data": _more_data(ours, claimed) if kind == "planted" and not as_expected else None,
        "mechanism": run.mechanism.name,
        "row": run.mechanism.row,
        "against": run.rows[0],
        "world_data": _world_data(run.sweep),
        "world": run.world,
        "knob": run.mechanism.knob,
        "strength": run.strength,
        "comparison": comparison,
        "metric": metric,
        "paper_delta": round(claimed, 2) if published else None,
        "claimed": math.copysign(1.0, claimed) if claimed else 0.0,
        "ours": None if ours is None else asdict(ours),
        "verdict": found,
        "kind": kind,
        "as_expected": as_expected,
    }


def _one(configs: list[Configuration], row: PaperRow) -> Configuration | None:
    found = [c for c in configs if c.matches(row.params)]
    return found[0] if len(found) == 1 else None


def _world_data(sweep: SweepSpec) -> str:
    """The world's synthgeo folder (named by its planted knobs): two mechanisms on the same world share it."""
    key = "data.synthesize.output_dir="
    return next((o.removeprefix(key) for o in reversed(sweep.overrides) if o.startswith(key)), "")


def _more_data(ours: Difference | None, claimed: float) -> float | None:
    """By how much the standard error must shrink (squared) for a planted effect of the size measured, on the
    paper's side, to be seen 80% of the time: (2.8 SE / |delta|)^2, so about that many times the queries where
    the query term dominates, or the seeds where the spread between seeds does (a one-seed interval has no seed
    term: there it is a lower bound). None when there is no difference on the paper's side to see."""
    if ours is None or ours.se is None or ours.delta == 0 or (ours.delta > 0) != (claimed > 0):
        return None
    return round((2.8 * ours.se / abs(ours.delta)) ** 2, 1)


Read = Callable[[str], list[Configuration]]


def reader() -> Read:
    """A sweep folder's configurations (its finished trials' per-query values), each folder read once: the
    mechanisms on one world share its sweeps."""
    return functools.cache(lambda experiment: configurations(*report_rows(experiment)))


def analyse(
    run: WorldRun, experiment: str, aa_experiment: str | None = None, *, read: Read | None = None
) -> list[dict[str, Any]]:
    """The world's comparisons, from the two sweeps' finished trials: the mechanism (its row against the row
    before, on the sweep's seeds), then A/A (the row before on the sweep's seeds against itself on the A/A
    seeds). A configuration that did not finish gives "no paired values". ``read``: a ``reader()`` shared by the
    runs of one calibration."""
    read = read or reader()
    sweep = run.sweep
    before, row = run.paper_rows()
    published = not run.mechanism.without  # a row less a mechanism has no numbers: the claim is a direction
    metrics = [
        m for m in [sweep.metric, *sweep.report_metrics] if m in row.metrics and (m in before.metrics or not published)
    ]
    configs = read(experiment)
    a, b = _one(configs, row), _one(configs, before)
    entries = []
    for metric in dict.fromkeys(metrics):
        diff = compare(a, b, metric) if a and b else None
        claimed = _claimed(sweep, before, row, metric) if published else (1.0 if sweep.mode == "max" else -1.0)
        entries.append(_entry(run, "mechanism", metric, diff, claimed, published))
    if aa_experiment is None:
        return entries
    b_again = _one(read(aa_experiment), before)
    for metric in dict.fromkeys(metrics):
        diff = compare(b, b_again, metric) if b and b_again else None
        entries.append(_entry(run, f"A/A: {before.label}", metric, diff, 0.0))
    return entries


def _claimed(sweep: SweepSpec, before: PaperRow, row: PaperRow, metric: str) -> float:
    """The paper's change from ``before`` to ``row``; below ``min_change`` none, as in the sweep's verdicts."""
    change = row.metrics[metric] - before.metrics[metric]
    return change if abs(change) >= (sweep.paper.min_change if sweep.paper else 0.0) else 0.0


def record(runs: list[WorldRun]) -> list[dict[str, Any]]:
    """What ``rebuild`` needs to analyse the worlds again: each mechanism, world, strength, the two rows it
    compares and its world's sweeps' names (their folders, inside the calibration's)."""
    return [
        {
            "mechanism": r.mechanism.model_dump(),
            "world": r.world,
            "strength": r.strength,
            "rows": list(r.rows),
            "sweeps": [s.name for s in r.sweeps],
        }
        for r in runs
    ]


def rebuild(folder: str) -> dict[str, Any]:
    """The calibration's result computed again from the files in its folder: each world's sweeps (sweep.json, each
    trial's result and per-query values) analysed as ``geomoe calibrate`` did. The docs' table is this, tested."""
    saved = dict(storage.read_json(storage.join(folder, RESULT_JSON)))
    entries, read = [], reader()
    for done in saved["runs"]:
        experiments = [storage.join(folder, name) for name in done["sweeps"]]
        sweeps = [
            SweepSpec.model_validate(storage.read_json(storage.join(e, "sweep.json"))["sweep"]) for e in experiments
        ]
        mechanism = CalibratedMechanism.model_validate(done["mechanism"])
        # a calibration from before worlds were shared swept each mechanism's two rows alone, in order
        rows = done.get("rows") or [r.label for r in (sweeps[0].paper.rows if sweeps[0].paper else [])]
        again = sweeps[1] if len(sweeps) > 1 else None
        run = WorldRun(mechanism, done["world"], done["strength"], (rows[0], rows[1]), sweeps[0], again)
        entries += analyse(run, *experiments, read=read)
    return saved | {"entries": entries, "summary": summary(entries, saved.get("metric"))}


def write(folder: str, result: dict[str, Any]) -> str:
    """calibration.json and calibration.md into the calibration's folder; returns the Markdown."""
    text = markdown(result)
    storage.write_text_atomic(storage.join(folder, RESULT_JSON), json.dumps(result, indent=1, sort_keys=True) + "\n")
    storage.write_text_atomic(storage.join(folder, RESULT_MD), text)
    return text
