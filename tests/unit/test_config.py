import hashlib
import json
from pathlib import Path

import pytest

from geomoe.core.config import JobSpec, SynthSpec, apply_overrides, load_job, parse_spec
from geomoe.core.config.job import TRAINING_SECTIONS
from geomoe.core.errors import SpecError

GOOD = """
name: demo
data: {format: geotext, root: data/x}
preprocess: {output_dir: out}
stages: [prepare]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    return path


def test_loads_valid_spec_with_defaults(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, GOOD))
    assert spec.name == "demo" and spec.preprocess.satellite_copies == 2
    assert spec.eval.ks == [1, 5, 10] and spec.data.platform_rules


def test_unknown_key_names_file_and_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("root: data/x", "root: data/x, rooot: typo"))
    with pytest.raises(SpecError) as err:
        load_job(path)
    assert str(path) in str(err.value) and err.value.key == "data.rooot"
    assert "unknown key" in err.value.reason


def test_numbers_written_as_yaml_1_2_floats_are_numbers(tmp_path: Path) -> None:
    """PyYAML reads ``1e-4`` (no dot) as a string; specs and --set read it as the number it is."""
    path = write(tmp_path, GOOD.replace("output_dir: out", "output_dir: out, augment_jitter: 1e-1"))
    assert load_job(path, ["train.lr=1e-4"]).train.lr == pytest.approx(1e-4)
    assert load_job(path).preprocess.augment_jitter == pytest.approx(0.1)


def test_a_misspelt_required_key_is_named_with_its_likely_spelling() -> None:
    from geomoe.core.config import SweepSpec, parse_spec

    raw = {"name": "s", "base": "job.yaml", "params": {"train.lr": {"grid": [0.1]}}, "metrc": "val_acc50"}
    with pytest.raises(SpecError, match=r"sweep\.yaml: metrc: unknown key \(did you mean 'metric'\?\)"):
        parse_spec(SweepSpec, raw, "sweep.yaml")


def test_nested_bad_value_names_dotted_key(tmp_path: Path) -> None:
    path = write(tmp_path, GOOD.replace("output_dir: out", "output_dir: out, satellite_copies: -1"))
    with pytest.raises(SpecError) as err:
        load_job(path)
    assert err.value.key == "preprocess.satellite_copies"
    assert "greater than or equal to 0" in err.value.reason


def test_overrides_are_typed_and_nested(tmp_path: Path) -> None:
    spec = load_job(write(tmp_path, GOOD), ["preprocess.satellite_copies=5", "eval.ks=[1, 3]", "seed=7"])
    assert spec.preprocess.satellite_copies == 5 and spec.eval.ks == [1, 3] and spec.seed == 7


def test_override_unknown_key_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(SpecError) as err:
        load_job(write(tmp_path, GOOD), ["preprocess.nope=1"])
    assert err.value.key == "preprocess.nope"


def test_override_into_scalar_is_rejected() -> None:
    with pytest.raises(SpecError, match="seed: is not a section"):
        apply_overrides({"seed": 1}, ["seed.x=2"], "cli")
    with pytest.raises(SpecError, match=r"dotted\.key=value"):
        apply_overrides({}, ["noequals"], "cli")


def test_invalid_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not valid YAML"):
        load_job(write(tmp_path, "name: [unclosed"))
    with pytest.raises(SpecError, match="file not found"):
        load_job(tmp_path / "absent.yaml")
    with pytest.raises(SpecError, match="top level must be a mapping"):
        load_job(write(tmp_path, "- a\n- b\n"))


def test_synth_stage_requires_synthesize_section() -> None:
    with pytest.raises(SpecError, match=r"data\.synthesize"):
        parse_spec(JobSpec, {"name": "x", "data": {"root": "r"}, "preprocess": {"output_dir": "o"}}, "t")


def test_bad_platform_rule_regex() -> None:
    raw = {
        "name": "x",
        "stages": [],
        "data": {"root": "r", "platform_rules": [{"pattern": "(", "platform": "drone"}]},
        "preprocess": {"output_dir": "o"},
    }
    with pytest.raises(SpecError) as err:
        parse_spec(JobSpec, raw, "t")
    assert err.value.key == "data.platform_rules"


def test_fingerprint_changes_with_content() -> None:
    a = parse_spec(SynthSpec, {}, "t")
    b = parse_spec(SynthSpec, {"seed": 1}, "t")
    assert a != b
    raw = {"name": "x", "stages": [], "data": {"root": "r"}, "preprocess": {"output_dir": "o"}}
    s1, s2 = parse_spec(JobSpec, dict(raw), "t"), parse_spec(JobSpec, {**raw, "seed": 3}, "t")
    assert s1.fingerprint() != s2.fingerprint()


def test_a_trained_stage_depends_on_the_workers_only_when_the_batch_is_per_worker() -> None:
    raw = {"name": "x", "stages": [], "data": {"root": "r"}, "preprocess": {"output_dir": "o"}}

    def stage(train: dict, workers: int) -> str:
        return parse_spec(
            JobSpec, {**raw, "train": train, "resources": {"num_workers": workers}}, "t"
        ).stage_fingerprint(1)

    assert stage({}, 1) == stage({}, 4)  # the step's batch is batch_size whatever the workers
    assert stage({"batch_per": "worker"}, 1) != stage({"batch_per": "worker"}, 4)  # batch_size x workers
    assert stage({"batch_per": "global"}, 2) != stage({"batch_per": "worker"}, 2)
    # the default is left out of the fingerprint: a stage trained before batch_per existed is still found
    spec = parse_spec(JobSpec, raw, "t")
    dump = spec.model_dump(mode="json")
    old = {k: dump[k] for k in TRAINING_SECTIONS}  # what stage_fingerprint hashed before batch_per
    ignored = spec.train.fields_ignored_by_stage(1) | {"batch_per"}
    old["train"] = {k: v for k, v in old["train"].items() if k not in ignored}
    assert spec.stage_fingerprint(1) == hashlib.sha256(json.dumps(old, sort_keys=True).encode()).hexdigest()[:16]


def test_a_planted_knob_added_later_leaves_the_keys_of_results_from_before_it() -> None:
    """synthgeo's attribute_twins and cell_kinds at their default (0) are left out of a job's fingerprints and of
    synthgeo's manifest: a trained stage, a finished sweep trial or a generated world from before them is found."""
    raw = {"name": "x", "stages": [], "data": {"root": "r", "synthesize": {}}, "preprocess": {"output_dir": "o"}}
    spec = parse_spec(JobSpec, raw, "t")
    dump = spec.model_dump(mode="json")
    planted = dump["data"]["synthesize"]["planted"]
    del dump["train"]["batch_per"], planted["attribute_twins"], planted["cell_kinds"]  # as hashed before them
    assert spec.fingerprint() == hashlib.sha256(json.dumps(dump, sort_keys=True).encode()).hexdigest()[:16]
    assert "attribute_twins" not in spec.data.synthesize.keyed_dump()["planted"]
    twins = parse_spec(JobSpec, raw, "t", ["data.synthesize.planted.attribute_twins=1"])
    assert twins.fingerprint() != spec.fingerprint() and twins.stage_fingerprint(1) != spec.stage_fingerprint(1)


