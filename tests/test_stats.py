"""Tests of hybridlib.stats: bootstrap intervals over clusters and runs, paired tests, claim verdicts."""
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from hybridlib.data import LaReQA, paragraph_clusters
from hybridlib.errors import HybridlibError
from hybridlib.paper import PAPER_POOL_SIZES, paper_difference, smallest_claimed_gain
from hybridlib.stats import (
    CLAIM_COLUMNS,
    CLAIMS,
    NONINFERIORITY_MARGIN,
    PER_QUERY_COLUMNS,
    TEST_COLUMNS,
    VERDICTS,
    StatsError,
    bootstrap_ci,
    claim_verdicts,
    label_seen_languages,
    paired_tests,
    unseen_language_split,
)
from hybridlib.stats.claims import DAPT_CLAIMS
from hybridlib.stats.resampling import percentile_p_value

MONO, CROSS, MULTI = "monolingual", "crosslingual", "multilingual"


def per_query(cells, strategy="hybrid", seed=0, setting=MONO, metric="mAP", model="m", dataset="xquad-r"):
    """A per-query frame from {(query_lang, pool_lang): {query_id: value}}."""
    rows = [(model, strategy, seed, dataset, setting, q, p, qid, metric, float(v))
            for (q, p), values in cells.items() for qid, v in values.items()]
    return pd.DataFrame(rows, columns=list(PER_QUERY_COLUMNS))


def cell_values(values, ids=None):
    ids = range(len(values)) if ids is None else ids
    return dict(zip(ids, values))


def eval_macro(frame):
    """The evaluation's macro average: mean over (query_lang, pool_lang) of the mean over queries."""
    return frame.groupby(["query_lang", "pool_lang"])["value"].mean().mean()


def runs(cells_of_run, strategy="hybrid", **kwargs):
    """One strategy's runs: ``cells_of_run[seed]`` are the cells of run ``seed``."""
    return pd.concat([per_query(cells, strategy=strategy, seed=s, **kwargs) for s, cells in enumerate(cells_of_run)],
                     ignore_index=True)


# ----------------------------------------------------------------------------- bootstrap_ci
def test_constant_values_give_zero_width_interval():
    cells = {(l, l): cell_values(np.full(20, 0.7)) for l in ("en", "de", "ar")}
    frame = runs([cells, cells])
    row = bootstrap_ci(frame, bootstrap_samples=200).iloc[0]
    assert row["mean"] == pytest.approx(0.7, abs=1e-12)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((0.7, 0.7), abs=1e-12)
    assert (row["n_runs"], row["n_queries"], row["n_clusters"], row["n_cells"]) == (2, 20, 20, 3)
    assert row["resampling_unit"] == "question ids and training runs"


