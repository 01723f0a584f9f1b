"""Full-depth ranking metrics computed from the ranks of the relevant candidates only.

A retrieval run over a pool of N candidates needs, per query, only the ranks of its relevant
candidates to give average precision, recall@k, hit@k, nDCG@k and the rank distance, not the
ranked list (``count_at_least`` and ``ranks_per_pool`` find those ranks). These metrics take
``ranks``, an int array ``(n_queries, k)``: row q holds the ranks of query q's relevant
candidates, padded with ``NO_RANK`` (0) where a query has fewer than k. The language-bias
measure ``own_pool_share_at_k`` looks at the whole top k instead (``ranks_per_pool`` gives it
from the same sort).

**Ties** (identical scores, e.g. duplicate sentences) are handled pessimistically, the way
sklearn's ``average_precision_score`` does:

* the rank of a relevant candidate is the number of pool candidates whose score is ``>=`` its
  own (itself included): the last position of its tie group;
* average precision is sklearn's: each relevant candidate contributes the precision at its
  score threshold, ``#relevant scoring >= s / #candidates scoring >= s``;
* recall@k, hit@k, nDCG@k and the rank distance use one ordering: within a tie group the non-relevant
  candidates come first, then the relevant ones. That is trec_eval's order (pytrec_eval) when
  relevant documents have the smaller document ids (trec_eval breaks ties by descending docno).

>>> scores = np.array([[0.9, 0.2, 0.5, 0.5]])
>>> ranks = relevant_ranks(scores, scores == 0.5)   # the two tied candidates
>>> ranks.tolist(), average_precision_from_ranks(ranks).tolist()
([[3, 3]], [0.6666666666666666])
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple, Optional, Sequence, Union

import numpy as np

NO_RANK = 0  # padding in a ranks array: "no relevant candidate in this slot"
# Scores of at most this many (query, candidate) pairs are held at once (128 MB of float32).
SCORE_BLOCK = 1 << 25


def block_rows(width: int) -> int:
    """How many query rows of a score matrix ``width`` candidates wide fit in ``SCORE_BLOCK`` (at least 1)."""
    return max(1, SCORE_BLOCK // max(1, width))


def count_at_least(scores: np.ndarray, thresholds: np.ndarray, *, workers: Optional[int] = None,
                   overwrite: bool = False) -> np.ndarray:
    """How many candidates score at least each threshold: ``(n, N)`` scores and ``(n, k)``
    thresholds give int64 ``counts[q, j] = #{c : scores[q, c] >= thresholds[q, j]}``.

    Each row is sorted (numpy's SIMD sort) and every threshold located by binary search:
    ``N log N`` work per row whatever k is, instead of ``k N`` comparisons. Rows are split over
    ``workers`` threads (default: the CPUs this process may use; numpy releases the GIL while
    it sorts). ``overwrite=True`` sorts a C-contiguous ``scores`` in place (a scratch buffer)
    instead of a copy.
    """
    scores = np.asarray(scores)
    thresholds = np.asarray(thresholds, dtype=scores.dtype)
    counts = np.zeros(thresholds.shape, dtype=np.int64)

    def count_rows(rows: slice) -> None:
        block = _scratch(scores, rows, overwrite)
        block.sort(axis=1)
        counts[rows] = _count_at_least_sorted(block, thresholds[rows])

    _over_row_chunks(count_rows, len(counts), workers)
    return counts


class PoolRanks(NamedTuple):
    """``ranks_per_pool``'s result: ranks within each pool and among all candidates, both
    ``(n, n_pools)`` int64; ``own_share`` ``(n,)``, the share of the top k from the query's own
    pool (None unless ``own_pool`` was given)."""

    within: np.ndarray
    overall: np.ndarray
    own_share: Optional[np.ndarray] = None


def ranks_per_pool(scores: np.ndarray, relevant: np.ndarray, bounds: Sequence[int], *,
                   own_pool: Union[int, np.ndarray, None] = None, k: int = 10,
                   workers: Optional[int] = None, overwrite: bool = False) -> PoolRanks:
    """Ranks of one relevant candidate per pool, within its pool and among all candidates.

    ``scores``: ``(n, N)``, the candidates of pool p being the columns ``bounds[p]:bounds[p+1]``;
    ``relevant[q, p]``: the column of query q's relevant candidate in pool p, or -1 (LAReQA:
    a question's answer in each language). Returns ``PoolRanks(within, overall, own_share)``:
    int64 ranks, both ``(n, n_pools)``, ``NO_RANK`` where ``relevant`` is -1; rank = number of
    candidates (of the pool, of all pools) scoring ``>=`` the relevant one. Within-pool ranks
    are counted by comparison, overall ranks as in ``count_at_least``; ``workers`` and
    ``overwrite`` as there. With ``own_pool`` (the pool index of each query, or one for all),
    ``own_share`` is ``own_pool_share_at_k`` of the top ``k``, from the same sort of each row.
    """
    scores = np.asarray(scores)
    relevant = np.asarray(relevant, dtype=np.int64)
    bounds = np.asarray(bounds, dtype=np.int64)
    present = relevant >= 0
    if relevant.shape != (len(scores), len(bounds) - 1):
        raise ValueError(f"relevant {relevant.shape} must be (queries, pools) = {(len(scores), len(bounds) - 1)}")
    if np.any(np.diff(bounds) < 0) or bounds[0] < 0 or bounds[-1] > scores.shape[1]:
        raise ValueError(f"bounds {bounds.tolist()} are not increasing column offsets within {scores.shape[1]}")
    if np.any(present & ((relevant < bounds[:-1]) | (relevant >= bounds[1:]))):
        raise ValueError("relevant[q, p] must be a column of pool p (bounds[p] <= column < bounds[p+1]) or -1")
    within = np.zeros(relevant.shape, dtype=np.int64)
    overall = np.zeros(relevant.shape, dtype=np.int64)
    pools = None if own_pool is None else _check_own_pool(own_pool, len(scores), len(bounds) - 1, k, scores.shape[1])
    share = None if pools is None else np.zeros(len(scores))

    def rank_rows(rows: slice) -> None:
        block = _scratch(scores, rows, overwrite)
        level = np.take_along_axis(block, np.where(present[rows], relevant[rows], 0), axis=1)
        level = np.where(present[rows], level, np.inf).astype(block.dtype)  # the relevant candidates' scores
        for p, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if present[rows, p].any():
                at_least = block[:, lo:hi] >= level[:, p:p + 1]
                within[rows, p] = np.add.reduce(at_least.view(np.uint8), axis=1, dtype=np.int64)
        kept = None if pools is None else _own_columns(block, pools[rows], bounds)
        block.sort(axis=1)
        overall[rows] = _count_at_least_sorted(block, level)
        if kept is not None:
            share[rows] = _share_in_top(block, kept, k)

    _over_row_chunks(rank_rows, len(scores), workers)
    return PoolRanks(np.where(present, within, NO_RANK), np.where(present, overall, NO_RANK), share)


def own_pool_share_at_k(scores: np.ndarray, bounds: Sequence[int], own_pool: Union[int, np.ndarray],
                        k: int = 10, *, workers: Optional[int] = None) -> np.ndarray:
    """Share of each query's top k (among all candidates) that comes from its own pool.

    ``scores``: ``(n, N)``, pool p being the columns ``bounds[p]:bounds[p+1]`` (as in
    ``ranks_per_pool``); ``own_pool``: the pool index of each query (or one for all). In the
    LAReQA multilingual pool, with one pool per language, this is the share of the top k in the
    query's own language: a readable measure of language bias (a language-agnostic model
    returns about the own language's share of the pool, ~1/11 on XQuAD-R; a biased one more).
    Ties at the k-th score are shared out as by a uniformly random order of the tied
    candidates: the tied own-pool candidates count ``(k - #scoring above) / #tied`` each, so
    the value is the expected share over tie orders. Returns float ``(n,)`` in [0, 1].
    """
    scores = np.asarray(scores)
    n_pools = len(bounds) - 1
    return ranks_per_pool(scores, np.full((len(scores), n_pools), -1), bounds, own_pool=own_pool, k=k,
                          workers=workers).own_share


def _check_own_pool(own_pool, n_rows: int, n_pools: int, k: int, width: int) -> np.ndarray:
    pools = np.broadcast_to(np.asarray(own_pool, dtype=np.int64), (n_rows,))
    if np.any((pools < 0) | (pools >= n_pools)):
        raise ValueError(f"own_pool must be pool indices in [0, {n_pools})")
    if not 1 <= k <= width:
        raise ValueError(f"k = {k} must be between 1 and the number of candidates ({width})")
    return pools


def _own_columns(block: np.ndarray, pools: np.ndarray, bounds: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """Copies of each row's own-pool scores, grouped by pool: [(rows of the block, their scores)]."""
    groups = []
    for p in np.unique(pools):
        rows = np.flatnonzero(pools == p)
        groups.append((rows, block[rows, bounds[p]:bounds[p + 1]]))  # a copy (fancy indexing): kept past the sort
    return groups


def _share_in_top(ordered: np.ndarray, groups: list[tuple[np.ndarray, np.ndarray]], k: int) -> np.ndarray:
    """Share of the top k (rows of ``ordered``, sorted ascending) taken by the columns in ``groups``.

    The k-th largest score t splits a row into the candidates above t (all in the top k) and
    those tied at t, which fill the ``k - #above`` remaining places in a random order.
    """
    level = ordered[:, -k]
    levels = np.stack([level, np.nextafter(level, np.array(np.inf, dtype=level.dtype))], axis=1)
    at_least, above = _count_at_least_sorted(ordered, levels).T
    share = np.zeros(len(ordered))
    for rows, own in groups:
        t = level[rows, None]
        own_above = (own > t).sum(axis=1)
        own_tied = (own == t).sum(axis=1)
        share[rows] = (own_above + (k - above[rows]) * own_tied / (at_least[rows] - above[rows])) / k
    return share


def _scratch(scores: np.ndarray, rows: slice, overwrite: bool) -> np.ndarray:
    """Rows of ``scores`` that may be sorted in place: a view (``overwrite``) or a copy."""
    if overwrite and scores.flags.c_contiguous:
        return scores[rows]
    return np.array(scores[rows], order="C")


def _over_row_chunks(function, n_rows: int, workers: Optional[int]) -> None:
    """``function(rows)`` on ``workers`` contiguous row slices covering ``range(n_rows)``, in threads."""
    workers = max(1, min(workers or _available_cpus(), n_rows))
    edges = np.linspace(0, n_rows, workers + 1).astype(int)
    chunks = [slice(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]
    if len(chunks) <= 1:
        list(map(function, chunks))
        return
    with ThreadPoolExecutor(len(chunks)) as pool:
        list(pool.map(function, chunks))


def _available_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def _count_at_least_sorted(ordered: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``#{c : ordered[r, c] >= values[r, j]}`` for C-contiguous rows sorted ascending: one
    binary search of every value at once (numpy's searchsorted takes one row at a time)."""
    width = ordered.shape[1]
    flat = ordered.reshape(-1)  # a view: row r, column c is flat[r * width + c]
    row_start = np.arange(len(ordered))[:, None] * width
    lo = np.zeros(values.shape, dtype=np.int64)  # #{c : ordered[r, c] < value} lies in [lo, hi]
    hi = np.full(values.shape, width, dtype=np.int64)
    for _ in range(width.bit_length()):  # the interval halves each step
        active = lo < hi
        mid = (lo + hi) >> 1
        right = active & (flat[row_start + np.minimum(mid, width - 1)] < values)
        lo = np.where(right, mid + 1, lo)
        hi = np.where(active & ~right, mid, hi)
    return width - lo


def ranks_of(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Ranks of given candidates: ``relevant`` is ``(n, k)`` column indices, -1 = none.

    The rank of candidate c for query q is ``#{c' : scores[q, c'] >= scores[q, c]}`` (1-based,
    last position of its tie group). Returns int64 ``(n, k)``, ``NO_RANK`` where relevant is -1.
    """
    relevant = np.asarray(relevant)
    present = relevant >= 0
    own = np.take_along_axis(scores, np.where(present, relevant, 0), axis=1)
    counts = count_at_least(scores, np.where(present, own, np.inf))
    return np.where(present, counts, NO_RANK)


def relevant_ranks(scores: np.ndarray, relevant_mask: np.ndarray) -> np.ndarray:
    """Ranks of every relevant candidate of each query in a full ranking of the pool.

    ``scores`` and ``relevant_mask``: ``(n_queries, n_candidates)``. Returns int64
    ``(n_queries, k)`` with k the largest number of relevant candidates of a query, padded with
    ``NO_RANK``; rank = number of candidates scoring ``>=`` the relevant one (see module doc).
    """
    relevant_mask = np.asarray(relevant_mask, dtype=bool)
    if relevant_mask.shape != np.shape(scores):
        raise ValueError(f"scores {np.shape(scores)} and relevant_mask {relevant_mask.shape} differ in shape")
    k = max(1, int(relevant_mask.sum(axis=1).max(initial=0)))
    # column indices of the relevant candidates, left-aligned, -1 padded
    order = np.argsort(~relevant_mask, axis=1, kind="stable")[:, :k]
    index = np.where(np.take_along_axis(relevant_mask, order, axis=1), order, -1)
    return ranks_of(np.asarray(scores), index)


def _sorted_groups(ranks: np.ndarray):
    """Sorted ranks (padding last), the valid mask, and for each slot the number of valid
    ranks ``<=`` its own (the sklearn numerator: relevant items scoring >= it)."""
    ranks = np.asarray(ranks, dtype=np.int64)
    if ranks.ndim != 2:
        raise ValueError(f"ranks must be a 2-d array (queries x relevant), got shape {ranks.shape}")
    big = np.iinfo(np.int64).max
    ordered = np.sort(np.where(ranks > 0, ranks, big), axis=1)
    valid = ordered != big
    # the index of the last slot holding the same rank = (number of ranks <= this one) - 1
    is_last = np.ones_like(valid)
    is_last[:, :-1] = ordered[:, :-1] != ordered[:, 1:]
    slot = np.arange(ordered.shape[1])
    last = np.minimum.accumulate(np.where(is_last, slot, slot[-1] if len(slot) else 0)[:, ::-1], axis=1)[:, ::-1]
    at_most = last + 1
    return ordered, valid, at_most, slot


def _n_relevant(valid: np.ndarray, n_relevant) -> np.ndarray:
    found = valid.sum(axis=1)
    if n_relevant is None:
        return found.astype(float)
    n_relevant = np.broadcast_to(np.asarray(n_relevant, dtype=float), found.shape)
    if np.any(n_relevant < found):
        raise ValueError("n_relevant is smaller than the number of ranks given")
    return n_relevant


def positions_from_ranks(ranks: np.ndarray) -> np.ndarray:
    """1-based positions of the relevant candidates in the pessimistic ordering of ties.

    Within a tie group of t candidates of which m are relevant (all with rank r), the relevant
    ones take positions r-m+1 .. r. Returns the positions sorted ascending, padded with
    ``NO_RANK`` at the end of each row.
    """
    ordered, valid, at_most, slot = _sorted_groups(ranks)
    positions = ordered - (at_most - 1 - slot)
    return np.where(valid, positions, NO_RANK)


def average_precision_from_ranks(ranks: np.ndarray, n_relevant=None) -> np.ndarray:
    """Average precision of each query over the full ranking, as sklearn computes it.

    ``AP = 1/R * sum_j (#relevant with rank <= rank_j) / rank_j`` over the relevant candidates
    j; without ties this is ``mean_i (i / rank_(i))`` over the sorted ranks. Equals
    ``sklearn.metrics.average_precision_score(y_true, scores)`` including tied scores (each
    relevant candidate gets the precision at its score threshold). LAReQA (Roy et al. 2020)
    and xtreme's ``utils_lareqa.py`` use this definition of mAP.
    ``n_relevant`` (default: the number of ranks given) is R, for relevant candidates missing
    from the pool. Queries without relevant candidates give NaN.
    """
    ordered, valid, at_most, _ = _sorted_groups(ranks)
    precision = np.where(valid, at_most / np.where(valid, ordered, 1), 0.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return precision.sum(axis=1) / _n_relevant(valid, n_relevant)


def recall_at_k(ranks: np.ndarray, k: int, n_relevant=None) -> np.ndarray:
    """Fraction of each query's relevant candidates in the top k (trec_eval ``recall_k``).

    With several relevant candidates this is a *share*, not a hit: in the LAReQA multilingual
    pool a question has one relevant answer per language (11 on XQuAD-R, 2-4 on MLQA-R), so
    its R@1 is at most 1/11 on XQuAD-R. ``hit_at_k`` says whether any relevant one is in the
    top k. Ties: pessimistic ordering (see module doc). NaN for queries without relevant candidates.
    """
    positions = positions_from_ranks(ranks)
    valid = positions > 0
    hits = (valid & (positions <= k)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / _n_relevant(valid, n_relevant)


def hit_at_k(ranks: np.ndarray, k: int) -> np.ndarray:
    """Whether at least one relevant candidate of each query is in the top k: 1.0 or 0.0
    (the hit rate, trec_eval ``success_k``; equal to ``recall_at_k`` when a query has one
    relevant candidate). Ties: pessimistic ordering (module doc). NaN for queries without
    relevant candidates.
    """
    positions = positions_from_ranks(ranks)  # ascending: the first column is the best position
    found = positions[:, 0] > 0 if positions.shape[1] else np.zeros(len(positions), dtype=bool)
    return np.where(found, (found & (positions[:, 0] <= k)).astype(float), np.nan)


def ndcg_at_k(ranks: np.ndarray, k: int, n_relevant=None) -> np.ndarray:
    """nDCG@k with binary relevance (trec_eval ``ndcg_cut_k``, gain 1, discount log2(pos+1)).

    DCG sums ``1 / log2(position + 1)`` over relevant candidates in the top k; the ideal DCG
    puts ``min(R, k)`` relevant candidates first. Ties: pessimistic ordering (module doc).
    NaN for queries without relevant candidates.
    """
    positions = positions_from_ranks(ranks)
    valid = positions > 0
    top = valid & (positions <= k)
    dcg = np.where(top, 1.0 / np.log2(np.where(top, positions, 1) + 1.0), 0.0).sum(axis=1)
    discounts = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(2, k + 2)))])
    ideal = discounts[np.minimum(_n_relevant(valid, n_relevant), k).astype(int)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(ideal > 0, dcg / np.where(ideal > 0, ideal, 1.0), np.nan)


def rank_distance(ranks: np.ndarray) -> np.ndarray:
    """Language bias of each query: max - min position of its relevant candidates.

    In the multilingual pool the relevant candidates of a query are its parallel answers in
    every language; a model without language preference ranks them next to each other
    (distance R - 1 at best). The language-bias measure of Huang et al. (SIGIR 2023) as used
    by the hybrid-batch paper (docs/paper.md). The value is in positions, so it grows with the
    pool: compare pools of different sizes with ``rank_distance_fraction``. Positions use the
    pessimistic tie ordering; NaN for queries without ranks.
    """
    positions = positions_from_ranks(ranks)
    valid = positions > 0
    high = np.where(valid, positions, 0).max(axis=1, initial=0)
    low = np.where(valid, positions, np.iinfo(np.int64).max).min(axis=1, initial=np.iinfo(np.int64).max)
    return np.where(valid.any(axis=1), (high - low).astype(float), np.nan)


def rank_distance_fraction(ranks: np.ndarray, pool_size) -> np.ndarray:
    """``rank_distance`` divided by the size of the pool: the distance as a fraction of the pool.

    The raw rank distance counts positions, so the same model gives a larger one on a larger
    pool (e.g. the full XQuAD-R pool of 13,014 candidates vs. a subset); the fraction can be set
    beside other pools and datasets. Its floor is (R - 1) / N for R relevant candidates in a
    pool of N; R positions drawn at random lie (R - 1) / (R + 1) of the pool apart on average
    (0.83 for XQuAD-R's 11 answers, 0.33-0.6 for MLQA-R's 2-4). ``pool_size``: N, one for all
    queries or one per query.
    """
    return rank_distance(ranks) / np.asarray(pool_size, dtype=float)
