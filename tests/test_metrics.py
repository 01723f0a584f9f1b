"""Ranking metrics against established implementations: sklearn (AP) and pytrec_eval (R@k, Hit@k, nDCG),
and against direct definitions (the own pool's share of the top k, the rank distance).

Rankings are random, with many tied scores (integer scores from a small range), so the tie
handling documented in hybridlib.metrics is checked, not only the easy case.
"""
import itertools

import numpy as np
import pytest
import pytrec_eval
from sklearn.metrics import average_precision_score

from hybridlib.metrics import (
    NO_RANK,
    average_precision_from_ranks,
    count_at_least,
    hit_at_k,
    ndcg_at_k,
    own_pool_share_at_k,
    positions_from_ranks,
    rank_distance,
    rank_distance_fraction,
    ranks_of,
    ranks_per_pool,
    recall_at_k,
    relevant_ranks,
)


def random_run(seed, n_queries=60, n_candidates=40, max_relevant=6, tie_levels=None):
    """Scores and relevance of random rankings; tie_levels=int gives integer scores (ties)."""
    rng = np.random.default_rng(seed)
    if tie_levels:
        scores = rng.integers(0, tie_levels, size=(n_queries, n_candidates)).astype(np.float32)
    else:
        scores = rng.standard_normal((n_queries, n_candidates)).astype(np.float32)
    relevant = np.zeros_like(scores, dtype=bool)
    for q in range(n_queries):
        chosen = rng.choice(n_candidates, size=rng.integers(1, max_relevant + 1), replace=False)
        relevant[q, chosen] = True
    return scores, relevant


RUNS = [pytest.param(dict(tie_levels=None), id="distinct-scores"),
        pytest.param(dict(tie_levels=5), id="heavy-ties"),
        pytest.param(dict(tie_levels=25), id="some-ties")]


@pytest.mark.parametrize("kind", RUNS)
def test_average_precision_matches_sklearn(kind):
    scores, relevant = random_run(1, **kind)
    ours = average_precision_from_ranks(relevant_ranks(scores, relevant))
    expected = [average_precision_score(relevant[q], scores[q]) for q in range(len(scores))]
    np.testing.assert_allclose(ours, expected, rtol=0, atol=1e-12)


def trec_eval(scores, relevant, measures):
    """pytrec_eval on the same run. Relevant documents get ids that sort *below* the
    non-relevant ones, so trec_eval's tie-break (descending docno) puts them last in a tie:
    the pessimistic order that hybridlib.metrics documents."""
    qrels, run = {}, {}
    for q in range(len(scores)):
        docs = [f"{'a' if relevant[q, c] else 'b'}{c:04d}" for c in range(scores.shape[1])]
        qrels[f"q{q}"] = {d: 1 for d, r in zip(docs, relevant[q]) if r}
        run[f"q{q}"] = {d: float(s) for d, s in zip(docs, scores[q])}
    result = pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)
    return {m: np.array([result[f"q{q}"][m] for q in range(len(scores))])
            for m in next(iter(result.values()))}


@pytest.mark.parametrize("kind", RUNS)
def test_recall_and_ndcg_match_pytrec_eval(kind):
    scores, relevant = random_run(2, **kind)
    ranks = relevant_ranks(scores, relevant)
    expected = trec_eval(scores, relevant, {"recall.1,10", "ndcg_cut.10", "success.1,10"})
    np.testing.assert_allclose(recall_at_k(ranks, 1), expected["recall_1"], atol=1e-12)
    np.testing.assert_allclose(recall_at_k(ranks, 10), expected["recall_10"], atol=1e-12)
    np.testing.assert_allclose(ndcg_at_k(ranks, 10), expected["ndcg_cut_10"], atol=1e-12)
    np.testing.assert_array_equal(hit_at_k(ranks, 1), expected["success_1"])
    np.testing.assert_array_equal(hit_at_k(ranks, 10), expected["success_10"])


@pytest.mark.parametrize("kind", RUNS)
def test_hit_at_k_is_one_relevant_in_the_top_k(kind):
    """Direct definition: sort by score (non-relevant first within a tie), look at the first k."""
    scores, relevant = random_run(6, **kind)
    ranks = relevant_ranks(scores, relevant)
    for k in (1, 3, 10):
        expected = [relevant[q][np.lexsort((relevant[q], -scores[q]))][:k].any() for q in range(len(scores))]
        np.testing.assert_array_equal(hit_at_k(ranks, k), np.array(expected, dtype=float))
    # with several relevant candidates R@k is a share, Hit@k a hit: R@1 <= 1/R
    several = relevant.sum(axis=1) > 1
    assert np.all(recall_at_k(ranks, 1)[several] <= 1 / relevant.sum(axis=1)[several])
    assert np.all(hit_at_k(ranks, 10) >= recall_at_k(ranks, 10))


