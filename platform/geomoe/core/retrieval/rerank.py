"""CGRS re-ranking (docs/protocols.md), NumPy only.

For each query, the first stage's top N candidates are re-scored by text similarity between the query and the
candidates' captions (written once per gallery image, offline, into a caption store), fused with the first-stage
score after per-query normalisation, and re-ordered; everything below the top N keeps its first-stage order.
Optionally, the diversity rule of a peer's submission pushes down a candidate whose image is a near-duplicate
(cosine >= threshold) of one already placed above it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import numpy as np


def normalise(scores_QT: np.ndarray, how: str) -> np.ndarray:
    """Per-query (row) normalisation: ``zscore`` (mean 0, std 1) or ``minmax`` ([0, 1]); constant rows -> 0."""
    scores = np.asarray(scores_QT, np.float64)
    if how == "zscore":
        centred = scores - scores.mean(axis=1, keepdims=True)
        std = scores.std(axis=1, keepdims=True)
        zscores: np.ndarray = np.divide(centred, std, out=np.zeros_like(centred), where=std > 1e-12)
        return zscores
    if how == "minmax":
        low = scores.min(axis=1, keepdims=True)
        span = scores.max(axis=1, keepdims=True) - low
        scaled: np.ndarray = np.divide(scores - low, span, out=np.zeros_like(scores), where=span > 1e-12)
        return scaled
    raise ValueError(f"unknown normalisation {how!r}; expected zscore or minmax")


class LexicalScorer:
    """IDF-weighted token overlap between a query and captions (a sparse, lexical match).

    With BGE-M3 the sparse weights would come from its lexical head; this keeps the same form,
    sum over shared tokens of w_query(t) * w_caption(t), with IDF weights fitted on the caption store.
    """

    def __init__(self, captions: Sequence[str]) -> None:
        self.documents = 0
        self.document_frequency: Counter[str] = Counter()
        self.add(captions)

    def add(self, captions: Sequence[str]) -> None:
        """Count more captions into the IDF (a service adds the captions its VLM writes, as a store would)."""
        for caption in captions:
            self.document_frequency.update(set(_tokens(caption)))
            self.documents += 1

    def idf(self, token: str) -> float:
        n = self.document_frequency.get(token)
        return 0.0 if n is None else math.log((1 + self.documents) / (1 + n)) + 1.0

    def weights(self, text: str) -> dict[str, float]:
        counts = Counter(_tokens(text))
        raw = {t: self.idf(t) * (1 + math.log(n)) for t, n in counts.items()}
        norm = math.sqrt(sum(v * v for v in raw.values())) or 1.0
        return {t: v / norm for t, v in raw.items()}

    def score(self, query: str, captions: Sequence[str]) -> np.ndarray:
        q = self.weights(query)
        return np.array([sum(w * q.get(t, 0.0) for t, w in self.weights(c).items()) for c in captions])

    def pair_scores(
        self, queries: Sequence[str], captions: Sequence[str], query_P: np.ndarray, caption_P: np.ndarray
    ) -> np.ndarray:
        """Scores of the given (query, caption) pairs; each text's weights are computed once."""
        q_weights = {int(i): self.weights(queries[int(i)]) for i in np.unique(query_P)}
        c_weights = {int(i): self.weights(captions[int(i)]) for i in np.unique(caption_P)}
        return np.array(
            [
                sum(w * q_weights[int(q)].get(t, 0.0) for t, w in c_weights[int(c)].items())
                for q, c in zip(query_P, caption_P, strict=True)
            ]
        )


def _tokens(text: str) -> list[str]:
    return [t for t in "".join(ch if ch.isalnum() else " " for ch in text.lower()).split() if t]


def caption_evidence(
    queries: Sequence[str],
    top_QT: np.ndarray,
    first_caption: np.ndarray,
    captions: Sequence[str],
    dense_weight: float,
    lexical_weight: float,
    embed_texts: Callable[[list[str]], np.ndarray],
    lexical: LexicalScorer,
) -> np.ndarray:
    """(Q, T) caption evidence for each query's top candidates: the best, over a candidate's captions, of
    dense_weight * cos(query, caption) + lexical_weight * lexical(query, caption). Candidate n (a gallery index
    in ``top_QT``) owns ``captions[first_caption[n]:first_caption[n + 1]]``; ``embed_texts`` gives normalised
    (len, H) text features. Only the captions of candidates are embedded: never a query x gallery matrix."""
    q_P, t_P, c_P = candidate_triples(top_QT, first_caption)
    pair_P = np.zeros(len(q_P))
    if dense_weight and len(c_P):
        q_QH = embed_once(embed_texts, list(queries))
        used_C, c_of_P = np.unique(c_P, return_inverse=True)
        c_CH = embed_once(embed_texts, [captions[int(c)] for c in used_C])
        pair_P += dense_weight * np.einsum("pd,pd->p", q_QH[q_P], c_CH[c_of_P])
    if lexical_weight and len(c_P):
        pair_P += lexical_weight * lexical.pair_scores(queries, captions, q_P, c_P)
    return best_per_candidate(pair_P, q_P, t_P, top_QT.shape)