def test_rerank_takes_one_section_or_a_named_list() -> None:
    raw = {"name": "x", "stages": [], "data": {"root": "r"}, "preprocess": {"output_dir": "o"}}
    one = parse_spec(JobSpec, {**raw, "eval": {"rerank": {"captions": "c.parquet"}}}, "t")
    assert [(r.name, r.captions) for r in one.eval.rerank] == [("CGRS", "c.parquet")]
    two = [{"name": "scene", "captions": "a.parquet"}, {"name": "vlm", "captions": "b.parquet", "weight": 0.3}]
    assert [r.name for r in parse_spec(JobSpec, {**raw, "eval": {"rerank": two}}, "t").eval.rerank] == ["scene", "vlm"]
    with pytest.raises(SpecError, match="re-rankings need distinct names"):
        parse_spec(JobSpec, {**raw, "eval": {"rerank": [two[0], two[0]]}}, "t")
    absolute = one.with_absolute_paths("/base")
    assert absolute.eval.rerank[0].captions == "/base/c.parquet"


def test_engine_models_become_absolute_only_when_local(tmp_path: Path) -> None:
    raw = {"name": "x", "stages": [], "data": {"root": "r"}, "preprocess": {"output_dir": "o"}}
    caption = {"engine": {"kind": "transformers", "model": "models/vlm", "tiny": True}, "output": "c.parquet"}
    refine = {"engine": {"kind": "vllm", "model": "Qwen/Qwen2.5-7B-Instruct"}, "output_dir": "refined"}
    spec = parse_spec(JobSpec, {**raw, "caption": caption, "refine": refine}, "t").with_absolute_paths(tmp_path)
    assert spec.caption is not None and spec.caption.engine.model == str(tmp_path / "models/vlm")  # tiny builds it
    assert spec.refine is not None and spec.refine.engine.model == "Qwen/Qwen2.5-7B-Instruct"  # a hub id