def test_metrics_with_relevant_missing_from_the_pool_match_trec_eval():
    # trec_eval divides by every relevant document of the qrels, retrieved or not
    scores, relevant = random_run(3, tie_levels=7)
    missing = np.random.default_rng(3).integers(0, 3, size=len(scores))
    ranks = relevant_ranks(scores, relevant)
    n_rel = relevant.sum(axis=1) + missing
    qrels_extra = trec_eval_with_missing(scores, relevant, missing)
    np.testing.assert_allclose(recall_at_k(ranks, 10, n_rel), qrels_extra["recall_10"], atol=1e-12)
    np.testing.assert_allclose(ndcg_at_k(ranks, 10, n_rel), qrels_extra["ndcg_cut_10"], atol=1e-12)


def trec_eval_with_missing(scores, relevant, missing):
    qrels, run = {}, {}
    for q in range(len(scores)):
        docs = [f"{'a' if relevant[q, c] else 'b'}{c:04d}" for c in range(scores.shape[1])]
        qrels[f"q{q}"] = {d: 1 for d, r in zip(docs, relevant[q]) if r}
        qrels[f"q{q}"].update({f"zz-missing{i}": 1 for i in range(missing[q])})
        run[f"q{q}"] = {d: float(s) for d, s in zip(docs, scores[q])}
    result = pytrec_eval.RelevanceEvaluator(qrels, {"recall.10", "ndcg_cut.10"}).evaluate(run)
    return {m: np.array([result[f"q{q}"][m] for q in range(len(scores))]) for m in ("recall_10", "ndcg_cut_10")}


def test_ranks_are_pessimistic_within_ties():
    scores = np.array([[1.0, 1.0, 1.0, 1.0, 0.0]])
    relevant = np.array([[False, True, False, True, False]])
    ranks = relevant_ranks(scores, relevant)
    assert sorted(ranks[0]) == [4, 4]  # every candidate scoring >= counts
    assert positions_from_ranks(ranks).tolist() == [[3, 4]]  # the non-relevant tied ones first
    assert recall_at_k(ranks, 3).tolist() == [0.5]
    assert average_precision_from_ranks(ranks)[0] == pytest.approx(0.5)  # sklearn: 2/4 at one threshold
    assert average_precision_score(relevant[0], scores[0]) == pytest.approx(0.5)


def test_rank_distance_hand_made():
    # query 0: relevant at positions 2, 7, 3 -> 7 - 2; query 1: one relevant -> 0;
    # query 2: a tie of two relevant at rank 5 (positions 4, 5) and one at 9 -> 9 - 4
    ranks = np.array([[2, 7, 3], [6, NO_RANK, NO_RANK], [5, 9, 5]])
    assert rank_distance(ranks).tolist() == [5.0, 0.0, 5.0]
    scores = np.array([[9, 8, 7, 6, 5, 4, 3, 2, 1, 0]], dtype=float)
    relevant = np.isin(np.arange(10), [0, 4, 9])[None]
    assert rank_distance(relevant_ranks(scores, relevant)).tolist() == [9.0]


def test_rank_distance_fraction_divides_by_the_pool():
    ranks = np.array([[2, 7, 3], [6, NO_RANK, NO_RANK], [NO_RANK, NO_RANK, NO_RANK]])
    np.testing.assert_array_equal(rank_distance_fraction(ranks, 10), [0.5, 0.0, np.nan])
    np.testing.assert_array_equal(rank_distance_fraction(ranks, [10, 5, 4]), [0.5, 0.0, np.nan])


def test_rows_without_relevant_are_nan_and_padding_is_ignored():
    ranks = np.array([[NO_RANK, NO_RANK], [1, NO_RANK], [NO_RANK, 2]])
    assert np.isnan(average_precision_from_ranks(ranks)[0])
    assert np.isnan(recall_at_k(ranks, 10)[0]) and np.isnan(ndcg_at_k(ranks, 10)[0])
    assert np.isnan(rank_distance(ranks)[0]) and np.isnan(hit_at_k(ranks, 10)[0])
    assert hit_at_k(ranks, 1)[1:].tolist() == [1.0, 0.0]
    assert average_precision_from_ranks(ranks)[1:].tolist() == [1.0, 0.5]
    assert ndcg_at_k(ranks, 10)[1:].tolist() == pytest.approx([1.0, 1 / np.log2(3)])


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("overwrite", [False, True])
def test_count_at_least_matches_brute_force(workers, overwrite):
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 9, size=(37, 50)).astype(np.float32)  # many ties
    thresholds = rng.integers(-1, 11, size=(37, 4)).astype(np.float32)
    thresholds[0, 0] = np.inf
    brute = (scores[:, None, :] >= thresholds[:, :, None]).sum(-1)
    kept = scores.copy()
    counts = count_at_least(scores, thresholds, workers=workers, overwrite=overwrite)
    np.testing.assert_array_equal(counts, brute)
    assert np.array_equal(scores, kept) != overwrite  # sorted in place only when asked


