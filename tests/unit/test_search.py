"""Exact search at memory bandwidth: the stored dtype's kernel gives the float32 product's top k, exactly, whatever
the blocks and threads; int8 rows with a rescored shortlist; the GPU path's query split."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geomoe.core.retrieval.search import (
    RESCORE_MAX,
    as_tensor,
    exact_search,
    first_pass_bound,
    int8_search,
    largest_row_norm,
    native_first_pass,
    np_bfloat16,
    quantize_rows,
    split_query,
)
from geomoe.families.pe_moe.index import index_rows, read_index, recall_at, write_index

DTYPES = [np.float32, np.float16, np_bfloat16]


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered() -> tuple[np.ndarray, np.ndarray]:
    """3,000 rows around 150 centres (20 views each) and 9 queries near rows, as in bench index."""
    rng = np.random.default_rng(0)
    rows = unit(np.repeat(rng.standard_normal((150, 96)), 20, axis=0) + rng.standard_normal((3000, 96)))
    queries = unit(rows[rng.choice(3000, 9, replace=False)] + 0.3 * rng.standard_normal((9, 96)))
    return rows, queries


def reference(
    rows: np.ndarray, queries: np.ndarray, k: int, allowed: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top k of the float64 product of the stored values (ties: lower row), among the allowed rows."""
    scores = queries.astype(np.float64) @ rows.astype(np.float64).T
    if allowed is not None:
        scores[:, ~allowed] = -np.inf
    order = np.lexsort((np.broadcast_to(np.arange(len(rows)), scores.shape), -scores), axis=1)[:, :k]
    return np.take_along_axis(scores, order, axis=1), order


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(("block", "threads"), [(128, 1), (300, 2), (7, 3), (4096, 2)])
def test_every_kernel_returns_the_exact_top_k(
    clustered: tuple[np.ndarray, np.ndarray], dtype: type, block: int, threads: int
) -> None:
    rows, queries = clustered
    stored = rows.astype(dtype)
    scores, found = exact_search(stored, queries, 10, block=block, threads=threads)
    want_scores, want = reference(stored, queries, 10)
    assert found.dtype == np.int64 and scores.dtype == np.float32
    assert (found == want).all()
    np.testing.assert_allclose(scores, want_scores, atol=2e-6)


def test_the_platform_filter_the_ties_and_k_beyond_the_rows(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = clustered
    allowed = np.random.default_rng(1).random(len(rows)) < 0.3
    _, found = exact_search(rows.astype(np_bfloat16), queries, 10, allowed_N=allowed, block=256, threads=2)
    _, want = reference(rows.astype(np_bfloat16), queries, 10, allowed)
    assert allowed[found].all() and (found == want).all()
    tied = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]], np.float32)
    scores, found = exact_search(tied, np.array([[1.0, 0.0]], np.float32), 5, block=1, threads=2)
    assert found.tolist() == [[0, 2, 1]] and scores.tolist() == [[1.0, 1.0, 0.0]]
    empty = exact_search(tied, np.zeros((0, 2), np.float32), 3)
    assert empty[0].shape == (0, 3) and empty[1].shape == (0, 3)


