"""Planted-effect worlds and the calibration table, without Ray: each knob plants only its own premise, the plan
sweeps each world once with every row its mechanisms compare, and the table scores detections and false alarms from the
trials' per-query values as the sweep report does."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from geomoe.core.config import SynthSpec
from geomoe.core.data.synthgeo import generate
from geomoe.core.data.synthgeo.captions import FILLERS
from geomoe.core.data.synthgeo.scene import sample_building, twin_of
from geomoe.core.data.synthgeo.tiles import CELL_KINDS, cell_kinds, with_cell_kinds
from geomoe.core.errors import ExperimentError, SpecError
from geomoe.core.ownership import Claim, claim_dir
from geomoe.core.storage import write_json_atomic
from geomoe.core.sweep import VARIANT, calibration, grid_points, load_sweep, trial_key
from geomoe.core.sweep.tables import RESULT_FILE, write_per_query

REPO = Path(__file__).resolve().parents[2]
ABLATION = REPO / "search_spaces" / "pe_moe_ablation.yaml"
SMALL = {"train_buildings": 4, "test_buildings": 2, "localization_train": 0, "localization_val": 0}


def _world(tmp: Path, name: str, **planted: float) -> Path:
    out = tmp / name
    generate(out, SynthSpec(**SMALL, localization_test=0, planted=planted))
    return out / "geotext"


def _files(root: Path, pattern: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(pattern))}


def _captions(root: Path, name: str) -> list[str]:
    return [
        c
        for e in json.loads((root / name).read_text())
        for c in (e["caption"] if isinstance(e["caption"], list) else [e["caption"]])
    ]


# The GeoText layout of a 4 + 2 building default world as synthgeo wrote it before planted effects existed
# (commit e6697c3): the default strengths must give it byte for byte.
DEFAULT_WORLD_DIGEST = "117684fb05fff26f8a8fdadc8234ef9b"


def test_the_default_strengths_write_synthgeo_as_it_always_was(tmp_path: Path) -> None:
    out = tmp_path / "w"
    generate(out, SynthSpec(**SMALL, localization_test=0))
    digest = hashlib.sha256()
    for path in sorted((out / "geotext").rglob("*")):
        if path.is_file() and path.suffix != ".parquet":
            digest.update(str(path.relative_to(out)).encode())
            digest.update(path.read_bytes())
    assert digest.hexdigest()[:32] == DEFAULT_WORLD_DIGEST


def test_each_knob_plants_its_own_premise_and_nothing_else(tmp_path: Path) -> None:
    default = _world(tmp_path, "default")
    conflict = _world(tmp_path, "conflict", platform_conflict=1.0)
    aligned = _world(tmp_path, "no_gap", caption_gap=0.0)
    images = {"satellite": "images/*/*/[0-9]*.jpg", "drone": "images/*/*/image-*", "ground": "images/*/*/street-*"}
    # platform conflict: the satellite shows what captions say; drone roofs and ground facades are repainted
    assert _files(conflict, images["satellite"]) == _files(default, images["satellite"])
    for platform in ("drone", "ground"):
        changed = [
            k for k, v in _files(conflict, images[platform]).items() if _files(default, images[platform])[k] != v
        ]
        assert len(changed) == len(_files(default, images[platform]))  # every building is conflicted at strength 1
    for name in ("train.json", "test_951_version.json"):
        assert _captions(conflict, name) == _captions(default, name)  # captions still name the true colours
    # caption gap 0: the same pixels and test queries; training captions worded like queries, without filler
    assert _files(aligned, "images/**/*.j*") == _files(default, "images/**/*.j*")
    assert _captions(aligned, "test_951_version.json") == _captions(default, "test_951_version.json")
    filler = [c for c in _captions(default, "train.json") if any(f in c for f in FILLERS)]
    assert len(filler) == len(_captions(default, "train.json"))
    assert not any(f in c for c in _captions(aligned, "train.json") for f in FILLERS)
    assert all(c.startswith(("satellite view", "top-down", "drone view", "ground photo", "street view")) or "drone" in c
               for c in _captions(aligned, "train.json"))  # fmt: skip
    # query cue 0: the same pixels and training captions; no test query names a platform or what only one shows
    uncued = _world(tmp_path, "no_cue", query_platform_cue=0.0)
    assert _files(uncued, "images/**/*.j*") == _files(default, "images/**/*.j*")
    assert _captions(uncued, "train.json") == _captions(default, "train.json")
    words = {w for c in _captions(uncued, "test_951_version.json") for w in c.replace(",", " ").split()}
    assert not words & {"satellite", "top-down", "drone", "street", "ground", "entrance", "sign", "footprint", "road"}


def test_attribute_twins_copy_a_building_but_the_colours_each_platform_shows(tmp_path: Path) -> None:
    default, twins = _world(tmp_path, "default"), _world(tmp_path, "twins", attribute_twins=1.0)
    manifest = json.loads((tmp_path / "twins" / "synthgeo.json").read_text())["counts"]["geotext"]
    assert (manifest["train"]["twins"], manifest["test"]["twins"]) == (2, 1)  # the second of each pair (4 + 2)
    default_manifest = json.loads((tmp_path / "default" / "synthgeo.json").read_text())
    assert default_manifest["counts"]["geotext"]["train"]["twins"] == 0
    assert "attribute_twins" not in default_manifest["spec"]["planted"]  # a world from before the knob is reused
    # the first of each pair is the default world's, pixel for pixel and word for word
    for first in ("0001", "0003", "0005"):
        assert _files(twins, f"images/*/{first}/*") == _files(default, f"images/*/{first}/*")
    captions = {
        world: {e["image_id"]: e["caption"] for name in ("train.json", "test_951_version.json")
                for e in json.loads((root / name).read_text())}
        for world, root in (("default", default), ("twins", twins))
    }  # fmt: skip
    assert {k: v for k, v in captions["twins"].items() if k.startswith("0001/")} == {
        k: v for k, v in captions["default"].items() if k.startswith("0001/")
    }
    # a twin: the original's building but roof colour and facade, each another than the original's
    original = sample_building("0005", np.random.default_rng([0, 5]))
    twin = twin_of(original, "0006", np.random.default_rng(1))
    assert twin.roof_color != original.roof_color and twin.facade != original.facade
    same = {f for f in original.__dataclass_fields__ if f not in ("building_id", "roof_color", "facade")}
    assert all(getattr(twin, f) == getattr(original, f) for f in same)
    gallery = pq.read_table(twins / "gallery_captions.parquet").to_pylist()  # the scene graph's own captions
    described = {r["image_id"]: r["caption"] for r in gallery}
    satellite = [described["0005/0005.jpg"].split(), described["0006/0006.jpg"].split()]
    assert len(satellite[0]) == len(satellite[1]) and sum(a != b for a, b in zip(*satellite, strict=True)) == 1
    for view in ("image-01.jpeg", "street-01.jpg"):  # the drone shows roof and facade, the ground the facade
        assert described[f"0005/{view}"] != described[f"0006/{view}"]


def test_cell_kinds_repaint_each_tile_cell_by_its_kind_and_leave_the_queries(tmp_path: Path) -> None:
    sizes = {"train_buildings": 1, "test_buildings": 1, "localization_train": 3, "localization_val": 0}
    generate(tmp_path / "plain", SynthSpec(**sizes, localization_test=0))
    generate(tmp_path / "kinds", SynthSpec(**sizes, localization_test=0, planted={"cell_kinds": 1.0}))
    plain, kinds = (tmp_path / world / "cvogl" / "CVOGL_DroneAerial" for world in ("plain", "kinds"))
    assert _files(kinds, "query/*") == _files(plain, "query/*")  # the drone sees true colours
    tiles = [_files(world, "satellite/*") for world in (plain, kinds)]
    assert tiles[0].keys() == tiles[1].keys() and all(tiles[0][k] != tiles[1][k] for k in tiles[0])
    assert set(cell_kinds(1.0, np.random.default_rng(0))) <= set(CELL_KINDS[1:])
    assert cell_kinds(0.0, np.random.default_rng(0)) == ["plain"] * 9
    # each cell through its own kind's transform, the others as they were
    colours = np.random.default_rng(1).integers(0, 256, size=(30, 30, 3), dtype=np.uint8)
    shown = np.asarray(with_cell_kinds(Image.fromarray(colours), ["plain"] * 4 + ["inverted rotated"] + ["plain"] * 4))
    assert (shown[10:20, 10:20] == 255 - colours[10:20, 10:20][..., [1, 2, 0]]).all()
    outside = np.ones((30, 30), dtype=bool)
    outside[10:20, 10:20] = False
    assert (shown[outside] == colours[outside]).all()


def test_the_plan_sweeps_each_world_once_with_every_row_its_mechanisms_compare() -> None:
    sweep, base = load_sweep(ABLATION, quickstart=True)
    runs = calibration.plan(sweep, base)
    assert [(r.mechanism.name, r.world, r.strength) for r in runs] == [
        (name, world, strength)
        for name in (
            "textual domain alignment",
            "platform experts",
            "platform experts routed",
            "dynamic gating",
            "hard-negative mining",
        )
        for world, strength in (("planted", 1.0), ("null", 0.0))
    ]
    default, gap, conflict, cue, twins = runs[0], runs[1], runs[2], runs[7], runs[8]  # the five worlds
    assert runs[3].sweep is runs[6].sweep is default.sweep and runs[4].sweep is conflict.sweep  # shared
    assert [r.sweep.name for r in (default, gap, conflict, cue, twins)] == [
        "default",
        "caption_gap-0",
        "platform_conflict-1",
        "query_platform_cue-0",
        "attribute_twins-1",
    ]  # named by the knobs away from synthgeo's defaults
    # hard-negative mining has no paper row: row 4 against itself less stage 2's mined negatives, a variant of its own
    assert runs[9].sweep is default.sweep
    less = "dynamic_gating-without-hard-negative-mining"
    assert twins.rows == ("#4 + dynamic gating w/o hard-negative mining", "#4 + dynamic gating")
    assert twins.sweep.variants == {"dynamic_gating": ["model.fusion=dynamic"],
                                    less: ["model.fusion=dynamic", "train.stage2_hard_weight=0"]}  # fmt: skip
    assert [r.label for r in twins.sweep.paper.rows] == ["#4 + dynamic gating"] and list(twins.aa_sweep.variants) == [
        less
    ]
    assert runs[4].rows == ("#2 + textual domain alignment", "#4 + dynamic gating")  # against row 2, not row 3
    assert default.rows == ("#1 unified w/o preprocessing", "#2 + textual domain alignment")
    # each world trains every row any mechanism compares there, once; the A/A sweep the rows compared against
    assert list(default.sweep.variants) == ["unified_raw", "unified_aligned", "static_ensemble", "dynamic_gating", less]
    assert list(default.aa_sweep.variants) == ["unified_raw", "unified_aligned", "static_ensemble", less]
    assert list(conflict.sweep.variants) == ["unified_aligned", "static_ensemble", "dynamic_gating"]
    assert list(conflict.aa_sweep.variants) == ["unified_aligned"]
    assert list(gap.sweep.variants) == ["unified_raw", "unified_aligned"] and list(gap.aa_sweep.variants) == [
        "unified_raw"
    ]
    assert list(cue.sweep.variants) == ["static_ensemble", "dynamic_gating"]
    assert default.sweep.seeds == [0, 1, 2] and default.aa_sweep.seeds == [3, 4, 5]
    distinct = {s.name: s for r in runs for s in r.sweeps}.values()
    assert sum(len(grid_points(s)) for s in distinct) == 66  # 90 when each mechanism swept its own rows
    assert [r.label for r in conflict.sweep.paper.rows] == [
        f"#{k} {row}"
        for k, row in ((2, "+ textual domain alignment"), (3, "+ static ensemble"), (4, "+ dynamic gating"))
    ]
    assert conflict.aa_sweep.name == conflict.sweep.name + "-aa"
    roots = [next(o for o in r.sweep.overrides if o.startswith("data.root=")) for r in runs]
    assert roots[0] == roots[3] == roots[5] == roots[6] == roots[9] and len(set(roots)) == 5  # the default is shared
    assert "data.synthesize.planted.platform_conflict=1.0" in conflict.sweep.overrides
    on_s3 = calibration.plan(sweep.model_copy(update={"output_root": "s3://bucket/sweeps"}), base)[2].sweep.overrides
    world = "s3://bucket/sweeps/pe_moe_ablation-quickstart-calibration/worlds/platform_conflict-1/"
    stored = [o for o in on_s3 if o.startswith(("data.synthesize.output_dir=", "data.root=", "preprocess.output_dir="))]
    assert [o.split("=", 1)[1].startswith(world) for o in stored] == [True] * 3  # the worlds go where outputs go
    # each world's tiny backbones are built from its own captions, in a local folder of its own beside the job's
    tiny = [o for o in on_s3 if o.startswith(("model.text.source=", "model.image.pretrained="))]
    world = "platform_conflict-1"
    local = f"runs/quickstart/tiny/pe_moe_ablation-quickstart-calibration/{world}"  # as relative as the job's
    assert tiny == [f"model.text.source={local}/text", f"model.image.pretrained={local}/image.pt"]
    quick = calibration.plan(sweep, base, quick=True)
    assert quick[0].sweep.seeds == [0] and quick[0].aa_sweep.seeds == [3]
    assert sum(len(grid_points(s)) for s in {s.name: s for r in quick for s in r.sweeps}.values()) == 22  # 30 unshared


def test_a_part_of_the_calibration_runs_its_mechanisms_own_worlds_in_folders_of_its_own() -> None:
    """``--only``: one mechanism's worlds and rows (6 trials at --quick, a quarter of the 22), renamed so the
    whole calibration's world sweeps, which train more rows, never meet a part's folders."""
    sweep, base = load_sweep(ABLATION, quickstart=True)
    part = calibration.selected(sweep, ["dynamic gating"])
    assert part.name == "pe_moe_ablation-quickstart-dynamic-gating"
    runs = calibration.plan(part, base, quick=True)
    assert [(r.mechanism.name, r.world) for r in runs] == [("dynamic gating", "planted"), ("dynamic gating", "null")]
    worlds = calibration.world_sweeps(runs)
    assert [s.name for s in worlds] == ["default", "default-aa", "query_platform_cue-0", "query_platform_cue-0-aa"]
    assert [list(s.variants) for s in worlds[::2]] == [["static_ensemble", "dynamic_gating"]] * 2
    assert sum(len(grid_points(s)) for s in worlds) == 6
    whole = calibration.location(sweep, REPO)
    assert calibration.location(part, REPO) != whole and not calibration.location(part, REPO).startswith(whole + "/")
    assert all(f"{part.name}-calibration/worlds/" in next(o for o in r.sweep.overrides if o.startswith("data.root="))
               for r in runs)  # fmt: skip
    # slugs work too, in any order: the spec's order is kept; a name it does not have is refused with the list
    both = calibration.selected(sweep, ["platform-experts-routed", "platform experts"])
    assert [m.name for m in both.calibration.mechanisms] == ["platform experts", "platform experts routed"]
    assert calibration.selected(sweep, []) is sweep
    with pytest.raises(SpecError, match="no mechanism \\['gating'\\]; it has \\['dynamic-gating'"):
        calibration.selected(sweep, ["gating"])


def test_smgeos_experts_are_calibrated_on_tile_cells_of_four_kinds() -> None:
    """A grid-swept ablation (SMGeo Table II): each world's sweep narrows the grid to the two rows' values."""
    sweep, base = load_sweep(REPO / "search_spaces" / "smgeo_experts.yaml", quickstart=True)
    planted, null = calibration.plan(sweep, base)
    assert (planted.sweep.name, null.sweep.name) == ("cell_kinds-0.75", "default")  # plain and 3 others, a quarter each
    assert planted.rows == ("2 experts", "4 experts") and planted.sweep.params["model.gmoe.experts"].grid == [2, 4]
    assert planted.aa_sweep.params["model.gmoe.experts"].grid == [2] and planted.aa_sweep.seeds == [3, 4, 5]
    assert "data.synthesize.planted.cell_kinds=0.75" in planted.sweep.overrides
    worlds = calibration.world_sweeps(calibration.plan(sweep, base, quick=True))
    assert sum(len(grid_points(s)) for s in worlds) == 6
    # the router's cells on the kinds' 3 x 3 layout, in every world and A/A sweep alike (the calibration's overrides)
    assert all("model.gmoe.grid=[3,3]" in s.overrides for s in worlds)
    assert "model.gmoe.grid=[3,3]" not in sweep.overrides  # the Table II sweep itself keeps its grid


def test_a_world_sweep_that_ran_other_trials_is_refused_not_mixed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune's restore keeps the grid a sweep started with: a world swept with other seeds (or for other mechanisms,
    whose rows it holds) would silently lack the trials this calibration compares."""
    from geomoe.on_ray.calibrate import run_calibration

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOMOE_STORAGE", raising=False)  # the sweep's output_root: here
    monkeypatch.setattr("geomoe.on_ray.calibrate._fit_worlds", lambda *_, **__: pytest.fail("a sweep ran"))
    sweep, base = load_sweep(ABLATION, quickstart=True)
    folder = calibration.location(sweep, tmp_path)
    claim_dir(folder, Claim("output_root", f"{sweep.name}-calibration", "calibrate"))
    quick = calibration.world_sweeps(calibration.plan(sweep, base, quick=True))[-1]  # the last: none runs first
    keys = [trial_key(p) for p in grid_points(quick)]
    write_json_atomic(f"{folder}/{quick.name}/sweep.json", {"sweep": quick.model_dump(mode="json"), "expected": keys})
    with pytest.raises(ExperimentError, match=r"ran trials .* this calibration asks for"):
        run_calibration(ABLATION, quickstart=True, resume=True)  # all three seeds: refused before Ray starts