def test_index_stage_needs_its_section_and_paths_become_absolute() -> None:
    raw = {"name": "x", "stages": ["index"], "data": {"root": "r"}, "preprocess": {"output_dir": "o"}}
    with pytest.raises(SpecError, match="stage 'index' needs an index section"):
        parse_spec(JobSpec, raw, "t")
    # checked before any stage runs: the index needs a checkpoint, given or trained by an earlier stage
    with pytest.raises(SpecError, match=r"t: index\.checkpoint: stage 'index' needs a checkpoint, or a 'train'"):
        parse_spec(JobSpec, {**raw, "index": {"output_dir": "idx"}}, "t")
    trained = parse_spec(JobSpec, {**raw, "stages": ["train", "index"], "index": {"output_dir": "idx"}}, "t")
    assert trained.index is not None and trained.index.checkpoint is None
    spec = parse_spec(JobSpec, {**raw, "index": {"output_dir": "idx", "faiss": ["ivf"], "checkpoint": "c"}}, "t")
    assert spec.index is not None and spec.index.dtype == "float16"
    absolute = spec.with_absolute_paths("/base")
    assert absolute.index is not None and absolute.index.output_dir == "/base/idx"
    assert absolute.index.checkpoint == "/base/c" and absolute.locations()["index.output_dir"] == "/base/idx"
    # a section of PE-MoE's own (Family.sections): ``index: null`` is no section, as when it was a JobSpec field
    assert parse_spec(JobSpec, {**raw, "stages": ["train"], "index": None}, "t").family_sections() == {}
    # a misspelt top-level key is named with its likely spelling; a section of another family's, as such
    with pytest.raises(SpecError, match=r"t: dta: unknown key \(did you mean 'data'\?\)"):
        parse_spec(JobSpec, {k: v for k, v in raw.items() if k != "data"} | {"dta": {"root": "r"}}, "t")
    smgeo = {**raw, "stages": ["prepare"], "data": {"format": "cvogl", "root": "r"}, "model": {"name": "smgeo"}}
    with pytest.raises(SpecError, match=r"t: index: a section of pe_moe jobs, not of smgeo jobs"):
        parse_spec(JobSpec, {**smgeo, "index": {"output_dir": "idx"}}, "t")
    # a spec dumped while index and track4 were JobSpec fields (a checkpoint's, a run's spec.json) still loads
    assert parse_spec(JobSpec, {**smgeo, "index": None, "track4": None}, "t").family_sections() == {}


def test_http_engine_needs_its_url() -> None:
    from geomoe.core.config import EngineSpec

    with pytest.raises(SpecError, match=r"engine: .*the http engine needs url"):
        parse_spec(EngineSpec, {"kind": "http", "model": "m"}, "engine")
    assert parse_spec(EngineSpec, {"kind": "http", "model": "m", "url": "http://h/v1"}, "engine").url == "http://h/v1"


def test_serve_spec_refuses_inconsistent_args_naming_the_key() -> None:
    from geomoe.core.config import ServeSpec

    store = {"captions": "c.parquet"}
    for raw, words in (
        ({"index": "i", "rerank": store | {"diversity": 0.9}}, "diversity"),
        ({"index": "i", "captioner": {"engine": {"model": "m"}}}, "captioner needs rerank"),
        ({"index": "i", "token": "a", "token_env": "B"}, "token or token_env"),
        ({"index": "i", "rerank": store, "captioner": {"engine": {"kind": "vllm", "model": "m"}}}, "ray.serve.llm"),
        ({"index": "i", "rerank": store, "captioner": {"engine": {"kind": "http", "model": "m"}}}, "needs url"),
        ({"index": "i", "replicas": 2}, "replicas"),
    ):
        with pytest.raises(SpecError, match=words):
            parse_spec(ServeSpec, raw, "serve.yaml")


def test_environment_references_expand_with_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geomoe.core.config import load_job

    job = tmp_path / "job.yaml"
    job.write_text(
        "name: j\nstages: [prepare]\noutput_root: ${GEOMOE_STORAGE}/runs\n"
        "data: {format: geotext, root: '${GEOMOE_DATA:-/data}/geotext'}\n"
        "preprocess: {output_dir: '${GEOMOE_STORAGE}/prepared'}\n"
    )
    monkeypatch.setenv("GEOMOE_STORAGE", "s3://bucket/geomoe")
    monkeypatch.delenv("GEOMOE_DATA", raising=False)
    spec = load_job(job)
    assert (spec.output_root, spec.data.root) == ("s3://bucket/geomoe/runs", "/data/geotext")
    assert spec.preprocess.output_dir == "s3://bucket/geomoe/prepared"
    monkeypatch.delenv("GEOMOE_STORAGE")
    with pytest.raises(SpecError, match=r"job.yaml: output_root: \$\{GEOMOE_STORAGE\} is not set"):
        load_job(job)