def test_the_running_top_k_keeps_the_caller_s_thread_setting(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = clustered
    before = torch.get_num_threads()
    exact_search(rows, queries, 5, block=100, threads=2)
    assert torch.get_num_threads() == before


def test_unsupported_rows_are_named() -> None:
    with pytest.raises(TypeError, match="float32, float16, bfloat16 or int8, not float64"):
        exact_search(np.zeros((3, 2)), np.zeros((1, 2), np.float32), 1)


def test_int8_codes_and_the_rescored_shortlist(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = clustered
    stored = rows.astype(np_bfloat16)
    quantized = quantize_rows(stored, block=1000)
    decoded = quantized.codes.float() * quantized.scales[:, None]
    error = (decoded - torch.from_numpy(stored.astype(np.float32))).abs()
    assert (error <= quantized.scales[:, None] / 2 + 1e-7).all()  # round to nearest: half a step at most
    scores, found = int8_search(quantized, queries, 10, shortlist=50)
    want_scores, want = reference(stored, queries, 10)
    assert recall_at(found, want) >= 0.98
    hit = found == want  # where the shortlist held the true row, its score is the exact one
    np.testing.assert_allclose(scores[hit], want_scores[hit], atol=2e-6)
    _, everything = int8_search(quantized, queries, 10, shortlist=len(rows))  # a full shortlist: exact again
    assert (everything == want).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_the_gpu_query_split_adds_up_to_the_float32_product(dtype: torch.dtype) -> None:
    rng = np.random.default_rng(2)
    rows = torch.from_numpy(unit(rng.standard_normal((500, 64)))).to(dtype)
    queries = torch.from_numpy(unit(rng.standard_normal((4, 64))) * 0.3)
    parts = split_query(queries, dtype)
    assert len(parts) == 2 and all(p.dtype == dtype for p in parts)
    split = sum(rows.float() @ p.float().T for p in parts)
    exact = rows.double() @ queries.double().T
    half = rows.float() @ parts[0].float().T  # the query rounded to half precision: what a plain cast costs
    assert (split - exact).abs().max() < 1e-6 < (half - exact).abs().max()


def test_a_bfloat16_index_folder_round_trips(tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = clustered
    v = rows[:40].reshape(40, 3, 32).transpose(1, 0, 2)
    stored = index_rows(v, "bfloat16")
    assert stored.dtype == np_bfloat16
    write_index(tmp_path / "idx", stored, [f"img{i}" for i in range(40)], {"checkpoint": "ckpt"})
    index = read_index(tmp_path / "idx")
    assert index.manifest.dtype == "bfloat16" and index.rows.dtype == np_bfloat16
    assert (np.asarray(index.rows).view(np.uint16) == stored.view(np.uint16)).all()
    assert index.search(queries[:1], 3)[0] == read_index(tmp_path / "idx", mmap=False).search(queries[:1], 3)[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_the_gpu_path_gives_the_exact_top_k(clustered: tuple[np.ndarray, np.ndarray], dtype: torch.dtype) -> None:
    """The code a GPU runs (split query, float32 products, slices, running top k), here on CPU tensors: where
    torch has no half x half -> float32 product on this device it widens, so the result must be exact either way."""
    from geomoe.core.retrieval.search import device_search

    rows, queries = clustered
    stored = torch.from_numpy(rows).to(dtype)
    allowed = torch.from_numpy(np.random.default_rng(3).random(len(rows)) < 0.5)
    scores, found = device_search(stored, torch.from_numpy(queries), 10, allowed)
    want_scores, want = reference(stored.float().numpy(), queries, 10, allowed.numpy())
    order = np.lexsort((found.numpy(), -scores.numpy()), axis=1)
    assert (np.take_along_axis(found.numpy(), order, axis=1) == want).all()
    np.testing.assert_allclose(np.take_along_axis(scores.numpy(), order, axis=1), want_scores, atol=2e-6)


@pytest.mark.parametrize("dtype", [np.float16, np_bfloat16], ids=lambda d: np.dtype(d).name)
def test_the_native_first_pass_bound_holds_and_its_result_is_exact(dtype: type) -> None:
    """Rows of mixed scale (norms 0.01 to 3, heavy-tailed entries) and gated queries: every row's first-pass score is
    within the bound of the float64 product, and one query with the norm takes the native pass to the exact top k."""
    rng = np.random.default_rng(4)
    raw = rng.standard_t(3, (4000, 384)) * rng.uniform(0.01, 3, (4000, 1)) / 20
    stored = raw.astype(np.float32).astype(dtype)
    rows = as_tensor(stored)
    norm = largest_row_norm(stored, block=1000)
    assert norm == pytest.approx(float(np.linalg.norm(stored.astype(np.float64), axis=1).max()), rel=1e-6)
    for _ in range(5):
        query = unit(rng.standard_normal(384)) * rng.uniform(0.1, 2)
        q = torch.from_numpy(query.astype(np.float32))
        approx = torch.mv(rows, q.to(rows.dtype)).double().numpy()
        exact = stored.astype(np.float64) @ query.astype(np.float32).astype(np.float64)
        absolute, relative = first_pass_bound(q, rows.dtype, norm)
        assert (np.abs(exact - approx) <= absolute + relative * np.abs(approx)).all()
        found = native_first_pass(rows, q, 10, None, norm)
        assert found is not None and len(found[1][0]) == 10
        scores, index = exact_search(stored, query[None].astype(np.float32), 10, row_norm_max=norm)
        want_scores, want = reference(stored, query[None].astype(np.float32), 10)
        assert (index == want).all() and sorted(found[1][0].tolist()) == sorted(want[0].tolist())
        np.testing.assert_allclose(scores, want_scores, atol=2e-6)


def test_the_native_first_pass_filters_and_falls_back(clustered: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = clustered
    stored = rows.astype(np_bfloat16)
    norm = largest_row_norm(stored)
    allowed = np.random.default_rng(5).random(len(rows)) < 0.3
    for query in queries:
        _, found = exact_search(stored, query[None], 10, allowed_N=allowed, row_norm_max=norm)
        assert (found == reference(stored, query[None], 10, allowed)[1]).all()
    few = np.zeros(len(rows), bool)
    few[[5, 900]] = True  # fewer allowed rows than k: the full scan answers (and pads with -inf)
    scores, found = exact_search(stored, queries[:1], 4, allowed_N=few, row_norm_max=norm)
    assert found[0, :2].tolist() == sorted([5, 900], key=lambda r: -float(stored[r].astype(np.float32) @ queries[0]))
    assert np.isneginf(scores[0, 2:]).all()
    same = np.tile(stored[:1], (RESCORE_MAX + 1, 1))  # every row tied: too many candidates to rescore
    assert native_first_pass(as_tensor(same), torch.from_numpy(queries[0]), 3, None, norm) is None
    scores, found = exact_search(same, queries[:1], 3, row_norm_max=norm)  # the full scan: any 3 of the tied rows
    assert len(set(found[0].tolist())) == 3
    np.testing.assert_allclose(scores[0], float(same[0].astype(np.float32) @ queries[0]), atol=1e-6)


def test_an_index_records_its_largest_row_norm(tmp_path: Path, clustered: tuple[np.ndarray, np.ndarray]) -> None:
    rows, queries = clustered
    stored = rows.astype(np_bfloat16)
    write_index(tmp_path / "idx", stored, [f"img{i}" for i in range(len(rows))], {"checkpoint": "ckpt"})
    index = read_index(tmp_path / "idx")
    assert index.manifest.row_norm_max == pytest.approx(largest_row_norm(stored))
    hits = index.search(queries[:1], 5)[0]
    assert [int(name[3:]) for name, _ in hits] == reference(stored, queries[:1], 5)[1][0].tolist()