def test_sweeps_that_prepare_with_other_seeds_never_share_a_prepared_folder(tmp_path: Path) -> None:
    """Preparing is seeded (augmented copies) and each sweep prepares with its first seed: a world's A/A sweep in
    its world's folder would replace the preparation the world's own trials read (measured: 4 of 6 trials of one
    mechanism changed when every world was prepared before any trained). Every trial's folders, a variant's own
    prepared folder included, belong to one sweep's first seed."""
    from geomoe.core.sweep import trial_spec

    sweep, base = load_sweep(ABLATION, quickstart=True)
    owners: dict[str, int] = {}
    for world_sweep in calibration.world_sweeps(calibration.plan(sweep, base)):
        for point in grid_points(world_sweep):
            spec = trial_spec(world_sweep, base, point, str(tmp_path / world_sweep.name), tmp_path)
            folders = [spec.preprocess.output_dir] + ([spec.refine.output_dir] if spec.refine else [])
            for folder in folders:
                assert owners.setdefault(folder, world_sweep.seeds[0]) == world_sweep.seeds[0], (folder, point)
    # the raw row prepares apart (no refinement, no copies): default 4 folders, caption_gap-0 3 (its A/A trains the
    # raw row only), the three others 2
    assert len(owners) == 4 + 3 + 2 * 3