def test_mean_is_the_evaluation_macro_average_with_unequal_query_counts():
    rng = np.random.default_rng(1)
    mono = {("en", "en"): cell_values(rng.random(30)),
            ("de", "de"): cell_values(rng.random(10)),
            ("ar", "ar"): cell_values(rng.random(20), ids=range(5, 25))}
    cross = {("en", "de"): cell_values(rng.random(8), ids=range(2, 10)),
             ("de", "en"): cell_values(rng.random(25))}
    multi = {("en", "all"): cell_values(rng.random(30)), ("de", "all"): cell_values(rng.random(4))}
    frames = [per_query(mono, seed=s) for s in (0, 1)] + [per_query(cross, setting=CROSS),
                                                          per_query(multi, setting=MULTI)]
    for frame in frames[1:]:
        frame["value"] = rng.random(len(frame))  # seed 1 differs from seed 0
    frame = pd.concat(frames, ignore_index=True)
    clusters = {i: i // 3 for i in range(30)}
    result = bootstrap_ci(frame, clusters=clusters, bootstrap_samples=50).set_index("setting")
    mono_rows = frame[frame["setting"] == MONO]
    expected_mono = np.mean([eval_macro(mono_rows[mono_rows["seed"] == s]) for s in (0, 1)])
    assert result.loc[MONO, "mean"] == pytest.approx(expected_mono, rel=1e-12)
    assert result.loc[CROSS, "mean"] == pytest.approx(eval_macro(frames[2]), rel=1e-12)
    assert result.loc[MULTI, "mean"] == pytest.approx(eval_macro(frames[3]), rel=1e-12)
    assert result.loc[MONO, "n_queries"] == 30 and result.loc[MONO, "n_clusters"] == 10  # ids 0..29 (ar 5..24)
    assert result.loc[CROSS, "n_cells"] == 2 and result.loc[CROSS, "n_clusters"] == 9  # ids 0..24
    assert result.loc[MONO, "resampling_unit"] == "clusters and training runs"
    no_pool = bootstrap_ci(frames[3].assign(pool_lang=None), bootstrap_samples=50).iloc[0]
    assert no_pool["mean"] == pytest.approx(eval_macro(frames[3]), rel=1e-12)


def test_the_same_resampled_clusters_are_used_in_every_cell():
    # A query's value in de is 1 - its value in en: the macro average is 0.5 in every replicate
    # only if both cells see the same drawn ids.
    x = np.random.default_rng(2).random(50)
    frame = per_query({("en", "en"): cell_values(x), ("de", "de"): cell_values(1 - x)})
    for clusters in (None, {i: i // 5 for i in range(50)}):
        row = bootstrap_ci(frame, clusters=clusters, bootstrap_samples=300).iloc[0]
        assert row["ci_high"] - row["ci_low"] == pytest.approx(0.0, abs=1e-12)
    single = bootstrap_ci(frame[frame["query_lang"] == "en"], bootstrap_samples=300).iloc[0]
    assert single["ci_high"] - single["ci_low"] > 0.05  # the cells alone do vary


def test_copies_of_a_question_in_its_cluster_give_the_one_question_interval():
    # Clusters, not questions, are the unit: a cluster of three copies of one question weighs as
    # much as that question alone. The cluster labels sort like the single ids, so both frames
    # see the same draws (streams are keyed by the number of clusters).
    rng = np.random.default_rng(3)
    n = 40
    values = {(l, l): rng.random(n) for l in ("en", "de")}
    single = runs([{k: cell_values(v + s / 100, ids=[f"q{i:02d}" for i in range(n)]) for k, v in values.items()}
                   for s in range(2)])
    copies = runs([{k: {f"q{i:02d}-{c}": v[i] + s / 100 for i in range(n) for c in range(3)}
                    for k, v in values.items()} for s in range(2)])
    clusters = {f"q{i:02d}-{c}": f"q{i:02d}" for i in range(n) for c in range(3)}
    one = bootstrap_ci(single, bootstrap_samples=500, seed=4).iloc[0]
    clustered = bootstrap_ci(copies, clusters=clusters, bootstrap_samples=500, seed=4).iloc[0]
    # the same sums in another order: equal to rounding (a few ulps of values below 2)
    for column in ("mean", "ci_low", "ci_high"):
        assert clustered[column] == pytest.approx(one[column], rel=1e-12)
    assert (clustered["n_queries"], clustered["n_clusters"]) == (3 * n, n)
    as_questions = bootstrap_ci(copies, bootstrap_samples=500, seed=4).iloc[0]  # copies taken as independent
    assert as_questions["ci_high"] - as_questions["ci_low"] < 0.8 * (one["ci_high"] - one["ci_low"])


def test_run_offsets_widen_the_interval_to_the_spread_of_the_runs():
    # Every question has the same value in a run, so only the runs vary: three runs at 0.45, 0.5
    # and 0.55. The mean of three runs drawn with replacement is 0.45 or 0.55 with probability
    # 1/27 each (> 2.5%), so the 95% percentile interval is exactly [0.45, 0.55].
    frame = runs([{("en", "en"): cell_values(np.full(30, 0.5 + offset))} for offset in (-0.05, 0.0, 0.05)])
    row = bootstrap_ci(frame, bootstrap_samples=4000).iloc[0]
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((0.5, 0.45, 0.55))
    assert row["run_sd"] == pytest.approx(0.05)
    fixed = bootstrap_ci(frame, bootstrap_samples=4000, resample_runs=False).iloc[0]
    assert (fixed["ci_low"], fixed["ci_high"]) == pytest.approx((0.5, 0.5))
    assert fixed["resampling_unit"] == "question ids (training runs fixed)"


def test_fixed_seed_is_deterministic():
    rng = np.random.default_rng(3)
    frame = per_query({("en", "en"): cell_values(rng.random(40)), ("de", "de"): cell_values(rng.random(40))})
    first = bootstrap_ci(frame, bootstrap_samples=200, seed=7)
    pd.testing.assert_frame_equal(first, bootstrap_ci(frame, bootstrap_samples=200, seed=7))
    other = bootstrap_ci(frame, bootstrap_samples=200, seed=8)
    assert (first["ci_low"] != other["ci_low"]).any()
    both = pd.concat([frame, frame.assign(strategy="x-y", value=frame["value"] * 0.9)])
    pd.testing.assert_frame_equal(paired_tests(both, bootstrap_samples=200, seed=7),
                                  paired_tests(both, bootstrap_samples=200, seed=7))


# Monte Carlo error of a percentile interval's end from B replicates: the 2.5% quantile has a
# standard error of sqrt(p (1 - p) / B) / phi(1.96) sd = 0.06 sd for B = 2000, i.e. 3% of the
# half-width 1.96 sd; the tolerance of 10% of the half-width is three such errors.
@pytest.mark.parametrize("sizes", [(3000,), (3000, 1000)])
def test_interval_matches_normal_approximation(sizes):
    # Independent values per cell: the macro mean has variance sum_k var_k / n_k / K^2.
    rng = np.random.default_rng(4)
    cells = {(l, l): cell_values(rng.gamma(2.0, 0.2, size=n)) for l, n in zip(("en", "de"), sizes)}
    row = bootstrap_ci(per_query(cells), bootstrap_samples=2000).iloc[0]
    values = list(cells.values())
    mean = np.mean([np.mean(list(v.values())) for v in values])
    sd = np.sqrt(sum(np.var(list(v.values()), ddof=1) / len(v) for v in values)) / len(values)
    assert row["mean"] == pytest.approx(mean, rel=1e-12)
    half_width = 1.96 * sd
    assert row["ci_low"] == pytest.approx(mean - half_width, abs=0.1 * half_width)
    assert row["ci_high"] == pytest.approx(mean + half_width, abs=0.1 * half_width)


def test_clustered_interval_matches_the_variance_of_cluster_means():
    # 600 clusters of 5 questions sharing a cluster effect: with equal sizes the mean is the mean
    # of the cluster means, whose variance is var(cluster means) / n_clusters (tolerance as above).
    rng = np.random.default_rng(5)
    n_clusters, size = 600, 5
    values = np.repeat(rng.normal(0.5, 0.2, n_clusters), size) + rng.normal(0, 0.05, n_clusters * size)
    frame = per_query({("en", "en"): cell_values(values)})
    clusters = {i: i // size for i in range(n_clusters * size)}
    row = bootstrap_ci(frame, clusters=clusters, bootstrap_samples=2000).iloc[0]
    half_width = 1.96 * np.sqrt(np.var(values.reshape(n_clusters, size).mean(axis=1), ddof=1) / n_clusters)
    assert row["ci_low"] == pytest.approx(values.mean() - half_width, abs=0.1 * half_width)
    assert row["ci_high"] == pytest.approx(values.mean() + half_width, abs=0.1 * half_width)


# ----------------------------------------------------------------------------- paired_tests
def two_strategies(a_cells, b_cells, **kwargs):
    """Strategy hybrid with ``a_cells`` and x-y with ``b_cells``; test them as hybrid - x-y."""
    return pd.concat([per_query(a_cells, strategy="hybrid", **kwargs), per_query(b_cells, strategy="x-y", **kwargs)],
                     ignore_index=True)


def hybrid_minus_xy(frame, **kwargs):
    return paired_tests(frame, [("hybrid", "x-y")], **kwargs).iloc[0]


def test_identical_strategies_give_p_one_and_zero_difference():
    rng = np.random.default_rng(5)
    cells = {(q, p): cell_values(rng.random(40)) for q in ("en", "de") for p in ("en", "de") if q != p}
    row = hybrid_minus_xy(two_strategies(cells, cells, setting=CROSS), bootstrap_samples=500)
    assert row["p_value"] == 1.0
    assert row["mean_diff"] == 0.0
    assert (row["ci_low"], row["ci_high"]) == (0.0, 0.0)
    assert (row["n_queries"], row["n_clusters"], row["n_runs_a"], row["n_runs_b"]) == (40, 40, 1, 1)
    assert list(paired_tests(two_strategies(cells, cells, setting=CROSS), bootstrap_samples=50).columns) == TEST_COLUMNS


def test_identical_strategies_with_several_runs_give_an_interval_around_zero():
    # Runs are not paired across strategies: the same three runs for both strategies still give
    # a spread (each side draws its runs), centred on 0, and p near 1.
    rng = np.random.default_rng(6)
    base = rng.random(60)
    cells_of_run = [{(l, l): cell_values(base + offset) for l in ("en", "de")} for offset in (-0.03, 0.0, 0.04)]
    frame = pd.concat([runs(cells_of_run, strategy="hybrid"), runs(cells_of_run, strategy="x-y")])
    row = hybrid_minus_xy(frame, clusters={i: i // 4 for i in range(60)}, bootstrap_samples=2000)
    assert row["mean_diff"] == 0.0
    assert row["ci_low"] < -0.01 and row["ci_high"] > 0.01  # the run spread
    # The difference of two independent, identically drawn sides is symmetric about 0. Monte
    # Carlo error of each end with B = 2000: 0.06 sd (see the normal-approximation test), so
    # low + high has an error of 0.085 sd = 2% of the width (3.9 sd); 10% is over four errors.
    assert abs(row["ci_low"] + row["ci_high"]) < 0.1 * (row["ci_high"] - row["ci_low"])
    # p = 2 (1 + min(#<= 0, #>= 0)) / (B + 1): about 1, less twice the binomial sd of a half, 2 / sqrt(B)
    assert row["p_value"] > 1 - 8 / np.sqrt(2000)
    assert (row["n_runs_a"], row["n_runs_b"], row["n_clusters"]) == (3, 3, 15)
    assert row["resampling_unit"] == "clusters and training runs"


def test_run_offsets_widen_the_interval_of_a_difference():
    rng = np.random.default_rng(7)
    base = rng.random(50)
    b = runs([{("en", "en"): cell_values(base)}] * 3, strategy="x-y")
    steady = runs([{("en", "en"): cell_values(base + 0.1)}] * 3, strategy="hybrid")
    spread = runs([{("en", "en"): cell_values(base + 0.1 + o)} for o in (-0.05, 0.0, 0.05)], strategy="hybrid")
    narrow = hybrid_minus_xy(pd.concat([steady, b]), bootstrap_samples=4000)
    wide = hybrid_minus_xy(pd.concat([spread, b]), bootstrap_samples=4000)
    assert (narrow["ci_low"], narrow["ci_high"]) == pytest.approx((0.1, 0.1))
    # as in test_run_offsets_widen_the_interval_to_the_spread_of_the_runs: exactly the runs' range
    assert (wide["mean_diff"], wide["ci_low"], wide["ci_high"]) == pytest.approx((0.1, 0.05, 0.15))
    assert (wide["run_diff_min"], wide["run_diff_max"]) == pytest.approx((0.05, 0.15))


def test_fixed_shift_gives_the_smallest_p_and_an_interval_excluding_zero():
    rng = np.random.default_rng(6)
    base = {(l, l): rng.random(60) for l in ("en", "de", "ar")}
    a = {k: cell_values(v) for k, v in base.items()}
    b = {k: cell_values(v - 0.2 + rng.normal(0, 0.01, size=60)) for k, v in base.items()}
    B = 999
    row = hybrid_minus_xy(two_strategies(a, b), clusters={i: i // 6 for i in range(60)}, bootstrap_samples=B)
    assert row["p_value"] == pytest.approx(2 / (B + 1))
    assert row["ci_low"] > 0.15 and row["ci_high"] < 0.25
    assert row["mean_diff"] == pytest.approx(0.2, abs=0.01)


def test_paired_bootstrap_uses_the_same_clusters_for_both_strategies():
    x = np.random.default_rng(7).random(50)
    row = hybrid_minus_xy(two_strategies({("en", "en"): cell_values(x)}, {("en", "en"): cell_values(x + 0.1)}),
                          clusters={i: i % 7 for i in range(50)}, bootstrap_samples=300)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-0.1, -0.1), abs=1e-12)


def test_copies_in_a_cluster_give_the_one_question_difference_interval():
    rng = np.random.default_rng(8)
    n = 30
    a, b = rng.random(n), rng.random(n)
    single = two_strategies({("en", "en"): cell_values(a)}, {("en", "en"): cell_values(b)})
    copies = two_strategies({("en", "en"): {(i, c): a[i] for i in range(n) for c in range(4)}},
                            {("en", "en"): {(i, c): b[i] for i in range(n) for c in range(4)}})
    copies["query_id"] = [f"{i:02d}-{c}" for i, c in copies["query_id"]]
    clusters = {f"{i:02d}-{c}": i for i in range(n) for c in range(4)}
    one, clustered = hybrid_minus_xy(single, seed=3), hybrid_minus_xy(copies, clusters=clusters, seed=3)
    for column in ("mean_diff", "ci_low", "ci_high", "p_value"):
        assert clustered[column] == pytest.approx(one[column], rel=1e-12, abs=1e-15)


def test_clustered_interval_agrees_with_scipy_bootstrap_of_cluster_means():
    # One cell, equal clusters: the macro difference is the mean of the clusters' mean
    # differences, so scipy's percentile bootstrap of those means is the same procedure with
    # other random draws (tolerance: Monte Carlo error, as for the normal approximation above).
    rng = np.random.default_rng(9)
    n_clusters, size = 200, 3
    shared = np.repeat(rng.normal(0, 0.2, n_clusters), size)
    a = rng.random(n_clusters * size)
    b = a - 0.03 + shared + rng.normal(0, 0.05, n_clusters * size)
    frame = two_strategies({("en", "en"): cell_values(a)}, {("en", "en"): cell_values(b)})
    row = hybrid_minus_xy(frame, clusters={i: i // size for i in range(n_clusters * size)}, bootstrap_samples=4000)
    cluster_means = (a - b).reshape(n_clusters, size).mean(axis=1)
    reference = scipy_stats.bootstrap((cluster_means,), np.mean, method="percentile", n_resamples=4000,
                                      random_state=0).confidence_interval
    half_width = (reference.high - reference.low) / 2
    assert row["ci_low"] == pytest.approx(reference.low, abs=0.1 * half_width)
    assert row["ci_high"] == pytest.approx(reference.high, abs=0.1 * half_width)


def test_p_value_inverts_the_percentile_interval():
    assert percentile_p_value(np.zeros(99)) == 1.0
    assert percentile_p_value(np.arange(1.0, 100.0)) == pytest.approx(2 / 100)
    # 4 of 99 replicates at or below 0: p = 2 (1 + 4) / 100; a 90% interval excludes 0, a 95% one not
    values = np.concatenate([-np.arange(1.0, 5.0), np.arange(1.0, 96.0)])
    assert percentile_p_value(values) == pytest.approx(0.1)
    assert np.quantile(values, 0.05) > 0 > np.quantile(values, 0.025)


def test_differences_are_averaged_over_runs_and_run_range_reported():
    x = np.random.default_rng(9).random(30)
    frame = pd.concat([per_query({("en", "all"): cell_values(x + 0.1)}, strategy="hybrid", seed=0),
                       per_query({("en", "all"): cell_values(x + 0.3)}, strategy="hybrid", seed=1),
                       per_query({("en", "all"): cell_values(x)}, strategy="zero-shot", seed=0)])
    frame["setting"] = MULTI
    row = paired_tests(frame, bootstrap_samples=100).iloc[0]
    assert (row["strategy_a"], row["strategy_b"]) == ("zero-shot", "hybrid")
    assert row["mean_diff"] == pytest.approx(-0.2)
    assert (row["run_diff_min"], row["run_diff_max"]) == pytest.approx((-0.3, -0.1))
    assert (row["n_runs_a"], row["n_runs_b"]) == (1, 2)


def test_only_the_positions_both_strategies_have_are_compared():
    x = np.random.default_rng(10).random(20)
    a = per_query({("en", "en"): cell_values(x), ("de", "de"): cell_values(x)}, strategy="hybrid")
    b = per_query({("en", "en"): cell_values(x[:10] - 0.1)}, strategy="x-y")
    row = hybrid_minus_xy(pd.concat([a, b]), bootstrap_samples=100)
    assert row["mean_diff"] == pytest.approx(0.1) and row["n_queries"] == 10


def test_default_pairs_follow_the_strategy_order_and_explicit_pairs_are_kept():
    cells = {("en", "en"): cell_values(np.arange(10) / 10)}
    frame = pd.concat([per_query(cells, strategy=s) for s in ("hybrid", "x-y", "x-x-mono")])
    pairs = paired_tests(frame, bootstrap_samples=50)[["strategy_a", "strategy_b"]].apply(tuple, axis=1)
    assert list(pairs) == [("x-x-mono", "x-y"), ("x-x-mono", "hybrid"), ("x-y", "hybrid")]
    chosen = paired_tests(frame, [("hybrid", "x-x-mono"), ("hybrid", "en-en")], bootstrap_samples=50)
    assert list(zip(chosen["strategy_a"], chosen["strategy_b"])) == [("hybrid", "x-x-mono")]


# ----------------------------------------------------------------------------- clusters
def test_paragraph_clusters_label_each_id_by_its_english_paragraph():
    # ids 1 and 2 share an English paragraph (e/0/0); the German file splits them differently;
    # id 3 exists only in German; paragraphs en/1/0 and en/2/0 have the same text: one cluster.
    candidates = pd.DataFrame(
        [("en", "s0", "en/0/0", "A"), ("en", "s1", "en/0/0", "A"), ("en", "s2", "en/1/0", "B"),
         ("en", "s3", "en/2/0", "B"), ("de", "t0", "de/0/0", "a"), ("de", "t1", "de/0/1", "b"),
         ("de", "t2", "de/1/0", "c")], columns=["lang", "text", "paragraph", "context"])
    questions = pd.DataFrame([("de", "1", "?", 4), ("de", "2", "?", 5), ("de", "3", "?", 6), ("en", "1", "?", 0),
                              ("en", "2", "?", 1), ("en", "4", "?", 2), ("en", "5", "?", 3)],
                             columns=["lang", "id", "text", "candidate"])
    clusters = paragraph_clusters(LaReQA("toy", questions, candidates))
    assert clusters.to_dict() == {"1": "toy/en/0/0", "2": "toy/en/0/0", "3": "toy/de/1/0", "4": "toy/en/1/0",
                                  "5": "toy/en/1/0"}
    assert clusters.name == "paragraph"


def test_clusters_must_cover_every_id_and_the_default_path_is_warning_free():
    frame = per_query({("en", "en"): cell_values([0.1, 0.2, 0.3])})
    with pytest.raises(StatsError, match="no cluster for 1 query id"):
        bootstrap_ci(frame, clusters={0: "a", 1: "a"}, bootstrap_samples=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bootstrap_ci(frame, bootstrap_samples=10)
        paired_tests(pd.concat([frame, frame.assign(strategy="x-y")]), bootstrap_samples=10)
    named = bootstrap_ci(frame, clusters=pd.Series({0: "a", 1: "a", 2: "b"}, name="paragraph"), bootstrap_samples=10)
    assert named.iloc[0]["resampling_unit"] == "paragraph clusters and training runs"
    assert named.iloc[0]["n_clusters"] == 2


# ----------------------------------------------------------------------------- unseen languages
def test_unseen_language_split_macro_averages_each_split():
    rng = np.random.default_rng(10)
    langs = ("en", "de", "el")
    mono = {(l, l): cell_values(rng.random(12)) for l in langs}
    cross = {(q, p): cell_values(rng.random(12)) for q in langs for p in langs if q != p}
    multi = {(l, "all"): cell_values(rng.random(12)) for l in langs}
    frame = pd.concat([per_query(mono), per_query(cross, setting=CROSS), per_query(multi, setting=MULTI)],
                      ignore_index=True)
    labelled = label_seen_languages(frame, ["en", "de"])
    cross_labels = labelled[labelled["setting"] == CROSS].groupby(["query_lang", "pool_lang"])["languages"].first()
    assert cross_labels[("en", "de")] == "both seen" and cross_labels[("de", "el")] == "query or pool unseen"
    result = unseen_language_split(frame, ["en", "de"], clusters={i: i // 3 for i in range(12)},
                                   bootstrap_samples=50)
    assert set(zip(result["setting"], result["languages"])) == {
        (MONO, "seen"), (MONO, "unseen"), (CROSS, "both seen"), (CROSS, "query or pool unseen"),
        (MULTI, "seen"), (MULTI, "unseen")}
    for (setting, split), row in result.set_index(["setting", "languages"]).iterrows():
        rows = labelled[(labelled["setting"] == setting) & (labelled["languages"] == split)]
        assert row["mean"] == pytest.approx(eval_macro(rows), rel=1e-12)
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
        assert row["n_clusters"] == 4
    assert result.set_index(["setting", "languages"]).loc[(CROSS, "query or pool unseen"), "n_cells"] == 4


# ----------------------------------------------------------------------------- claim verdicts
def significance(rows, dataset="xquad-r"):
    """A hand-made paired_tests frame from (setting, metric, a, b, diff, low, high, p)."""
    return pd.DataFrame([("m", dataset, *r, 40, 10, 3, 3, "paragraph clusters and training runs") for r in rows],
                        columns=["model", "eval_dataset", "setting", "metric", "strategy_a", "strategy_b",
                                 "mean_diff", "ci_low", "ci_high", "p_value", "n_queries", "n_clusters", "n_runs_a",
                                 "n_runs_b", "resampling_unit"])


def claim_rows(table, claim_start):
    return table[table["claim"].str.startswith(claim_start)]


def verdict(frame, claim_start, **kwargs):
    return claim_rows(claim_verdicts(frame, **kwargs), claim_start)["verdict"].iloc[0]


def test_the_margin_is_the_paper_s_smallest_claimed_gain():
    assert smallest_claimed_gain() == 0.003 == NONINFERIORITY_MARGIN
    assert set(VERDICTS) == {"supported", "contradicted", "inconclusive", "not tested"}


@pytest.mark.parametrize("rows, expected", [
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.002),
      (MONO, "mAP", "x-x-mono", "hybrid", 0.01, 0.004, 0.016, 0.004)], "supported"),
    # stored as hybrid - x-x-mono: turned around, hybrid is significantly better
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.002),
      (MONO, "mAP", "hybrid", "x-x-mono", 0.02, 0.01, 0.03, 0.002)], "contradicted"),
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.002),
      (MONO, "mAP", "x-x-mono", "hybrid", 0.003, -0.003, 0.009, 0.3)], "inconclusive"),
    # two deficits with p = 0.03 and 0.04: Holm-adjusted 0.06 and 0.06, not significant
    ([(MONO, "mAP", "x-x-mono", "x-y", -0.01, -0.019, -0.001, 0.03),
      (MONO, "mAP", "x-x-mono", "hybrid", -0.01, -0.019, -0.001, 0.04)], "inconclusive"),
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.002)], "not tested"),
])
def test_superiority_claim_verdicts(rows, expected):
    assert verdict(significance(rows), "X-X-mono is best") == expected


