"""Tests of hybridlib.stats: bootstrap intervals, paired tests, unseen-language split, claim verdicts."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats as scipy_stats

from hybridlib.errors import HybridlibError
from hybridlib.stats import (PER_QUERY_COLUMNS, StatsError, bootstrap_ci, claim_verdicts,
                             label_seen_languages, paired_tests, unseen_language_split)


def per_query(cells, strategy="hybrid", seed=0, setting="monolingual", metric="mAP", model="m",
              dataset="xquad-r"):
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


# ----------------------------------------------------------------------------- bootstrap_ci
def test_constant_values_give_zero_width_interval():
    cells = {(l, l): cell_values(np.full(20, 0.7)) for l in ("en", "de", "ar")}
    frame = pd.concat([per_query(cells, seed=s) for s in (0, 1)])
    row = bootstrap_ci(frame, bootstrap_samples=200).iloc[0]
    assert row["mean"] == pytest.approx(0.7, abs=1e-12)
    assert row["ci_low"] == pytest.approx(0.7, abs=1e-12)
    assert row["ci_high"] == pytest.approx(0.7, abs=1e-12)
    assert (row["n_seeds"], row["n_queries"], row["n_cells"]) == (2, 20, 3)


def test_mean_is_the_evaluation_macro_average_with_unequal_query_counts():
    rng = np.random.default_rng(1)
    mono = {("en", "en"): cell_values(rng.random(30)),
            ("de", "de"): cell_values(rng.random(10)),
            ("ar", "ar"): cell_values(rng.random(20), ids=range(5, 25))}
    cross = {("en", "de"): cell_values(rng.random(8), ids=range(2, 10)),
             ("de", "en"): cell_values(rng.random(25))}
    multi = {("en", "all"): cell_values(rng.random(30)), ("de", "all"): cell_values(rng.random(4))}
    frames = [per_query(mono, seed=s) for s in (0, 1)] + [per_query(cross, setting="crosslingual"),
                                                          per_query(multi, setting="multilingual")]
    for frame in frames[1:]:
        frame["value"] = rng.random(len(frame))  # seed 1 differs from seed 0
    frame = pd.concat(frames, ignore_index=True)
    result = bootstrap_ci(frame, bootstrap_samples=50).set_index("setting")
    mono_rows = frame[frame["setting"] == "monolingual"]
    expected_mono = np.mean([eval_macro(mono_rows[mono_rows["seed"] == s]) for s in (0, 1)])
    assert result.loc["monolingual", "mean"] == pytest.approx(expected_mono, rel=1e-12)
    assert result.loc["crosslingual", "mean"] == pytest.approx(eval_macro(frames[2]), rel=1e-12)
    assert result.loc["multilingual", "mean"] == pytest.approx(eval_macro(frames[3]), rel=1e-12)
    assert result.loc["monolingual", "n_queries"] == 30  # ids 0..29 (ar has 5..24)
    assert result.loc["crosslingual", "n_cells"] == 2
    no_pool = bootstrap_ci(frames[3].assign(pool_lang=None), bootstrap_samples=50).iloc[0]
    assert no_pool["mean"] == pytest.approx(eval_macro(frames[3]), rel=1e-12)


def test_the_same_resampled_ids_are_used_in_every_cell():
    # A query's value in de is 1 - its value in en: the macro average is 0.5 in every resample
    # only if both cells see the same drawn ids.
    x = np.random.default_rng(2).random(50)
    frame = per_query({("en", "en"): cell_values(x), ("de", "de"): cell_values(1 - x)})
    row = bootstrap_ci(frame, bootstrap_samples=300).iloc[0]
    assert row["ci_high"] - row["ci_low"] == pytest.approx(0.0, abs=1e-12)
    single = bootstrap_ci(frame[frame["query_lang"] == "en"], bootstrap_samples=300).iloc[0]
    assert single["ci_high"] - single["ci_low"] > 0.05  # the cells alone do vary


def test_seeds_are_resampled_unless_averaged_first():
    frame = pd.concat([per_query({("en", "en"): cell_values(np.full(10, v))}, seed=s)
                       for s, v in ((0, 0.6), (1, 0.8))])
    row = bootstrap_ci(frame, bootstrap_samples=1000).iloc[0]
    # Two seeds drawn with replacement: means 0.6, 0.7, 0.8 with probabilities 1/4, 1/2, 1/4.
    assert (row["mean"], row["ci_low"], row["ci_high"]) == pytest.approx((0.7, 0.6, 0.8))
    assert row["seed_sd"] == pytest.approx(np.std([0.6, 0.8], ddof=1))
    averaged = bootstrap_ci(frame, bootstrap_samples=1000, resample_seeds=False).iloc[0]
    assert (averaged["ci_low"], averaged["ci_high"]) == pytest.approx((0.7, 0.7))


def test_fixed_seed_is_deterministic():
    rng = np.random.default_rng(3)
    frame = per_query({("en", "en"): cell_values(rng.random(40)), ("de", "de"): cell_values(rng.random(40))})
    first = bootstrap_ci(frame, bootstrap_samples=200, seed=7)
    pd.testing.assert_frame_equal(first, bootstrap_ci(frame, bootstrap_samples=200, seed=7))
    other = bootstrap_ci(frame, bootstrap_samples=200, seed=8)
    assert (first["ci_low"] != other["ci_low"]).any()
    tests = paired_tests(pd.concat([frame, frame.assign(strategy="x-y", value=frame["value"] * 0.9)]),
                         bootstrap_samples=200, seed=7)
    pd.testing.assert_frame_equal(tests, paired_tests(
        pd.concat([frame, frame.assign(strategy="x-y", value=frame["value"] * 0.9)]), bootstrap_samples=200, seed=7))


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
    frame = pd.concat([two_strategies(cells, cells, setting="crosslingual", seed=s) for s in (0, 1)])
    row = hybrid_minus_xy(frame, bootstrap_samples=500)
    assert row["p_value"] == 1.0
    assert row["mean_diff"] == 0.0
    assert (row["ci_low"], row["ci_high"]) == (0.0, 0.0)
    assert (row["n_queries"], row["n_seeds_a"], row["n_seeds_b"]) == (40, 2, 2)


def test_large_shift_gives_smallest_p_and_interval_excluding_zero():
    rng = np.random.default_rng(6)
    base = {(l, l): rng.random(60) for l in ("en", "de", "ar")}
    a = {k: cell_values(v) for k, v in base.items()}
    b = {k: cell_values(v - 0.2 + rng.normal(0, 0.01, size=60)) for k, v in base.items()}
    B = 999
    row = hybrid_minus_xy(two_strategies(a, b), bootstrap_samples=B)
    assert row["p_value"] <= 1 / (B + 1) + 1e-12
    assert row["ci_low"] > 0.15 and row["ci_high"] < 0.25
    assert row["mean_diff"] == pytest.approx(0.2, abs=0.01)


def test_paired_bootstrap_uses_the_same_ids_for_both_strategies():
    x = np.random.default_rng(7).random(50)
    row = hybrid_minus_xy(two_strategies({("en", "en"): cell_values(x)}, {("en", "en"): cell_values(x + 0.1)}),
                          bootstrap_samples=300)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx((-0.1, -0.1), abs=1e-12)


def test_sign_flip_p_matches_scipy_exact_permutation_test():
    # Two full cells: the macro difference is the mean over ids of each id's mean difference, so the
    # test must flip each id's whole difference vector, as scipy's exact test on those means does.
    rng = np.random.default_rng(8)
    n = 12
    a = {(l, l): rng.random(n) for l in ("en", "de")}
    shared = rng.normal(0, 0.15, size=n)  # a query's translations move together
    b = {k: v - 0.08 + shared + rng.normal(0, 0.02, size=n) for k, v in a.items()}
    row = hybrid_minus_xy(two_strategies({k: cell_values(v) for k, v in a.items()},
                                         {k: cell_values(v) for k, v in b.items()}), bootstrap_samples=20000)
    per_id = np.mean([a[k] - b[k] for k in a], axis=0)
    exact = scipy_stats.permutation_test((per_id,), np.mean, permutation_type="samples", n_resamples=10**6)
    assert len(exact.null_distribution) == 2 ** n  # scipy enumerated every sign vector
    assert row["mean_diff"] == pytest.approx(per_id.mean(), rel=1e-12)
    assert 0.01 < exact.pvalue < 0.5  # a case where the p-value is informative
    assert row["p_value"] == pytest.approx(exact.pvalue, abs=0.01)


def test_differences_are_averaged_over_seeds_and_seed_range_reported():
    x = np.random.default_rng(9).random(30)
    frame = pd.concat([per_query({("en", "all"): cell_values(x + 0.1)}, strategy="hybrid", seed=0),
                       per_query({("en", "all"): cell_values(x + 0.3)}, strategy="hybrid", seed=1),
                       per_query({("en", "all"): cell_values(x)}, strategy="zero-shot", seed=0)])
    frame["setting"] = "multilingual"
    row = paired_tests(frame, bootstrap_samples=100).iloc[0]
    assert (row["strategy_a"], row["strategy_b"]) == ("zero-shot", "hybrid")
    assert row["mean_diff"] == pytest.approx(-0.2)
    assert (row["seed_diff_min"], row["seed_diff_max"]) == pytest.approx((-0.3, -0.1))
    assert (row["n_seeds_a"], row["n_seeds_b"]) == (1, 2)


def test_default_pairs_follow_the_strategy_order_and_explicit_pairs_are_kept():
    cells = {("en", "en"): cell_values(np.arange(10) / 10)}
    frame = pd.concat([per_query(cells, strategy=s) for s in ("hybrid", "x-y", "x-x-mono")])
    pairs = paired_tests(frame, bootstrap_samples=50)[["strategy_a", "strategy_b"]].apply(tuple, axis=1)
    assert list(pairs) == [("x-x-mono", "x-y"), ("x-x-mono", "hybrid"), ("x-y", "hybrid")]
    chosen = paired_tests(frame, [("hybrid", "x-x-mono"), ("hybrid", "en-en")], bootstrap_samples=50)
    assert list(zip(chosen["strategy_a"], chosen["strategy_b"])) == [("hybrid", "x-x-mono")]


# ----------------------------------------------------------------------------- unseen languages
def test_unseen_language_split_macro_averages_each_split():
    rng = np.random.default_rng(10)
    langs = ("en", "de", "el")
    mono = {(l, l): cell_values(rng.random(12)) for l in langs}
    cross = {(q, p): cell_values(rng.random(12)) for q in langs for p in langs if q != p}
    multi = {(l, "all"): cell_values(rng.random(12)) for l in langs}
    frame = pd.concat([per_query(mono), per_query(cross, setting="crosslingual"),
                       per_query(multi, setting="multilingual")], ignore_index=True)
    labelled = label_seen_languages(frame, ["en", "de"])
    cross_labels = labelled[labelled["setting"] == "crosslingual"].groupby(["query_lang", "pool_lang"])["languages"].first()
    assert cross_labels[("en", "de")] == "both seen" and cross_labels[("de", "el")] == "query or pool unseen"
    result = unseen_language_split(frame, ["en", "de"], bootstrap_samples=50)
    assert set(zip(result["setting"], result["languages"])) == {
        ("monolingual", "seen"), ("monolingual", "unseen"), ("crosslingual", "both seen"),
        ("crosslingual", "query or pool unseen"), ("multilingual", "seen"), ("multilingual", "unseen")}
    for (setting, split), row in result.set_index(["setting", "languages"]).iterrows():
        rows = labelled[(labelled["setting"] == setting) & (labelled["languages"] == split)]
        assert row["mean"] == pytest.approx(eval_macro(rows), rel=1e-12)
        assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    assert result.set_index(["setting", "languages"]).loc[("crosslingual", "query or pool unseen"), "n_cells"] == 4


# ----------------------------------------------------------------------------- claim verdicts
def significance(rows, dataset="xquad-r"):
    """A hand-made paired_tests frame from (setting, metric, a, b, diff, low, high, p[, seed_min, seed_max])."""
    full = [(*r, r[4], r[4]) if len(r) == 8 else r for r in rows]
    return pd.DataFrame([("m", dataset, *r) for r in full], columns=[
        "model", "eval_dataset", "setting", "metric", "strategy_a", "strategy_b", "mean_diff", "ci_low",
        "ci_high", "p_value", "seed_diff_min", "seed_diff_max"])


def verdict(frame, claim_start, **kwargs):
    verdicts = claim_verdicts(frame, **kwargs)
    row = verdicts[verdicts["claim"].str.startswith(claim_start)].iloc[0]
    return row["verdict"], row["reason"]


MONO, CROSS, MULTI = "monolingual", "crosslingual", "multilingual"


@pytest.mark.parametrize("rows, expected", [
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.001),
      (MONO, "mAP", "x-x-mono", "hybrid", 0.01, 0.004, 0.016, 0.01)], "holds"),
    # stored as hybrid - x-x-mono: turned around, hybrid is significantly better
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.001),
      (MONO, "mAP", "hybrid", "x-x-mono", 0.02, 0.01, 0.03, 0.001)], "does not hold"),
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.001),
      (MONO, "mAP", "x-x-mono", "hybrid", 0.003, -0.003, 0.009, 0.3)], "undecided"),
    # two deficits with p = 0.03 and 0.04: Holm-adjusted 0.06 and 0.06, not significant
    ([(MONO, "mAP", "x-x-mono", "x-y", -0.01, -0.019, -0.001, 0.03),
      (MONO, "mAP", "x-x-mono", "hybrid", -0.01, -0.019, -0.001, 0.04)], "undecided"),
    ([(MONO, "mAP", "x-x-mono", "x-y", 0.02, 0.01, 0.03, 0.001)], "not tested"),
])
def test_best_claim_verdicts(rows, expected):
    assert verdict(significance(rows), "X-X-mono is best")[0] == expected


def test_best_claim_reason_shows_the_numbers_and_seed_caution():
    rows = [(CROSS, "mAP", "x-y", "x-x-mono", 0.03, 0.02, 0.04, 0.001, -0.01, 0.05),
            (CROSS, "mAP", "hybrid", "x-y", -0.012, -0.02, -0.004, 0.002)]
    result, reason = verdict(significance(rows), "X-Y is best")
    assert result == "holds"
    assert "x-y - x-x-mono (crosslingual mAP) = +0.0300 [+0.0200, +0.0400], p = 0.001" in reason
    assert "x-y - hybrid (crosslingual mAP) = +0.0120 [+0.0040, +0.0200]" in reason
    assert "sign changes" in reason


def hybrid_rows(changes=None):
    """Hybrid - X-X-mono and Hybrid - X-Y in every setting, each a clear non-inferior +0.004."""
    rows = {(s, o): (s, "mAP", "hybrid", o, 0.004, -0.001, 0.009, 0.2) for s in (MONO, CROSS, MULTI)
            for o in ("x-x-mono", "x-y")}
    rows.update(changes or {})
    return [r for r in rows.values() if r is not None]


@pytest.mark.parametrize("changes, expected, margin", [
    (None, "holds", 0.005),
    (None, "undecided", 0.0),  # with no margin, "matches" needs the whole interval above 0
    ({(CROSS, "x-y"): (CROSS, "mAP", "hybrid", "x-y", -0.002, -0.003, -0.001, 0.001)}, "does not hold", 0.005),
    ({(MULTI, "x-x-mono"): (MULTI, "mAP", "x-x-mono", "hybrid", 0.004, -0.006, 0.02, 0.4)}, "undecided", 0.005),
    ({(MULTI, "x-y"): None}, "not tested", 0.005),
])
def test_matches_or_beats_claim_verdicts(changes, expected, margin):
    result, reason = verdict(significance(hybrid_rows(changes)), "Hybrid matches", margin=margin)
    assert result == expected
    if expected == "undecided" and changes:
        assert "hybrid - x-x-mono (multilingual mAP) = -0.0040 [-0.0200, +0.0060]" in reason


@pytest.mark.parametrize("row, expected", [
    ((MULTI, "rank_distance", "hybrid", "x-x-mono", -20.0, -30.0, -10.0, 0.001), "holds"),
    ((MULTI, "rank_distance", "x-x-mono", "hybrid", -20.0, -30.0, -10.0, 0.001), "does not hold"),
    ((MULTI, "rank_distance", "hybrid", "x-x-mono", -2.0, -9.0, 5.0, 0.4), "undecided"),
])
def test_rank_distance_claim_verdicts(row, expected):
    result, reason = verdict(significance([row]), "Hybrid lowers")
    assert result == expected
    assert f"{row[4] if row[2] == 'hybrid' else -row[4]:+.1f}" in reason


def test_verdicts_from_paired_tests_on_a_designed_study():
    # x-x-mono leads monolingually, x-y cross-lingually, hybrid is at the top of both.
    rng = np.random.default_rng(11)
    langs, n = ("en", "de", "ar"), 300
    effects = {"x-x-mono": {MONO: 0.10, CROSS: 0.00, MULTI: 0.00}, "x-y": {MONO: 0.00, CROSS: 0.10, MULTI: 0.10},
               "hybrid": {MONO: 0.10, CROSS: 0.10, MULTI: 0.10}}
    base = {(s, q, p): rng.random(n) * 0.5 for s in (MONO, CROSS, MULTI) for q in langs for p in
            ((q,) if s == MONO else [l for l in langs if l != q] if s == CROSS else ("all",))}
    frames = [per_query({(q, p): cell_values(v + effects[strategy][s] + rng.normal(0, 0.01, n))},
                        strategy=strategy, setting=s) for strategy in effects for (s, q, p), v in base.items()]
    tests = paired_tests(pd.concat(frames, ignore_index=True), bootstrap_samples=300)
    verdicts = claim_verdicts(tests).set_index("claim")["verdict"]
    assert verdicts["X-X-mono is best monolingually"] == "undecided"  # ties with hybrid
    assert verdicts["X-Y is best cross-lingually"] == "undecided"
    assert verdicts["Hybrid matches or beats X-X-mono and X-Y everywhere"] == "holds"
    assert verdicts["Hybrid lowers the rank distance relative to X-X-mono"] == "not tested"


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