def test_a_calibration_refuses_an_asha_scheduler() -> None:
    sweep, base = load_sweep(ABLATION, quickstart=True)
    with_asha = sweep.model_copy(update={"scheduler": {"max_t": 5, "grace_period": 2, "reduction_factor": 2}})
    with pytest.raises(SpecError, match="remove the scheduler"):
        calibration.plan(with_asha, base)


def test_a_calibration_that_ran_is_continued_only_with_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """All world sweeps train in one Tune run: run again without --resume, a world that holds trials is not
    silently retrained or mixed; the refusal comes before Ray starts."""
    from geomoe.on_ray.calibrate import run_calibration

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOMOE_STORAGE", raising=False)
    monkeypatch.setattr("geomoe.on_ray.calibrate.start_ray", lambda *_, **__: pytest.fail("Ray started"))
    sweep, base = load_sweep(ABLATION, quickstart=True)
    folder = calibration.location(sweep, tmp_path)
    claim_dir(folder, Claim("output_root", f"{sweep.name}-calibration", "calibrate"))
    ran = calibration.world_sweeps(calibration.plan(sweep, base, quick=True))[0]
    keys = [trial_key(p) for p in grid_points(ran)]
    claim_dir(f"{folder}/{ran.name}", Claim("output_root", ran.name, "sweep"))  # as that run claimed it
    write_json_atomic(f"{folder}/{ran.name}/sweep.json", {"sweep": ran.model_dump(mode="json"), "expected": keys})
    with pytest.raises(ExperimentError, match=r"holds this calibration already: add --resume"):
        run_calibration(ABLATION, quickstart=True, quick=True)