def test_holm_runs_over_the_whole_table():
    # p = 0.02 alone is significant; beside 4 other tested comparisons (p = 0.5) Holm gives 0.1.
    lead = [(CROSS, "mAP", "x-y", "x-x-mono", 0.03, 0.01, 0.05, 0.02)]
    assert claim_rows(claim_verdicts(significance(lead)), "X-Y is best")["p_holm"].iloc[0] == pytest.approx(0.02)
    others = [(s, "mAP", "hybrid", o, 0.0, -0.01, 0.01, 0.5) for s in (MONO, MULTI) for o in ("x-x-mono", "x-y")]
    table = claim_verdicts(significance(lead + others))
    assert claim_rows(table, "X-Y is best")["p_holm"].iloc[0] == pytest.approx(0.1)
    # x-x-mono - hybrid (claim 1) and hybrid - x-x-mono (claim 3) are one hypothesis, counted once
    table = claim_verdicts(significance([(MONO, "mAP", "hybrid", "x-x-mono", 0.01, 0.0, 0.02, 0.02),
                                         (CROSS, "mAP", "x-y", "hybrid", 0.01, 0.0, 0.02, 0.5)]))
    assert table.loc[table["p_value"] == 0.02, "p_holm"].tolist() == pytest.approx([0.04, 0.04])
    # a second dataset doubles the family
    two = claim_verdicts(pd.concat([significance(lead), significance(lead, dataset="mlqa-r")]))
    assert claim_rows(two, "X-Y is best")["p_holm"].dropna().tolist() == pytest.approx([0.04, 0.04])


