"""Never delete what geomoe did not write: the ownership rule of geomoe.core.storage, on local disk and on the S3 server
(127.0.0.1), at the level of the storage layer and of every stage that publishes a folder or file."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import pytest

from geomoe.core import ownership, storage
from geomoe.core.ownership import Claim, ForeignFilesError

CLAIM = Claim("preprocess.output_dir", "job", "prepare")
REFUSAL = r"^preprocess\.output_dir: .+ holds files geomoe did not write \(e\.g\. notes\.txt\); point it at an empty "


@pytest.fixture(params=["local", "s3"])
def root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A location to write under: a local folder, or a fresh bucket on the S3 server."""
    if request.param == "local":
        return str(tmp_path / "root")
    return str(request.getfixturevalue("s3_bucket")) + "/root"


def user_files(root: str) -> dict[str, str]:
    """A user's files: inside the target folder, in a sibling folder and in the parent."""
    files = {
        storage.join(root, "target", "notes.txt"): "my notes",
        storage.join(root, "sibling", "thesis.txt"): "my thesis",
        storage.join(root, "budget.csv"): "a,b\n1,2\n",
        storage.join(root, ".target.old", "kept.txt"): "a folder named like a publisher's leftovers",
    }
    for location, text in files.items():
        storage.write_text_atomic(location, text)
    return {location: digest(location) for location in files}


def digest(location: str) -> str:
    return hashlib.sha256(storage.read_bytes(location)).hexdigest()


def unchanged(saved: dict[str, str]) -> bool:
    return all(storage.is_file(loc) and digest(loc) == sha for loc, sha in saved.items())


def test_a_folder_holding_a_users_file_is_refused_before_any_work(root: str) -> None:
    saved = user_files(root)
    target = storage.join(root, "target")
    entered = []
    with pytest.raises(ForeignFilesError, match=REFUSAL), ownership.atomic_dir(target, CLAIM) as tmp:
        entered.append(tmp)  # the block (the stage's work) never runs
    assert entered == [] and unchanged(saved)
    with pytest.raises(ForeignFilesError, match=REFUSAL):
        ownership.claim_dir(target, CLAIM)
    assert unchanged(saved) and storage.list_files(target) == [("notes.txt", 8)]


def test_absent_empty_and_own_folders_are_written_and_replaced(root: str) -> None:
    saved = user_files(root)
    for name in ("new", "own"):
        folder = storage.join(root, name)
        for version in (b"1", b"2"):  # a rerun over geomoe's own output replaces it
            with ownership.atomic_dir(folder, CLAIM) as tmp:
                (tmp / "vectors.bin").write_bytes(version)
                (tmp / storage.MANIFEST).write_text("{}")
            assert storage.read_bytes(storage.join(folder, "vectors.bin")) == version
        record = storage.read_json(storage.join(folder, storage.OWNER_FILE))
        assert record == {"writer": "geomoe", "format": 1, "job": "job", "stage": "prepare", "key": CLAIM.key}
    assert unchanged(saved)  # siblings and the parent (and a folder named .target.old) survive publishing


def test_an_empty_folder_is_claimed_and_then_reused(root: str, tmp_path: Path) -> None:
    folder = storage.join(root, "empty")
    if storage.is_local(folder):
        Path(folder, "sub").mkdir(parents=True)  # empty folders only: nothing to lose
    ownership.claim_dir(folder, CLAIM)
    storage.write_text_atomic(storage.join(folder, "part-1.json"), "{}")  # a run killed midway
    ownership.claim_dir(folder, CLAIM)  # its rerun may resume or clear it
    assert ownership.foreign_file(folder) is None


def test_a_folder_filled_while_the_stage_worked_is_refused_at_publish(root: str) -> None:
    folder = storage.join(root, "index")
    with pytest.raises(ForeignFilesError, match=r"e\.g\. notes\.txt"), ownership.atomic_dir(folder, CLAIM) as tmp:
        (tmp / "vectors.bin").write_bytes(b"new")
        storage.write_text_atomic(storage.join(folder, "notes.txt"), "written meanwhile")
    assert storage.list_files(folder) == [("notes.txt", 17)]


def test_a_file_where_a_folder_goes_and_roots_are_refused(root: str, s3_bucket: str) -> None:
    storage.write_text_atomic(storage.join(root, "file"), "x")
    with pytest.raises(ForeignFilesError, match=r"index\.output_dir: .*/file is a file"):
        ownership.check_dir(storage.join(root, "file"), Claim("index.output_dir"))
    for where in (s3_bucket, s3_bucket + "/", "/", str(Path.home())):
        with pytest.raises(ForeignFilesError, match=r"(bucket|file system) root; name a folder"):
            ownership.check_dir(where, CLAIM)
        with pytest.raises(storage.StorageError, match="a root is never deleted"):
            storage.delete(where)