def test_a_resumed_calibration_refuses_other_trials_than_its_tune_run_started_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tune restores the trials a run started with: a world added since (a new mechanism) would never train, and
    a trial no longer planned would fail on every resume."""
    from geomoe.on_ray.calibrate import TRIALS_FILE, run_calibration

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GEOMOE_STORAGE", raising=False)
    monkeypatch.setattr("geomoe.on_ray.calibrate.tune_folder", lambda _: ("tune", None, True))  # restorable
    monkeypatch.setattr("geomoe.on_ray.calibrate.start_ray", lambda *_, **__: pytest.fail("Ray started"))
    sweep, base = load_sweep(ABLATION, quickstart=True)
    folder = calibration.location(sweep, tmp_path)
    claim_dir(folder, Claim("output_root", f"{sweep.name}-calibration", "calibrate"))
    planned = [f"{s.name}/{trial_key(p)}" for s in calibration.world_sweeps(calibration.plan(sweep, base, True))
               for p in grid_points(s)]  # fmt: skip
    write_json_atomic(f"{folder}/{TRIALS_FILE}", [*planned[1:], "gone/trial"])
    with pytest.raises(ExperimentError, match=rf"added since: \['{planned[0]}'\]; no longer planned: \['gone/trial'\]"):
        run_calibration(ABLATION, quickstart=True, resume=True, quick=True)


def _write_trial(experiment: Path, point: dict, hits: np.ndarray) -> None:
    values = {"R@1": hits, "R@5": hits, "R@10": hits, "Score": hits}
    run_dir = str(experiment / "trials" / trial_key(point))
    write_per_query(run_dir, values)
    metrics = {k: float(v.mean()) for k, v in values.items()}
    result = {"params": point, "status": "finished", "fingerprint": "f", "metrics": metrics}
    result |= {"query_sets": dict.fromkeys(values, "q")}
    write_json_atomic(f"{run_dir}/{RESULT_FILE}", result)


def _hits(rng: np.random.Generator, share: float, n: int = 2000) -> np.ndarray:
    return 100.0 * (rng.random(n) < share)


@pytest.mark.parametrize("world", ["planted", "null"])
@pytest.mark.parametrize(
    ("name", "better"), [("platform experts", "static_ensemble"), ("hard-negative mining", "dynamic_gating")]
)
def test_the_table_scores_a_planted_effect_and_stays_quiet_without_one(
    tmp_path: Path, world: str, name: str, better: str
) -> None:
    """A mechanism's rows on fake trials: its row beats the one compared against by 20 points in the planted world,
    ties in the null one; every seed's values are independent draws, so each A/A comparison has a true difference
    of 0. Hard-negative mining has no paper row: the full model against itself less stage 2's mined negatives,
    the paper's claim a direction without a number."""
    sweep, base = load_sweep(ABLATION, quickstart=True)
    run = next(r for r in calibration.plan(sweep, base) if r.mechanism.name == name and r.world == world)
    rng = np.random.default_rng(0)
    queries = rng.random(2000)  # the same queries for every trial: a query is easy or hard for every model
    experiments = []
    for world_sweep in run.sweeps:
        experiment = tmp_path / world_sweep.name
        claim_dir(experiment, Claim("output_root", "sweep", "sweep"))
        points = grid_points(world_sweep)
        saved = {"sweep": world_sweep.model_dump(mode="json"), "expected": [trial_key(p) for p in points]}
        write_json_atomic(experiment / "sweep.json", saved)
        for point in points:
            share = 0.5 if point[VARIANT] == better and world == "planted" else 0.3
            _write_trial(experiment, point, 100.0 * (queries < share + 0.05 * rng.standard_normal()))
        experiments.append(str(experiment))
    entries = calibration.analyse(run, *experiments)
    mechanism = [e for e in entries if e["comparison"] == "mechanism"]
    assert [e["metric"] for e in mechanism] == ["R@1", "R@5", "R@10", "Score"]
    assert {e["verdict"] for e in mechanism} == {"reproduced" if world == "planted" else "inconclusive"}
    assert {e["kind"] for e in mechanism} == {"planted" if world == "planted" else "null"}
    assert all(e["as_expected"] and e["ours"]["with_seeds"] for e in mechanism)
    aa = [e for e in entries if e["comparison"].startswith("A/A")]
    assert len(aa) == 4 and {e["kind"] for e in aa} == {"aa"} and all(e["paper_delta"] == 0 for e in aa)
    assert {e["verdict"] for e in aa} == {"inconclusive"}  # seed-to-seed spread of 5 points: counted, not called
    result = {"sweep": "s", "seeds": [0, 1, 2], "aa_seeds": [3, 4, 5], "entries": entries, "wall_s": 1.0}
    result |= {"metric": "R@1", "summary": calibration.summary(entries, "R@1")}
    text = calibration.markdown(result)
    assert text.count(f"| {name} |") == 8
    published = name == "platform experts"
    assert all((e["paper_delta"] is not None) == published and e["claimed"] == 1 for e in mechanism)
    assert ("| + (no number) |" in text) != published
    rates = result["summary"]
    assert rates["power"]["of"] == (4 if world == "planted" else 0) and rates["power_primary"]["of"] == (
        world == "planted"
    )
    assert rates["false_alarms"]["of"] == 4 and rates["false_alarms_primary"]["of"] == 1
    assert rates["null_detections"]["of"] == (0 if world == "planted" else 4)
    # the docs' table is computed again from the stored trials, not read from the result file
    calibration.write(str(tmp_path), result | {"runs": calibration.record([run])})
    assert calibration.markdown(calibration.rebuild(str(tmp_path))) == text == (tmp_path / "calibration.md").read_text()