def hybrid_rows(changes=None):
    """Hybrid - X-X-mono and Hybrid - X-Y in every setting, each a clear non-inferior +0.004."""
    rows = {(s, o): (s, "mAP", "hybrid", o, 0.004, -0.001, 0.009, 0.2) for s in (MONO, CROSS, MULTI)
            for o in ("x-x-mono", "x-y")}
    rows.update(changes or {})
    return [r for r in rows.values() if r is not None]


@pytest.mark.parametrize("changes, expected, margin", [
    (None, "supported", 0.003),
    (None, "inconclusive", 0.0),  # with no margin, "matches" needs the whole interval above 0
    # significantly below, but within the margin: non-inferior
    ({(CROSS, "x-y"): (CROSS, "mAP", "hybrid", "x-y", -0.0015, -0.0025, -0.0005, 0.002)}, "supported", 0.003),
    # the whole interval below minus the margin, significant: contradicted
    ({(CROSS, "x-y"): (CROSS, "mAP", "hybrid", "x-y", -0.008, -0.011, -0.005, 0.002)}, "contradicted", 0.003),
    ({(MULTI, "x-x-mono"): (MULTI, "mAP", "x-x-mono", "hybrid", 0.004, -0.006, 0.02, 0.4)}, "inconclusive", 0.003),
    ({(MULTI, "x-y"): None}, "not tested", 0.003),
])
def test_non_inferiority_claim_verdicts(changes, expected, margin):
    table = claim_verdicts(significance(hybrid_rows(changes)), margin=margin)
    rows = claim_rows(table, "Hybrid matches")
    assert len(rows) == 6 and set(rows["verdict"]) == {expected}
    if changes and (MULTI, "x-x-mono") in changes:
        row = rows[(rows["setting"] == MULTI) & (rows["strategy_b"] == "x-x-mono")].iloc[0]
        assert (row["mean_diff"], row["ci_low"], row["ci_high"]) == (-0.004, -0.02, 0.006)  # turned around