def embed_once(embed_texts: Callable[[list[str]], np.ndarray], texts: list[str]) -> np.ndarray:
    """(len(texts), H): each distinct text embedded once, in sorted order. A text's vector then does not depend on
    which batch it shared with others (padding to a batch's longest text moves the last bits), so candidates with
    the same caption tie exactly and the tie goes to the lower gallery index, as everywhere else."""
    distinct, text_of = np.unique(np.array(texts, dtype=str), return_inverse=True)
    vectors: np.ndarray = embed_texts(distinct.tolist())[text_of]
    return vectors


def candidate_triples(top_QT: np.ndarray, first_caption: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query, candidate slot, caption) index triples for every caption of every top candidate; image n owns
    captions first_caption[n] .. first_caption[n + 1] - 1."""
    counts_QT = first_caption[top_QT + 1] - first_caption[top_QT]
    q_P, t_P = np.nonzero(counts_QT > 0)
    n_P = counts_QT[q_P, t_P]
    q_P, t_P = np.repeat(q_P, n_P), np.repeat(t_P, n_P)
    offset = np.arange(len(q_P)) - np.repeat(np.cumsum(n_P) - n_P, n_P)
    return q_P, t_P, first_caption[top_QT[q_P, t_P]] + offset


def best_per_candidate(values_P: np.ndarray, q_P: np.ndarray, t_P: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """(Q, T): the best value over each candidate's captions; a candidate without any gets its query's lowest
    value (no evidence, never a boost), or 0 when the query has no captioned candidate at all."""
    best = np.full(shape, -np.inf)
    np.maximum.at(best, (q_P, t_P), values_P)
    floor = np.where(np.isfinite(best), best, np.inf).min(axis=1, keepdims=True)
    return np.where(np.isfinite(best), best, np.where(np.isfinite(floor), floor, 0.0))


def fuse_top(first_QT: np.ndarray, caption_QT: np.ndarray, weight: float, how: str) -> np.ndarray:
    """(Q, T) re-ranking scores of each query's top T: (1 - weight) * norm(first) + weight * norm(caption)."""
    return (1 - weight) * normalise(first_QT, how) + weight * normalise(caption_QT, how)


def fuse_top_n(first_QN: np.ndarray, caption_QT: np.ndarray, top_QT: np.ndarray, weight: float, how: str) -> np.ndarray:
    """Scores (Q, N) whose order is the re-ranked one: the top T candidates get ``fuse_top``, lifted above every
    other item; the rest keep theirs."""
    first = np.asarray(first_QN, np.float64)
    fused = fuse_top(np.take_along_axis(first, top_QT, axis=1), caption_QT, weight, how)
    lift = first.max(axis=1, keepdims=True) - fused.min(axis=1, keepdims=True) + 1.0
    out = first.copy()
    np.put_along_axis(out, top_QT, fused + lift, axis=1)
    return out


def reranked_order(fused_QT: np.ndarray, top_QT: np.ndarray) -> np.ndarray:
    """(Q, T) gallery indices of the top T in re-ranked order: by descending ``fused_QT``, ties by the lower
    gallery index (the metrics' order)."""
    order = np.lexsort((top_QT, -np.asarray(fused_QT)), axis=1)
    return np.take_along_axis(np.asarray(top_QT), order, axis=1)


def top_n(scores_QN: np.ndarray, n: int) -> np.ndarray:
    """(Q, n) indices of the best n items per query, best first, ties by index (the metrics' order)."""
    return np.argsort(-np.asarray(scores_QN), axis=1, kind="stable")[:, : min(n, scores_QN.shape[1])]


def diversify(scores_QN: np.ndarray, image_vectors_ND: np.ndarray, n: int, threshold: float) -> np.ndarray:
    """Within each query's top n, push a candidate below the others when its image has cosine >= threshold
    with a candidate already placed above it (kept in order among the pushed). Returns new scores (Q, N)."""
    scores = np.asarray(scores_QN, np.float64).copy()
    vectors = unit_rows(image_vectors_ND)
    for q, order in enumerate(top_n(scores, n)):
        ranked = diversified(order, vectors, threshold)
        # new values span the old top values (so nothing below the top n moves), strictly decreasing
        hi, lo = scores[q, order[0]], scores[q, order[-1]]
        scores[q, ranked] = np.linspace(hi, lo, len(ranked)) + np.arange(len(ranked))[::-1] * 1e-9
    return scores


def unit_rows(vectors_ND: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors_ND, np.float64)
    unit: np.ndarray = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
    return unit


def diversified(order_T: np.ndarray, unit_ND: np.ndarray, threshold: float) -> list[int]:
    """One query's candidates (gallery indices, best first) with each one whose image has cosine >= threshold
    with a candidate kept above it moved below the kept ones (the moved keep their order)."""
    kept: list[int] = []
    pushed: list[int] = []
    for item in order_T:
        similar = kept and float(np.max(unit_ND[kept] @ unit_ND[item])) >= threshold
        (pushed if similar else kept).append(int(item))
    return kept + pushed