def test_the_rates_count_what_they_say() -> None:
    def entry(kind: str, verdict: str, metric: str = "R@1", world: int = 0) -> dict:
        return {"kind": kind, "verdict": verdict, "metric": metric, "world_data": f"w{world}", "comparison": "c"}

    entries = [entry("planted", "reproduced")] * 3 + [entry("planted", "inconclusive", "R@10")]
    entries += [entry("aa", "inconclusive", world=w) for w in range(19)] + [entry("aa", "not reproduced", "R@10")]
    entries += [entry("aa", "inconclusive", world=3)]  # a second mechanism on world 3: the same A/A, counted once
    entries += [entry("null", "not reproduced"), entry("null", "reproduced", "R@10"), entry("null", "no paired values")]
    rates = calibration.summary(entries, "R@1")
    assert rates["power"] | {"interval": None} == {"count": 3, "of": 4, "percent": 75.0, "interval": None}
    assert (rates["power_primary"]["count"], rates["power_primary"]["of"]) == (3, 3)
    assert (rates["false_alarms"]["count"], rates["false_alarms"]["of"]) == (1, 20)
    assert (rates["false_alarms_primary"]["count"], rates["false_alarms_primary"]["of"]) == (0, 19)
    lo, hi = rates["false_alarms"]["interval"]
    assert 0.8 < lo < 1.0 and 23 < hi < 26  # Wilson: 1/20 = 5% has [0.9, 23.6]
    # a null world's rows may differ for other reasons: only a detection of the mechanism counts against it
    assert (rates["null_detections"]["count"], rates["null_detections"]["of"]) == (1, 2)