def test_claims_table_sets_the_paper_s_effect_beside_ours():
    rows = [(MONO, "mAP", "hybrid", "x-x-mono", 0.008, 0.002, 0.014, 0.01),
            (MULTI, "rank_distance", "x-x-mono", "hybrid", 30.0, 20.0, 40.0, 0.002)]
    table = claim_verdicts(significance(rows), pool_sizes={"xquad-r": 3495})
    assert list(table.columns) == CLAIM_COLUMNS
    mono = table[(table["claim"].str.startswith("Hybrid matches")) & (table["setting"] == MONO)
                 & (table["strategy_b"] == "x-x-mono")].iloc[0]
    assert (mono["paper_xlmr"], mono["paper_labse"]) == pytest.approx((0.006, 0.009))  # .798-.792, .817-.808
    assert (mono["xlmr_in_ci"], mono["labse_in_ci"]) == (True, True)
    assert (mono["n_clusters"], mono["n_runs_a"], mono["resampling_unit"]) == (10, 3, "paragraph clusters and "
                                                                                      "training runs")
    distance = claim_rows(table, "Hybrid lowers").iloc[0]
    assert (distance["mean_diff"], distance["verdict"]) == (-30.0, "supported")
    scale = 3495 / PAPER_POOL_SIZES["xquad-r"]
    assert distance["paper_xlmr"] == pytest.approx((286.6 - 410.2) * scale)  # -31.8 positions of our pool
    assert distance["paper_labse"] == pytest.approx((221.1 - 261.5) * scale)  # -10.4
    assert (distance["xlmr_in_ci"], distance["labse_in_ci"]) == (True, False)
    unscaled = claim_rows(claim_verdicts(significance(rows)), "Hybrid lowers").iloc[0]
    assert unscaled["paper_xlmr"] == pytest.approx(-123.6) and pd.isna(unscaled["xlmr_in_ci"])
    assert paper_difference("XLM-R", "miracl", MONO, "mAP", "hybrid", "x-y") is None


