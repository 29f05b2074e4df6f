"""PE-MoE's ``track4_submission`` stage: the RoboSense Track 4 submission file of a trained checkpoint (its gallery
embedded on Ray Data, the queries ranked by the fused score, Eq. 1)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from geomoe.core import ownership
from geomoe.core.config import JobSpec
from geomoe.core.data.records import RejectLog
from geomoe.core.data.track4 import SUBMISSION_DEPTH, list_gallery, read_queries, write_submission
from geomoe.core.data.transforms import normalize_caption
from geomoe.core.errors import DatasetError
from geomoe.families.pe_moe.pipelines import embed_images, stage_checkpoint
from geomoe.families.pe_moe.spec import PEMoEModelSpec, Track4Spec

if TYPE_CHECKING:
    from geomoe.core.stages import StageContext


def rank_track4(checkpoint: str, track4: Track4Spec, concurrency: int = 1) -> dict[str, list[str]]:
    """query id -> the 10 best gallery ids by the fused score (Eq. 1), best first, ties by gallery order."""
    from geomoe.families.pe_moe.encode import embed_texts
    from geomoe.families.pe_moe.factory import load_pe_moe
    from geomoe.families.pe_moe.index import exact_search, index_rows, query_rows

    rejects = RejectLog("fail")  # a submission must answer every query: nothing may be skipped
    queries = read_queries(track4.queries, rejects)
    gallery = list_gallery(track4.gallery, rejects)
    if len(gallery) < SUBMISSION_DEPTH:
        raise DatasetError(f"{track4.gallery}: a submission ranks 10 images, the gallery has {len(gallery)}")
    model, tokenizer, spec, _ = load_pe_moe(checkpoint)
    vectors = embed_images(checkpoint, [path for _, path in gallery], concurrency=concurrency)
    # normalised exactly as the prepared test queries the model was evaluated on (X-VLM pre_caption)
    normalised = [normalize_caption(text, spec.preprocess.max_words_test) for _, text in queries]
    texts, gates = embed_texts(model, tokenizer, normalised, spec.model_as(PEMoEModelSpec).text.max_length)
    # the index's exact search: Eq. 1 as one inner product per image, a running top 10 (ties: gallery order)
    _, top = exact_search(index_rows(vectors, "float32"), query_rows(texts, gates), SUBMISSION_DEPTH)
    return {qid: [gallery[j][0] for j in row] for (qid, _), row in zip(queries, top, strict=True)}


def submit_track4(checkpoint: str, track4: Track4Spec, concurrency: int = 1) -> dict[str, Any]:
    ownership.claim_dir(track4.output_dir, ownership.Claim("track4.output_dir", stage="track4_submission"))
    rankings = rank_track4(checkpoint, track4, concurrency)
    txt, archive = write_submission(track4.output_dir, rankings)
    return {"submission": str(txt), "zip": str(archive), "queries": len(rankings), "checkpoint": checkpoint,
            "output_dir": str(Path(track4.output_dir).resolve())}  # fmt: skip


def run_track4_submission(spec: JobSpec, context: StageContext) -> dict[str, Any]:
    """The ``track4_submission`` stage (geomoe.families.pe_moe.TRACK4_SUBMISSION)."""
    track4 = spec.section("track4", Track4Spec)
    assert track4 is not None  # checked by the stage's check
    checkpoint = stage_checkpoint(track4.checkpoint, context.results, "track4_submission")
    return submit_track4(checkpoint, track4, spec.resources.data_concurrency)
