"""Every shipped job spec validates (a typo in a YAML key fails here, not on a cluster)."""

from pathlib import Path

import pytest

from geomoe.core.config import load_job

JOBS = sorted((Path(__file__).resolve().parents[2] / "jobs").glob("*.yaml"))


@pytest.mark.parametrize("path", JOBS, ids=[p.stem for p in JOBS])
def test_job_spec_is_valid(path: Path) -> None:
    spec = load_job(path)
    assert spec.name == path.stem
    for name in spec.baselines:
        spec.baseline(name)  # baseline overrides validate too


def test_paper_configuration() -> None:
    spec = load_job(JOBS[0].parent / "pe_moe_geotext.yaml")
    assert (spec.model.text.source, spec.model.image.name, spec.model.image.image_size) == (
        "BAAI/bge-m3",
        "EVA02-L-14",
        384,
    )
    assert [e.name for e in spec.model.experts] == ["satellite", "drone", "ground"]
    assert (spec.train.lr, spec.train.weight_decay, spec.train.batch_size) == (2e-5, 1e-4, 128)
    assert spec.resources.num_workers == 8 and spec.resources.use_gpu
    # sec. 3.2-3.3: expert k trains on D_k (expert-homogeneous batches); negatives mined over the training set
    assert (spec.train.batching, spec.train.mining_scope) == ("expert", "gallery")
    assert spec.refine is not None and "refine" in spec.stages  # textual domain alignment by an LLM


def test_smgeo_paper_configuration() -> None:
    """Eq. 10's plain average, Fig. 4's encoded click prompt and view-specific routers, and the expert design that
    reproduces Table II."""
    model = load_job(JOBS[0].parent / "smgeo_cvogl.yaml").model
    assert (model.query_pool, model.click, model.gmoe.routers, model.head_channels) == (
        "mean",
        "prompt",
        "per_view",
        192,
    )
    assert (model.gmoe.experts, model.gmoe.top_k, model.gmoe.dense_path, model.gmoe.expert_mlp_ratio) == (
        6,
        2,
        True,
        0.5,
    )
    assert model.gmoe.blocks == ["none", "even", "even", "even"]


def test_a_baseline_that_prepares_differently_gets_its_own_prepared_folder() -> None:
    spec = load_job(Path(__file__).resolve().parents[2] / "jobs" / "quickstart.yaml")
    no_refine, unified = spec.baseline("no_refine"), spec.baseline("unified")
    assert no_refine.preprocess.refine == "none" and spec.preprocess.refine == "rules"
    assert no_refine.preprocess.output_dir == spec.preprocess.output_dir + "-no_refine"
    assert unified.preprocess == spec.preprocess  # same data: the main job's prepared folder is reused
    assert no_refine.model == spec.model and unified.model.fusion == "unified"


def test_llm_jobs_share_prepared_data_and_refined_shards_with_the_paper_job() -> None:
    jobs = JOBS[0].parent
    paper, refine = load_job(jobs / "pe_moe_geotext.yaml"), load_job(jobs / "refine_captions_geotext.yaml")
    captions = load_job(jobs / "cgrs_gallery_captions.yaml")
    assert paper.preprocess == refine.preprocess == captions.preprocess
    assert paper.refine == refine.refine and paper.refine is not None and paper.refine.engine.kind == "vllm"
    assert captions.caption is not None and captions.caption.engine.kind == "vllm"
    reranked = load_job(jobs / "pe_moe_geotext.yaml", [f"eval.rerank={{captions: {captions.caption.output}}}"])
    assert [r.captions for r in reranked.eval.rerank] == [captions.caption.output]


def test_the_time_table_nests_the_models_under_train_and_totals_the_stages() -> None:
    from geomoe.on_ray.jobs import time_table

    seconds = {"prepare": 10.0, "train": 100.0, "train model": 60.0, "train unified": 40.0, "index": 5.5}
    lines = time_table(seconds).splitlines()
    assert lines[0] == "time per stage (s):"
    assert [line.split()[0] for line in lines[1:]] == ["prepare", "train", "model", "unified", "index", "total"]
    assert lines[3].startswith("    model") and lines[-1].split() == ["total", "115.5"]  # models not counted twice


def test_a_rerun_accepts_every_folder_its_first_run_claimed(tmp_path: Path) -> None:
    """Each output folder is claimed by the stage that writes it (a baseline's own prepared table by prepare, inside
    the train stage); the ownership check before a rerun expects exactly those stages."""
    from geomoe.core import ownership
    from geomoe.on_ray.jobs import check_outputs

    quickstart = JOBS[0].parent / "quickstart.yaml"
    spec = load_job(quickstart, [f"output_root={tmp_path / 'runs'}"]).with_absolute_paths()
    ownership.claim_dir(spec.run_folder(), ownership.Claim("output_root", spec.name, "run"))  # as run_job_timed
    writers = {"preprocess.output_dir": "prepare", "baselines.no_refine: preprocess.output_dir": "prepare"}
    for key, location, stage in spec.outputs():
        if key in writers:  # as pipelines/prepare.py claims them, for the job and for its baseline
            assert stage == writers[key], key
            ownership.claim_dir(location, ownership.Claim("preprocess.output_dir", spec.name, "prepare"))
    check_outputs(spec)  # the rerun is not refused
    index = next(location for key, location, _ in spec.outputs() if key == "index.output_dir")
    ownership.claim_dir(index, ownership.Claim("preprocess.output_dir", spec.name, "prepare"))  # another stage's
    with pytest.raises(ownership.ForeignFilesError, match=r"index\.output_dir: .* is the prepare output of job"):
        check_outputs(spec)
