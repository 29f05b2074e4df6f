"""Exact search over gallery rows at memory bandwidth, and int8 rows with an exact rescored shortlist (core, no Ray).

A query is one inner product with every row (geomoe.families.pe_moe.index), so a search is memory-bound: for 1 query the
work is reading the rows once. The rows' stored dtype picks the kernel, and the rows are never copied whole:

- CPU, one query on bf16/fp16 rows whose largest norm is known (an index's manifest holds it): a native first
  pass, torch's own half-precision GEMV (the speed of reading the rows once), gives scores within a certified
  bound of the float32 product; every row whose bound reaches the k-th best lower bound is rescored exactly in
  float32 (tens of rows on real galleries), so the result is the exact one. The bound assumes what torch's CPU
  kernels do: half-precision operands, float32 accumulation, the output rounded to the rows' dtype.
- CPU otherwise: worker threads take contiguous ranges of rows; each reads its range in blocks of ``block`` rows,
  widens a block to float32 into one reused buffer that stays in cache, multiplies it by the float32 queries
  (sgemm) into one reused score buffer, and keeps a running top-k (each span's top k merged with the running k,
  never a sort of everything). From memory, the stored bytes are read once; the widened copies live in cache.
- CUDA: the rows live on the GPU (``device_rows``) and cuBLAS reads bf16/fp16 directly with float32 output; the
  float32 query is split into a half-precision high part and the low-order remainder, so one product with both
  parts equals the float32 product to within float32 rounding (the rows are not widened, the query is exact).

Results are exact: the top k by the float32 product of the stored rows and the float32 queries, best first, ties
ordered by the lower row (at the k-th place a tie may go either way).
"""

from __future__ import annotations

import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from ml_dtypes import bfloat16 as np_bfloat16  # numpy's bfloat16 (what JAX and ONNX use)

BLOCK = 256  # rows widened at a time: 256 x 3072 fp32 is 3 MiB, inside the L3 cache (measured: 128-256 best)
SPAN = 8192  # rows whose scores are kept before one top-k
HALF = (torch.bfloat16, torch.float16)
UNIT_ROUNDOFF = {torch.bfloat16: 2.0**-8, torch.float16: 2.0**-11}
RESCORE_MAX = 1 << 16  # more candidates than this (a degenerate gallery): the full float32 scan instead


