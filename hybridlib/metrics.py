"""Full-depth ranking metrics computed from the ranks of the relevant candidates only.

A retrieval run over a pool of N candidates needs, per query, only the ranks of its relevant
candidates to give average precision, recall@k, nDCG@k and the rank distance: no full sort.
Every metric here takes ``ranks``, an int array ``(n_queries, k)``: row q holds the ranks of
query q's relevant candidates, padded with ``NO_RANK`` (0) where a query has fewer than k.

**Ties** (identical scores, e.g. duplicate sentences) are handled pessimistically, the way
sklearn's ``average_precision_score`` does:

* the rank of a relevant candidate is the number of pool candidates whose score is ``>=`` its
  own (itself included): the last position of its tie group;
* average precision is sklearn's: each relevant candidate contributes the precision at its
  score threshold, ``#relevant scoring >= s / #candidates scoring >= s``;
* recall@k, nDCG@k and the rank distance use one ordering: within a tie group the non-relevant
  candidates come first, then the relevant ones. That is trec_eval's order (pytrec_eval) when
  relevant documents have the smaller document ids (trec_eval breaks ties by descending docno).

>>> scores = np.array([[0.9, 0.2, 0.5, 0.5]])
>>> ranks = relevant_ranks(scores, scores == 0.5)   # the two tied candidates
>>> ranks.tolist(), average_precision_from_ranks(ranks).tolist()
([[3, 3]], [0.6666666666666666])
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np

NO_RANK = 0  # padding in a ranks array: "no relevant candidate in this slot"

# bools compared per block in count_at_least: ~1 MB stays in the L2 cache (3x faster than 16 MB)
_BLOCK_ELEMENTS = 1 << 20


def count_at_least(scores: np.ndarray, thresholds: np.ndarray,
                   bounds: Optional[Sequence[int]] = None) -> np.ndarray:
    """How many candidates of each pool score at least each threshold.

    ``scores``: ``(n, N)`` scores of n queries against N candidates, the candidates of pool p
    being the column slice ``bounds[p]:bounds[p+1]`` (default: one pool, all columns).
    ``thresholds``: ``(n, k)``. Returns int64 ``counts`` of shape ``(n, k, n_pools)`` with
    ``counts[q, j, p] = #{c in pool p : scores[q, c] >= thresholds[q, j]}``.
    Vectorised comparisons, processed in row blocks; no sort.
    """
    scores = np.asarray(scores)
    thresholds = np.asarray(thresholds, dtype=scores.dtype)
    bounds = np.asarray([0, scores.shape[1]] if bounds is None else bounds, dtype=np.int64)
    if np.any(np.diff(bounds) < 0) or bounds[0] < 0 or bounds[-1] > scores.shape[1]:
        raise ValueError(f"bounds {bounds.tolist()} are not increasing column offsets within {scores.shape[1]}")
    n, k = thresholds.shape
    counts = np.zeros((n, k, len(bounds) - 1), dtype=np.int64)
    scores = scores[:, bounds[0]:bounds[-1]]
    nonempty = np.flatnonzero(np.diff(bounds) > 0)
    if len(nonempty) == 0:
        return counts
    # reduceat sums each segment [start_i, start_{i+1}); empty pools are skipped (left at 0)
    starts = bounds[nonempty] - bounds[0]
    rows = max(1, _BLOCK_ELEMENTS // max(1, k * scores.shape[1]))
    for start in range(0, n, rows):
        at_least = scores[start:start + rows, None, :] >= thresholds[start:start + rows, :, None]
        counts[start:start + rows, :, nonempty] = np.add.reduceat(at_least.view(np.uint8), starts,
                                                                  axis=-1, dtype=np.int32)
    return counts


def ranks_of(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """Ranks of given candidates: ``relevant`` is ``(n, k)`` column indices, -1 = none.

    The rank of candidate c for query q is ``#{c' : scores[q, c'] >= scores[q, c]}`` (1-based,
    last position of its tie group). Returns int64 ``(n, k)``, ``NO_RANK`` where relevant is -1.
    """
    relevant = np.asarray(relevant)
    present = relevant >= 0
    own = np.take_along_axis(scores, np.where(present, relevant, 0), axis=1)
    counts = count_at_least(scores, np.where(present, own, np.inf))[..., 0]
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

    Ties: pessimistic ordering (see module doc). NaN for queries without relevant candidates.
    """
    positions = positions_from_ranks(ranks)
    valid = positions > 0
    hits = (valid & (positions <= k)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return hits / _n_relevant(valid, n_relevant)


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
    by the hybrid-batch paper (docs: paper.md). Positions use the pessimistic tie ordering;
    NaN for queries without ranks.
    """
    positions = positions_from_ranks(ranks)
    valid = positions > 0
    high = np.where(valid, positions, 0).max(axis=1, initial=0)
    low = np.where(valid, positions, np.iinfo(np.int64).max).min(axis=1, initial=np.iinfo(np.int64).max)
    return np.where(valid.any(axis=1), (high - low).astype(float), np.nan)