def test_a_forged_or_broken_owner_record_does_not_make_a_folder_ours(root: str) -> None:
    folder = storage.join(root, "target")
    storage.write_text_atomic(storage.join(folder, "notes.txt"), "my notes")
    for record in ("not json", json.dumps({"writer": "someone else"}), json.dumps([1])):
        storage.write_text_atomic(storage.join(folder, storage.OWNER_FILE), record)
        assert ownership.foreign_file(folder) is not None


def test_a_file_is_replaced_only_when_it_is_geomoes(root: str) -> None:
    from geomoe.core.data.caption_store import write_caption_store

    store = storage.join(root, "captions.parquet")
    storage.write_text_atomic(store, "a user's table")
    with pytest.raises(ForeignFilesError, match=r"caption\.output: .*captions\.parquet is a file geomoe did not"):
        write_caption_store(store, [])
    assert storage.read_text(store) == "a user's table"
    own = storage.join(root, "own.parquet")
    row = {"image_id": "1", "caption": "a roof", "model_id": "m", "prompt_sha256": ""}
    write_caption_store(own, [row])
    write_caption_store(own, [row, row | {"image_id": "2"}])  # its own store: replaced
    with pytest.raises(ForeignFilesError, match="is a folder"):
        write_caption_store(root, [row])


def test_is_inside() -> None:
    assert storage.is_inside("s3://b/synth/geotext", "s3://b/synth/")
    assert not storage.is_inside("s3://b/synthgeo/geotext", "s3://b/synth")
    assert not storage.is_inside("/a/b", "/a/b") and storage.is_inside("/a/b/c", "/a/b")
    assert not storage.is_inside("/a/b", "s3://a/b")


# --- every stage that publishes, through the job runner's check and the stage's own --------------------------

OUTPUT_KEYS = {  # spec key -> the override pointing it at the user's folder (or file)
    "data.synthesize.output_dir": "data.synthesize.output_dir={user}",
    "preprocess.output_dir": "preprocess.output_dir={user}",
    "caption.output": "caption.output={user}/store.parquet",
    "index.output_dir": "index.output_dir={user}",
    "output_root": "output_root={parent}",
}