def as_tensor(rows_ND: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The rows as a torch tensor without a copy (numpy bf16 by ``ml_dtypes`` is viewed through its bits)."""
    if isinstance(rows_ND, torch.Tensor):
        return rows_ND
    rows = np.ascontiguousarray(rows_ND)
    if rows.dtype == np_bfloat16:
        rows = rows.view(np.uint16)
    elif rows.dtype not in (np.float16, np.float32, np.int8):
        raise TypeError(f"gallery rows must be float32, float16, bfloat16 or int8, not {rows.dtype}")
    with warnings.catch_warnings():  # a read-only memory map: torch warns that it cannot protect it; we only read
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        tensor = torch.from_numpy(rows)
    return tensor.view(torch.bfloat16) if rows_ND.dtype == np_bfloat16 else tensor


def device_rows(rows_ND: np.ndarray | torch.Tensor, device: str | torch.device = "cpu") -> torch.Tensor:
    """The rows on ``device``, once (a serving replica on a GPU holds its gallery there)."""
    return as_tensor(rows_ND).to(device)


def default_threads() -> int:
    return max(1, min(torch.get_num_threads(), os.cpu_count() or 1))


def exact_search(
    rows_ND: np.ndarray | torch.Tensor,
    queries_QD: np.ndarray,
    k: int,
    allowed_N: np.ndarray | None = None,
    block: int = BLOCK,
    threads: int | None = None,
    scales_N: torch.Tensor | None = None,
    row_norm_max: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """(scores (Q, k) float32, row indices (Q, k) int64), best first, by inner product; k may exceed the rows.

    ``rows_ND``: float32, float16 or bfloat16 rows (numpy, or a torch tensor on any device). ``allowed_N`` (bool):
    rows outside it score -inf (callers drop those hits). ``threads``: CPU worker threads (default: torch's).
    ``scales_N``: int8 rows' per-row scales (int8_search; CPU). ``row_norm_max``: the rows' largest norm
    (``largest_row_norm``; an index's manifest holds it): with it one query on half-precision CPU rows takes the
    native first pass."""
    rows = as_tensor(rows_ND)
    n = rows.shape[0]
    k = min(k, n)
    queries = torch.from_numpy(np.ascontiguousarray(queries_QD, dtype=np.float32))
    allowed = None if allowed_N is None else torch.from_numpy(np.asarray(allowed_N, dtype=bool))
    if k == 0 or len(queries) == 0:
        return np.zeros((len(queries), k), np.float32), np.zeros((len(queries), k), np.int64)
    if rows.device.type == "cuda":
        scores, index = device_search(rows, queries.to(rows.device), k, allowed)
        return _ordered(scores.cpu().numpy(), index.cpu().numpy())
    threads = threads or default_threads()
    found = None
    if len(queries) == 1 and row_norm_max and rows.dtype in HALF and scales_N is None:
        with _num_threads(threads):
            found = native_first_pass(rows, queries[0], k, allowed, row_norm_max)
    if found is None:
        found = _cpu_search(rows, queries, k, allowed, block, threads, scales_N)
    return _ordered(found[0].numpy(), found[1].numpy())


def _ordered(scores_QK: np.ndarray, index_QK: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Best first; equal scores by the lower row (a (Q, k) sort: k is small)."""
    order = np.lexsort((index_QK, -scores_QK), axis=1)
    return np.take_along_axis(scores_QK, order, axis=1), np.take_along_axis(index_QK, order, axis=1)


def _merge(
    best: tuple[torch.Tensor, torch.Tensor] | None, scores_QB: torch.Tensor, first: int, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The running top k after one more block of scores (rows ``first``.. of the gallery)."""
    take = min(k, scores_QB.shape[1])
    top_s, top_i = torch.topk(scores_QB, take, dim=1, sorted=False)
    top_i = top_i + first
    if best is not None:
        top_s, top_i = torch.cat([best[0], top_s], dim=1), torch.cat([best[1], top_i], dim=1)
        if top_s.shape[1] > k:
            keep_s, keep = torch.topk(top_s, k, dim=1, sorted=False)
            top_s, top_i = keep_s, torch.gather(top_i, 1, keep)
    return top_s, top_i


@dataclass(frozen=True)
class _Scan:
    rows: torch.Tensor
    queries_DQ: torch.Tensor
    k: int
    allowed: torch.Tensor | None
    block: int
    scales: torch.Tensor | None

    def __call__(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The top k of rows start..stop-1. Blocks are widened into one reused buffer and their products written
        into one reused score buffer of SPAN rows, so nothing is allocated per block (a fresh 1.5 MiB tensor per
        block costs page faults that took more time than the arithmetic) and top-k runs once per span."""
        wide = torch.empty(self.block, self.rows.shape[1])
        scores = torch.empty(SPAN, self.queries_DQ.shape[1])
        best = None
        for first in range(start, stop, SPAN):
            last = min(first + SPAN, stop)
            for at in range(first, last, self.block):
                size = min(self.block, last - at)
                if self.rows.dtype == torch.float32:
                    torch.mm(self.rows[at : at + size], self.queries_DQ, out=scores[at - first : at - first + size])
                else:
                    wide[:size].copy_(self.rows[at : at + size])
                    torch.mm(wide[:size], self.queries_DQ, out=scores[at - first : at - first + size])
            best = _merge(best, self._finished(scores[: last - first], first, last), first, self.k)
        assert best is not None
        return best

    def _finished(self, scores_BQ: torch.Tensor, first: int, last: int) -> torch.Tensor:
        """(Q, B) scores of rows first..last-1: int8 codes times their row's scale, disallowed rows -inf."""
        if self.scales is not None:  # the row's scale after the product (B x Q, not B x D)
            scores_BQ = scores_BQ * self.scales[first:last, None]
        scores = scores_BQ.T
        if self.allowed is not None:
            scores = scores.masked_fill(~self.allowed[first:last], float("-inf"))
        return scores


def largest_row_norm(rows_ND: np.ndarray | torch.Tensor, block: int = 65536) -> float:
    """The largest Euclidean norm of the rows as stored (what the native first pass's error bound needs)."""
    rows = as_tensor(rows_ND)
    norms = [rows[first : first + block].float().norm(dim=1).max() for first in range(0, rows.shape[0], block)]
    return float(max(norms)) if norms else 0.0


def first_pass_bound(query: torch.Tensor, dtype: torch.dtype, row_norm_max: float) -> tuple[float, float]:
    """(absolute, relative) error of the native first pass against the float32 product, for any row of norm at most
    ``row_norm_max``: |exact - approx| <= absolute + relative * |approx|. Terms: the query rounded to the rows'
    dtype (Cauchy-Schwarz: R * |q - q_half|), float32 accumulation over D terms, for the first pass and for the
    float32 product it is compared with (2 * gamma_D * R * |q|), the output rounded to the dtype (u / (1 - u) of
    the output), and the smallest half-precision step (underflow)."""
    d = query.shape[0]
    low = query - query.to(dtype).float()
    gamma = d * 2.0**-24 / (1 - d * 2.0**-24)
    u = UNIT_ROUNDOFF[dtype]
    absolute = row_norm_max * (float(low.norm()) + 2 * gamma * float(query.norm()) * (1 + u)) + 2.0**-24
    return 1.01 * absolute, 1.01 * u / (1 - u)  # 1% of slack over the analysis


def native_first_pass(
    rows: torch.Tensor, query_D: torch.Tensor, k: int, allowed: torch.Tensor | None, row_norm_max: float
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The exact top k of one query: the rows' own-dtype GEMV, then the float32 product of every row that the
    error bound cannot rule out. None where the bound leaves too many rows (the full scan is then cheaper)."""
    approx = torch.mv(rows, query_D.to(rows.dtype)).float()
    if allowed is not None:
        if int(allowed.sum()) < k:
            return None
        approx = approx.masked_fill(~allowed, float("-inf"))
    absolute, relative = first_pass_bound(query_D, rows.dtype, row_norm_max)
    slack = absolute + relative * approx.abs().nan_to_num(posinf=0.0)
    floor = torch.topk(approx - slack, k).values[-1]  # the exact k-th best is at least this
    candidates = torch.nonzero(approx + slack >= floor).squeeze(1)
    if len(candidates) > RESCORE_MAX:
        return None
    exact = rows[candidates].float() @ query_D
    top_s, top = torch.topk(exact, k, sorted=False)
    return top_s[None], candidates[top][None]


def _cpu_search(
    rows: torch.Tensor,
    queries: torch.Tensor,
    k: int,
    allowed: torch.Tensor | None,
    block: int,
    threads: int,
    scales: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    n = rows.shape[0]
    scan = _Scan(rows, queries.T.contiguous(), k, allowed, block, scales)
    threads = max(1, min(threads, -(-n // block)))
    if threads == 1:
        return scan(0, n)
    bounds = [round(i * n / threads / block) * block for i in range(threads)] + [n]
    with _num_threads(1), ThreadPoolExecutor(threads) as pool:  # our threads split the rows
        parts = list(pool.map(lambda i: scan(bounds[i], bounds[i + 1]), range(threads)))
    scores, index = torch.cat([s for s, _ in parts], dim=1), torch.cat([i for _, i in parts], dim=1)
    keep_s, keep = torch.topk(scores, k, dim=1, sorted=False)
    return keep_s, torch.gather(index, 1, keep)


class _num_threads:
    """torch's intra-op threads for a while, then the caller's setting again."""

    def __init__(self, threads: int) -> None:
        self.threads = threads

    def __enter__(self) -> None:
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.threads)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.before)


def split_query(queries: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor]:
    """The float32 queries as parts in the rows' dtype whose sum is the query to within float32 rounding: the high
    half-precision part and the remainder (a row x part product in float32 then adds up to the float32 product)."""
    if dtype == torch.float32:
        return [queries]
    high = queries.to(dtype)
    return [high, (queries - high.float()).to(dtype)]


def _float32_product(chunk: torch.Tensor, stacked: torch.Tensor) -> torch.Tensor:
    """cuBLAS reading half-precision operands with a float32 result; where this torch lacks ``out_dtype`` for
    them, the chunk widened (the same values, more traffic)."""
    if chunk.dtype == torch.float32:
        return torch.mm(chunk, stacked)
    try:
        return torch.mm(chunk, stacked, out_dtype=torch.float32)
    except (RuntimeError, TypeError, NotImplementedError):
        return torch.mm(chunk.float(), stacked.float())


def device_search(
    rows: torch.Tensor, queries: torch.Tensor, k: int, allowed: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """One product over the resident rows (in slices bounding the (Q, N) score matrix), float32 out."""
    parts = split_query(queries, rows.dtype)
    stacked = torch.cat(parts).T.contiguous()  # (D, P*Q)
    q = len(queries)
    allowed = None if allowed is None else allowed.to(rows.device)
    best = None
    step = max(1, (1 << 28) // max(1, 4 * stacked.shape[1]))  # at most 256 MiB of scores at a time
    for first in range(0, rows.shape[0], step):
        chunk = rows[first : first + step]
        products = _float32_product(chunk, stacked)
        scores = products.view(len(chunk), len(parts), q).sum(dim=1).T
        if allowed is not None:
            scores = scores.masked_fill(~allowed[first : first + len(chunk)], float("-inf"))
        best = _merge(best, scores, first, k)
    assert best is not None
    return best


@dataclass(frozen=True)
class Int8Rows:
    """Rows quantised to int8 with one scale per row (|error| <= scale/2 per element), beside the stored rows that
    rescore a shortlist exactly."""

    codes: torch.Tensor  # (N, D) int8
    scales: torch.Tensor  # (N,) float32
    rows: torch.Tensor  # (N, D) the stored rows (float32 / float16 / bfloat16)


def quantize_rows(rows_ND: np.ndarray | torch.Tensor, block: int = 65536) -> Int8Rows:
    """Symmetric per-row int8 codes of the rows (scale = max |x| / 127)."""
    rows = as_tensor(rows_ND)
    codes = torch.empty(rows.shape, dtype=torch.int8)
    scales = torch.empty(rows.shape[0], dtype=torch.float32)
    for first in range(0, rows.shape[0], block):
        wide = rows[first : first + block].float()
        scale = wide.abs().amax(dim=1).clamp_min(1e-12) / 127.0
        codes[first : first + block] = torch.round(wide / scale[:, None]).to(torch.int8)
        scales[first : first + block] = scale
    return Int8Rows(codes, scales, rows)


def int8_search(
    index: Int8Rows, queries_QD: np.ndarray, k: int, shortlist: int = 100, threads: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The top k by exact rescoring of each query's ``shortlist`` best rows under the int8 codes: half the bytes of
    bf16 read, the float32 product only for the shortlist (recall@k against exact: `geomoe bench index`)."""
    n = index.codes.shape[0]
    depth = min(max(shortlist, k), n)
    _, candidates = exact_search(index.codes, queries_QD, depth, threads=threads, scales_N=index.scales)
    queries = torch.from_numpy(np.ascontiguousarray(queries_QD, dtype=np.float32))
    picked = torch.from_numpy(candidates)
    rescored = torch.einsum("qsd,qd->qs", index.rows[picked.reshape(-1)].float().reshape(*picked.shape, -1), queries)
    keep_s, keep = torch.topk(rescored, min(k, depth), dim=1, sorted=False)
    return _ordered(keep_s.numpy(), torch.gather(picked, 1, keep).numpy())