@pytest.mark.parametrize("workers", [1, 2])
def test_ranks_per_pool_match_brute_force(workers):
    rng = np.random.default_rng(5)
    scores = rng.integers(0, 6, size=(41, 50)).astype(np.float32)
    bounds = [0, 7, 7, 30, 50]  # includes an empty pool
    relevant = np.full((41, 4), -1)
    for p, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
        if hi > lo:
            relevant[:, p] = np.where(rng.random(41) < 0.8, rng.integers(lo, hi, 41), -1)
    within, overall, own_share = ranks_per_pool(scores, relevant, bounds, workers=workers)
    assert own_share is None  # only with own_pool
    for q in range(41):
        for p, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:])):
            if relevant[q, p] < 0:
                assert within[q, p] == overall[q, p] == NO_RANK
                continue
            own = scores[q, relevant[q, p]]
            assert within[q, p] == (scores[q, lo:hi] >= own).sum()
            assert overall[q, p] == (scores[q] >= own).sum()


def test_ranks_per_pool_rejects_a_relevant_candidate_outside_its_pool():
    with pytest.raises(ValueError, match="pool p"):
        ranks_per_pool(np.zeros((1, 4)), np.array([[3, 1]]), [0, 2, 4])


def test_ranks_of_uses_minus_one_as_padding():
    scores = np.array([[0.1, 0.5, 0.3], [0.3, 0.2, 0.1]])
    assert ranks_of(scores, np.array([[1, -1], [2, 0]])).tolist() == [[1, NO_RANK], [3, 1]]


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="shape"):
        relevant_ranks(np.zeros((2, 3)), np.zeros((2, 4), dtype=bool))


def shares_over_tie_orders(scores, members, ks):
    """Direct definition of own_pool_share_at_k: the share of ``members`` in the top k, averaged
    over every order of the candidates that sorts the scores descending (all permutations as
    tie-breakers; small rows only). One value per k of ``ks``."""
    tie_breaks = np.array(list(itertools.permutations(range(len(scores)))))
    orders = np.lexsort((tie_breaks, np.broadcast_to(-scores, tie_breaks.shape)), axis=-1)
    in_top = np.cumsum(np.isin(orders, members), axis=1)  # members among the first j + 1
    return [np.mean(in_top[:, k - 1] / k) for k in ks]


def test_own_pool_share_matches_the_average_over_tie_orders():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 3, size=(12, 7)).astype(np.float32)  # 7 candidates, heavy ties
    bounds = [0, 3, 7]
    own = rng.integers(0, 2, size=12)
    ks = (1, 2, 4, 7)
    expected = np.array([shares_over_tie_orders(scores[q], np.arange(bounds[p], bounds[p + 1]), ks)
                         for q, p in enumerate(own)])
    for j, k in enumerate(ks):
        # expected: a mean of 5040 fractions in float64 (relative error ~ 5040 * 2^-53 < 1e-12);
        # ours adds and divides a handful of small integers
        np.testing.assert_allclose(own_pool_share_at_k(scores, bounds, own, k), expected[:, j], rtol=0, atol=1e-12)
    counts = expected * np.array(ks)
    assert np.any(np.abs(counts - np.round(counts)) > 1e-6)  # the ties do split places (fractional counts)


@pytest.mark.parametrize("workers", [1, 2])
def test_own_pool_share_with_distinct_scores_counts_the_top_k(workers):
    rng = np.random.default_rng(8)
    scores = rng.standard_normal((30, 60)).astype(np.float32)
    bounds = [0, 10, 35, 35, 60]  # includes an empty pool
    own = rng.choice([0, 1, 3], size=30)
    top = np.argsort(-scores, axis=1)[:, :10]
    expected = [((top[q] >= bounds[p]) & (top[q] < bounds[p + 1])).mean() for q, p in enumerate(own)]
    np.testing.assert_array_equal(own_pool_share_at_k(scores, bounds, own, 10, workers=workers), expected)
    # the same from ranks_per_pool's sort, which still ranks the relevant candidates
    relevant = np.where(rng.random((30, 4)) < 0.5, np.array([0, 20, -1, 40]), -1)
    plain = ranks_per_pool(scores, relevant, bounds)
    with_share = ranks_per_pool(scores.copy(), relevant, bounds, own_pool=own, k=10, overwrite=True)
    np.testing.assert_array_equal(with_share.own_share, expected)
    np.testing.assert_array_equal(with_share.within, plain.within)
    np.testing.assert_array_equal(with_share.overall, plain.overall)


def test_own_pool_share_rejects_bad_k_and_pools():
    scores = np.zeros((2, 5))
    with pytest.raises(ValueError, match="k = 6"):
        own_pool_share_at_k(scores, [0, 2, 5], 0, k=6)
    with pytest.raises(ValueError, match="own_pool"):
        own_pool_share_at_k(scores, [0, 2, 5], [0, 2], k=2)