def test_each_verdict_sits_beside_its_own_mechanisms_calibration() -> None:
    """Row 4 is calibrated twice (gating against row 3, the routed experts against row 2): its verdict against row 3
    shows gating's worlds only; a row without a calibration says so."""
    from geomoe.core.stats import Difference

    def entry(row: str, against: str, world: str, comparison: str, verdict: str, delta: float) -> dict:
        ours = {"delta": delta, "lo": delta - 1, "hi": delta + 1, "with_seeds": False, "se": 0.5}
        return {"row": row, "against": against, "world": world, "comparison": comparison, "metric": "R@1",
                "verdict": verdict, "ours": ours}  # fmt: skip

    result = {"entries": [
        entry("#4", "#3", "planted", "mechanism", "reproduced", 4.0),
        entry("#4", "#3", "null", "mechanism", "inconclusive", 0.5),
        entry("#4", "#3", "null", "A/A: #3", "inconclusive", -0.2),
        entry("#4", "#2", "planted", "mechanism", "not reproduced", -9.0),
    ]}  # fmt: skip
    gating = {"row": "#4", "previous": "#3", "metric": "R@1", "paper_delta": 3.89, "verdict": "inconclusive"}
    alignment = {"row": "#2", "previous": "#1", "metric": "R@1", "paper_delta": 6.55, "verdict": "not run"}
    verdicts = [gating | {"ours": Difference(1.0, -1.0, 3.0)}, alignment | {"ours": None}]
    lines = calibration.beside_verdicts(verdicts, result).splitlines()
    cells = "#4 | R@1 | +3.89 | +1.00 [-1.00, +3.00] | inconclusive"
    assert lines[2] == f"| {cells} | reproduced +4.00 | inconclusive +0.50 | inconclusive -0.20 |"
    assert lines[3].endswith("| - | not run | not calibrated | not calibrated | not calibrated |")