def quickstart(overrides: list[str]) -> Any:
    from geomoe.core.config import load_job

    return load_job(Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml", overrides)


@pytest.mark.parametrize("key", OUTPUT_KEYS)
def test_each_output_key_of_a_job_is_refused_before_any_stage_runs(
    key: str, root: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI's one line and exit 2, nothing of the user's touched; no stage ran (no Ray, no data)."""
    from geomoe.cli import main

    user = storage.join(root, "user")
    parent = storage.join(root, "parent")
    files = {storage.join(user, "notes.txt"): "mine", storage.join(user, "store.parquet"): "mine too"}
    files[storage.join(parent, "quickstart", "notes.txt")] = "the folder my run would share"
    for location, text in files.items():
        storage.write_text_atomic(location, text)
    saved = {loc: digest(loc) for loc in files}
    synth = storage.join(root, "synth")
    base = [f"data.synthesize.output_dir={synth}", f"data.root={synth}/geotext", f"output_root={root}/runs"]
    override = OUTPUT_KEYS[key].format(user=user, parent=parent)
    if key == "data.synthesize.output_dir":
        base[1] = f"data.root={user}/geotext"
    job = str(Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml")
    code = main(["run", job, *[a for o in [*base, override] for a in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    (line,) = [ln for ln in err.splitlines() if "geomoe did not write" in ln]
    advice = "a new file" if key == "caption.output" else "an empty folder"
    assert line.startswith(f"geomoe: error: {key}: ") and line.endswith(
        f"point it at {advice} or at geomoe's own output"
    )
    assert unchanged(saved)
    assert not storage.exists(synth)  # the first stage (synth) never ran
    assert not storage.exists(storage.join(parent, "quickstart", "logs"))  # nor are logs put into a user's folder


def test_synth_writes_only_into_its_own_folder_which_holds_data_root() -> None:
    from geomoe.core.errors import SpecError

    with pytest.raises(SpecError, match=r"data\.root: .*mydata is not inside data\.synthesize\.output_dir"):
        quickstart(["data.root=mydata", "stages=[synth]"])  # issue 30's first case: refused at validation
    with pytest.raises(SpecError, match=r"data\.synthesize\.output_dir: stage 'synth' needs the folder"):
        quickstart(["data.synthesize.output_dir=null"])
    spec = quickstart(["data.root=s3://b/data/geotext", "data.synthesize.output_dir=s3://b/data"])
    assert spec.data.synthesize is not None and spec.data.synthesize.output_dir == "s3://b/data"


def test_synth_refuses_a_users_folder_and_regenerates_its_own(tmp_path: Path) -> None:
    from geomoe.core.config import SynthSpec
    from geomoe.core.data.synthgeo import generate

    small = SynthSpec(train_buildings=1, test_buildings=1, drone_views=1, ground_views=0, localization_train=1,
                      localization_val=0, localization_test=0, image_size=16, tile_size=32, query_size=16)  # fmt: skip
    (tmp_path / "thesis.txt").write_text("my thesis")
    with pytest.raises(ForeignFilesError, match=r"data\.synthesize\.output_dir: .* \(e\.g\. thesis\.txt\)"):
        generate(tmp_path, small)
    out = tmp_path / "synthgeo"
    first = generate(out, small)
    assert generate(out, small.model_copy(update={"seed": 1}), force=True)["geotext"] == first["geotext"]
    assert (tmp_path / "thesis.txt").read_text() == "my thesis"


def test_every_output_defaults_under_the_run_folder() -> None:
    spec = quickstart(["output_root=s3://bucket/runs"])
    assert spec.preprocess.output_dir == "s3://bucket/runs/quickstart/prepared"
    assert spec.index is not None and spec.index.output_dir == "s3://bucket/runs/quickstart/index"
    assert spec.caption is not None and spec.caption.output.startswith("s3://bucket/runs/quickstart/")
    assert spec.eval.rerank[1].captions == spec.caption.output  # {run}/... in both keys
    assert spec.baseline("no_refine").preprocess.output_dir == "s3://bucket/runs/quickstart/prepared-no_refine"
    keys = {key for key, _, _ in spec.outputs()}
    assert keys == {"output_root", "data.synthesize.output_dir", "preprocess.output_dir", "caption.output",
                    "index.output_dir", "baselines.no_refine: preprocess.output_dir"}  # fmt: skip
    shared = quickstart(["preprocess.output_dir=/shared/prepared"])  # pointed elsewhere on purpose: kept
    assert shared.preprocess.output_dir == "/shared/prepared"


def test_one_stages_output_is_not_anothers_to_replace(root: str) -> None:
    run = storage.join(root, "runs", "job")
    ownership.claim_dir(run, Claim("output_root", "job", "run"))
    storage.write_text_atomic(storage.join(run, "results.json"), "{}")
    refused = pytest.raises(ForeignFilesError, match=r"index\.output_dir: .*/runs/job is the run output of job job")
    with refused, ownership.atomic_dir(run, Claim("index.output_dir", "job", "index")):
        pass
    assert storage.read_text(storage.join(run, "results.json")) == "{}"


def test_outputs_may_not_lie_in_one_another() -> None:
    from geomoe.core.errors import SpecError

    cases = {
        'index.output_dir="{run}"': r"output_root: .* lies in index\.output_dir",
        "preprocess.output_dir=data/synthgeo/prepared": r"preprocess\.output_dir: .* lies in data\.synthesize",
        'index.output_dir="{run}/prepared/index"': r"index\.output_dir: .* lies in preprocess\.output_dir",
        'caption.output="{run}/index/c.parquet"': r"caption\.output: .* lies in index\.output_dir",
    }
    for override, message in cases.items():
        with pytest.raises(SpecError, match=message):
            quickstart([override])
    spec = quickstart(['model.text.source="{run}/tiny/text"'])  # quoted, as YAML needs it; in family sections too
    assert spec.model.text.source == "runs/quickstart/tiny/text"  # type: ignore[attr-defined]


def test_clearing_a_folder_on_an_object_store_deletes_only_what_its_listing_found(
    s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = f"{s3_bucket}/runs/job/ray_train"
    storage.write_text_atomic(f"{folder}/a/checkpoint.json", "{}")
    listed = storage.list_files(folder)
    storage.write_text_atomic(f"{folder}/b/notes.txt", "written after the listing")
    monkeypatch.setattr(storage, "list_files", lambda *_: listed)  # the listing taken before that write
    storage.delete(folder)
    monkeypatch.undo()
    assert storage.list_files(folder) == [("b/notes.txt", 25)]  # a prefix delete would have taken it too