def test_no_paired_tests_leave_every_claim_not_tested():
    table = claim_verdicts(pd.DataFrame(columns=TEST_COLUMNS))
    assert set(table["verdict"]) == {"not tested"}
    assert list(table["claim"].unique()) == [c.name for c in CLAIMS]


def test_verdicts_from_paired_tests_on_a_designed_study():
    # x-x-mono leads monolingually, x-y cross-lingually, hybrid is at the top of both; 3 runs each.
    rng = np.random.default_rng(11)
    langs, n = ("en", "de", "ar"), 300
    effects = {"x-x-mono": {MONO: 0.10, CROSS: 0.00, MULTI: 0.00}, "x-y": {MONO: 0.00, CROSS: 0.10, MULTI: 0.10},
               "hybrid": {MONO: 0.10, CROSS: 0.10, MULTI: 0.10}}
    base = {(s, q, p): rng.random(n) * 0.5 for s in (MONO, CROSS, MULTI) for q in langs for p in
            ((q,) if s == MONO else [l for l in langs if l != q] if s == CROSS else ("all",))}
    frames = [per_query({(q, p): cell_values(v + effects[strategy][s] + rng.normal(0, 0.01, n) + 0.002 * seed)},
                        strategy=strategy, setting=s, seed=seed)
              for strategy in effects for seed in range(3) for (s, q, p), v in base.items()]
    tests = paired_tests(pd.concat(frames, ignore_index=True), clusters={i: i // 3 for i in range(n)},
                         bootstrap_samples=300)
    verdicts = claim_verdicts(tests).drop_duplicates("claim").set_index("claim")["verdict"]
    assert verdicts["X-X-mono is best monolingually"] == "inconclusive"  # ties with hybrid
    assert verdicts["X-Y is best cross-lingually"] == "inconclusive"
    assert verdicts["Hybrid matches or beats X-X-mono and X-Y everywhere"] == "supported"
    assert verdicts["Hybrid lowers the rank distance relative to X-X-mono"] == "not tested"


# ----------------------------------------------------------------------------- DAPT claims
def dapt_rows(p=0.001):
    """dapt - zero-shot and dapt+hybrid - hybrid in the three settings (+0.01 mAP) and the rank distance (-20)."""
    rows = [(s, "mAP", a, b, 0.01, 0.005, 0.015, p) for s in (MONO, CROSS, MULTI)
            for a, b in (("dapt", "zero-shot"), ("dapt+hybrid", "hybrid"))]
    return rows + [(MULTI, "rank_distance", a, b, -20.0, -30.0, -10.0, p)
                   for a, b in (("dapt", "zero-shot"), ("dapt+hybrid", "hybrid"))]


def test_dapt_claims_are_listed_only_where_their_strategies_are_compared():
    paper_only = claim_verdicts(significance(hybrid_rows()))
    assert list(paper_only["claim"].unique()) == [c.name for c in CLAIMS]
    with_dapt = claim_verdicts(significance(hybrid_rows() + dapt_rows()))
    assert list(with_dapt["claim"].unique()) == [c.name for c in CLAIMS + DAPT_CLAIMS]
    dapt = with_dapt[with_dapt["claim"].isin([c.name for c in DAPT_CLAIMS])]
    # one comparison each: DAPT vs zero-shot and DAPT+hybrid vs hybrid, per setting (mAP) and the rank distance
    assert sorted(zip(dapt["strategy_a"], dapt["strategy_b"], dapt["setting"], dapt["metric"])) == sorted(
        (a, b, s, m) for a, b in (("dapt", "zero-shot"), ("dapt+hybrid", "hybrid"))
        for s, m in ((MONO, "mAP"), (CROSS, "mAP"), (MULTI, "mAP"), (MULTI, "rank_distance")))
    assert set(dapt["verdict"]) == {"supported"} and dapt["paper_xlmr"].isna().all()
    # only dapt vs zero-shot compared: the dapt+hybrid claims are not listed at all
    only_dapt = claim_verdicts(significance([r for r in dapt_rows() if r[2] == "dapt"]))
    assert set(only_dapt["strategy_a"]) == {"x-x-mono", "x-y", "hybrid", "dapt"}
    # turned around (zero-shot - dapt stored), DAPT significantly worse: contradicted
    worse = [(MONO, "mAP", "zero-shot", "dapt", 0.01, 0.005, 0.015, 0.001)]
    assert verdict(significance(worse), "DAPT raises monolingual") == "contradicted"


def test_dapt_claims_are_their_own_holm_family():
    # the paper's claims come out the same with or without the DAPT comparisons beside them
    paper = claim_verdicts(significance(hybrid_rows()))
    both = claim_verdicts(significance(hybrid_rows() + dapt_rows(p=0.004)))
    mine = both[both["claim"].isin([c.name for c in CLAIMS])].reset_index(drop=True)
    pd.testing.assert_frame_equal(mine, paper)
    # 8 DAPT comparisons with p = 0.004 each: Holm gives 8 * 0.004 to all (the step-down maximum)
    dapt = both[both["claim"].isin([c.name for c in DAPT_CLAIMS])]
    assert dapt["p_holm"].tolist() == pytest.approx([0.032] * 8)


# ----------------------------------------------------------------------------- errors
def test_bad_inputs_raise_one_line_errors():
    frame = per_query({("en", "en"): cell_values([0.1, 0.2])})
    with pytest.raises(StatsError, match="lacks column.*query_id"):
        bootstrap_ci(frame.drop(columns="query_id"))
    with pytest.raises(StatsError, match="several values"):
        bootstrap_ci(pd.concat([frame, frame]), bootstrap_samples=10)
    with pytest.raises(StatsError, match="bootstrap_samples"):
        paired_tests(frame, bootstrap_samples=5)
    with pytest.raises(StatsError, match="lacks column"):
        claim_verdicts(pd.DataFrame({"eval_dataset": ["xquad-r"]}))
    with pytest.raises(StatsError, match="train_languages"):
        unseen_language_split(frame, "en")
    assert issubclass(StatsError, HybridlibError)
