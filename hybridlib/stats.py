"""Confidence intervals, paired tests and claim verdicts for the study's macro-averaged metrics.

Input: the evaluation's per-query frame (``hybridlib.evaluate``), one value per row, columns
``model, strategy, seed, eval_dataset, setting, query_lang, pool_lang, query_id, metric, value``.
A *cell* is one ``(query_lang, pool_lang)`` pair of a setting (monolingual X->X, cross-lingual
X->Y, or multilingual X->all). Reported numbers are macro averages: the mean over cells of the
per-cell mean over queries; with several seeds, the mean over seeds of that macro average.

Resampling unit: the query id. The translations of one question share an id and are correlated,
so a resample draws ids with replacement and uses the SAME drawn ids in every cell of the
setting (and for both strategies of a paired test); the macro average is then recomputed,
cells keeping their unequal query counts. Each resample is a count vector ``c`` over ids, and
a cell's resampled mean is ``sum_i c_i v_ik / sum_i c_i m_ik`` (``m`` = the id has a value in
the cell), so B resamples are two matrix products (B x ids) @ (ids x cells).

Seeds. ``bootstrap_ci`` resamples seeds too (``resample_seeds=True``): each replicate draws the
seeds with replacement and the ids with replacement, a two-way bootstrap of crossed factors
(Owen 2007, "The pigeonhole bootstrap"), so an interval covers both query sampling and training
variance. With 3 seeds the seed level is coarse (it underestimates the seed variance by a factor
2/3); ``seed_sd`` is reported next to it. ``paired_tests`` averages each (query, cell) value over
the seeds of a strategy first and tests the per-id differences: its p-value and interval are
conditional on the trained models (query sampling only). The range of the difference between
single seeds is reported (``seed_diff_min/max``) and flagged by ``claim_verdicts`` when it
changes sign.

Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13). p-values come from the
paired sign-flip randomisation test (Fisher; e.g. Smucker, Allan & Carterette, CIKM 2007, for
IR): under H0 the two strategies are exchangeable for each query id, so the sign of each id's
whole difference vector (all its cells) is flipped at random;
``p = (1 + #{|T*| >= |T|}) / (1 + B)`` with ``T`` the macro average of the differences.
"""
from __future__ import annotations

import itertools
import warnings
from dataclasses import dataclass
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from .errors import HybridlibError

PER_QUERY_COLUMNS = ("model", "strategy", "seed", "eval_dataset", "setting", "query_lang",
                     "pool_lang", "query_id", "metric", "value")
SETTINGS = ("monolingual", "crosslingual", "multilingual")
STRATEGY_ORDER = ("zero-shot", "x-x-mono", "x-y", "hybrid", "x-x", "en-en")
LOWER_IS_BETTER = {"rank_distance"}
CI_COLUMNS = ["model", "strategy", "eval_dataset", "setting", "metric", "mean", "ci_low", "ci_high",
              "n_seeds", "n_queries", "n_cells", "seed_sd"]
TEST_COLUMNS = ["model", "eval_dataset", "setting", "metric", "strategy_a", "strategy_b", "mean_a",
                "mean_b", "mean_diff", "ci_low", "ci_high", "p_value", "n_queries", "n_seeds_a",
                "n_seeds_b", "seed_diff_min", "seed_diff_max"]


class StatsError(HybridlibError, ValueError):
    """The per-query or significance frame is unusable; the message names the problem."""


# ----------------------------------------------------------------------------- dense blocks
@dataclass
class _Codes:
    """Integer codes of the per-query frame, computed once for the whole frame."""
    seed: np.ndarray
    query: np.ndarray
    cell: np.ndarray
    strategy: np.ndarray
    strategies: np.ndarray
    value: np.ndarray


def _check_frame(per_query: pd.DataFrame, by: Sequence[str]) -> None:
    if not isinstance(per_query, pd.DataFrame):
        raise StatsError(f"per-query values must be a pandas DataFrame, got {type(per_query).__name__}")
    missing = [c for c in (*PER_QUERY_COLUMNS, *by) if c not in per_query.columns]
    if missing:
        raise StatsError(f"per-query frame lacks column(s) {', '.join(missing)} "
                         f"(expected {', '.join(PER_QUERY_COLUMNS)})")
    if per_query.empty:
        raise StatsError("per-query frame is empty: nothing to resample")
    if not pd.api.types.is_numeric_dtype(per_query["value"]):
        raise StatsError(f"per-query column 'value' must be numeric, got {per_query['value'].dtype}")


def _factorize(column: pd.Series) -> np.ndarray:
    """Codes 0..n-1 in sorted order of the values; a missing value (NaN, None) is a value too."""
    try:
        return pd.factorize(column, sort=True, use_na_sentinel=False)[0]
    except TypeError:  # mixed types (e.g. int and str ids): order them as strings
        return pd.factorize(column.astype(str), sort=True)[0]


def _codes(per_query: pd.DataFrame) -> _Codes:
    query_lang = _factorize(per_query["query_lang"])
    pool_lang = _factorize(per_query["pool_lang"])
    strategy, strategies = pd.factorize(per_query["strategy"])
    return _Codes(seed=_factorize(per_query["seed"]), query=_factorize(per_query["query_id"]),
                  cell=query_lang * (pool_lang.max() + 1) + pool_lang, strategy=strategy,
                  strategies=np.asarray(strategies), value=per_query["value"].to_numpy(float))


def _renumber(codes: np.ndarray) -> np.ndarray:
    """Codes renumbered 0..n-1 in the order of the original codes (a sort-free np.unique)."""
    seen = np.zeros(int(codes.max()) + 1, dtype=bool)
    seen[codes] = True
    return (np.cumsum(seen) - 1)[codes]


def _dense(axes: Sequence[np.ndarray], values: np.ndarray, where: str) -> np.ndarray:
    """Scatter ``values`` into an array indexed by the (renumbered) codes of ``axes``; NaN = missing."""
    local = [_renumber(codes) for codes in axes]
    shape = tuple(int(codes.max()) + 1 for codes in local)
    flat = np.ravel_multi_index(local, shape)
    if np.bincount(flat, minlength=int(np.prod(shape))).max() > 1:
        raise StatsError(f"{where}: several values for one (seed, query_id, query_lang, pool_lang)")
    out = np.full(int(np.prod(shape)), np.nan)
    out[flat] = values
    return out.reshape(shape)


def _groups(per_query: pd.DataFrame, keys: list[str]) -> Iterable[tuple[tuple, np.ndarray]]:
    """(key tuple, row positions) per group, in sorted key order."""
    for key, rows in sorted(per_query.groupby(keys, sort=False, dropna=False).indices.items()):
        yield (key if isinstance(key, tuple) else (key,)), rows


# ----------------------------------------------------------------------------- the statistic
def _macro(counts: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Macro averages of ``values`` (..., ids, cells; NaN = missing) under id ``counts`` (B x ids).

    Returns shape (B, ...): for each resample, the mean over cells of the count-weighted mean
    over ids. A cell none of whose ids was drawn is left out of that resample's average.
    """
    lead, (n_ids, n_cells) = values.shape[:-2], values.shape[-2:]
    present = ~np.isnan(values)
    sums = counts @ np.moveaxis(np.where(present, values, 0.0), -2, 0).reshape(n_ids, -1)
    if (present == present[(0,) * len(lead)]).all():  # the usual case: one mask for all seeds
        weights = np.tile(counts @ present[(0,) * len(lead)].astype(float), int(np.prod(lead)))
    else:
        weights = counts @ np.moveaxis(present, -2, 0).reshape(n_ids, -1).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN rows: a seed without data
        cell_means = (sums / weights).reshape(len(counts), *lead, n_cells)
        return np.nanmean(cell_means, axis=-1)


class _Draws:
    """The random draws of one call, cached by size and shared by every group of that size.

    Each kind of draw has its own stream, seeded by (seed, kind, size), so the draws for one
    group do not depend on which other groups exist; groups of equal size share their draws
    (common random numbers across strategies, settings and metrics).
    """

    def __init__(self, seed: int, n_resamples: int):
        self.seed, self.n_resamples, self._cache = int(seed), int(n_resamples), {}

    def _rng(self, kind: int, size: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, kind, size])

    def id_counts(self, n_ids: int) -> np.ndarray:
        """B x n_ids: how often each id is drawn when n_ids ids are drawn with replacement."""
        if ("ids", n_ids) not in self._cache:
            drawn = self._rng(0, n_ids).integers(0, n_ids, size=(self.n_resamples, n_ids))
            drawn += n_ids * np.arange(self.n_resamples)[:, None]
            counts = np.bincount(drawn.ravel(), minlength=self.n_resamples * n_ids)
            self._cache["ids", n_ids] = counts.reshape(self.n_resamples, n_ids).astype(float)
        return self._cache["ids", n_ids]

    def seed_counts(self, n_seeds: int) -> np.ndarray:
        """B x n_seeds: how often each training seed is drawn (seeds drawn with replacement)."""
        if ("seeds", n_seeds) not in self._cache:
            self._cache["seeds", n_seeds] = self._rng(1, n_seeds).multinomial(
                n_seeds, np.full(n_seeds, 1.0 / n_seeds), size=self.n_resamples)
        return self._cache["seeds", n_seeds]

    def signs(self, n_ids: int) -> np.ndarray:
        """B x n_ids random signs +-1 (the sign-flip randomisations)."""
        if ("signs", n_ids) not in self._cache:
            flips = self._rng(2, n_ids).integers(0, 2, size=(self.n_resamples, n_ids))
            self._cache["signs", n_ids] = flips * 2.0 - 1.0
        return self._cache["signs", n_ids]


def _interval(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def _check_resampling(bootstrap_samples: int, confidence: float) -> None:
    if int(bootstrap_samples) < 10:
        raise StatsError(f"bootstrap_samples must be at least 10, got {bootstrap_samples}")
    if not 0.0 < confidence < 1.0:
        raise StatsError(f"confidence must be between 0 and 1, got {confidence}")


# ----------------------------------------------------------------------------- public API
def bootstrap_ci(per_query: pd.DataFrame, bootstrap_samples: int = 1000, seed: int = 0,
                 confidence: float = 0.95, resample_seeds: bool = True, by: Sequence[str] = ()) -> pd.DataFrame:
    """Macro mean and bootstrap confidence interval of every (model, strategy, eval_dataset, setting, metric).

    Args:
        per_query: the evaluation's per-query frame (columns ``PER_QUERY_COLUMNS``).
        bootstrap_samples: number of resamples B.
        seed: seed of the resampling; the same seed gives the same intervals.
        confidence: coverage of the percentile interval.
        resample_seeds: with several training seeds, also resample the seeds (two-way bootstrap,
            see the module docstring); ``False`` averages over seeds first (query sampling only).
        by: extra grouping columns (e.g. ``languages`` from ``label_seen_languages``).

    Returns a frame with ``CI_COLUMNS`` (+ ``by``): ``mean`` is the mean over seeds of the macro
    average, ``seed_sd`` the standard deviation of the per-seed macro averages (NaN for one seed).
    """
    _check_frame(per_query, by)
    _check_resampling(bootstrap_samples, confidence)
    codes = _codes(per_query)
    keys = ["model", "strategy", "eval_dataset", "setting", "metric", *by]
    draws, rows = _Draws(seed, bootstrap_samples), []
    for key, idx in _groups(per_query, keys):
        values = _dense([codes.seed[idx], codes.query[idx], codes.cell[idx]], codes.value[idx], " / ".join(map(str, key)))
        n_seeds, n_ids, n_cells = values.shape
        per_seed = _macro(np.ones((1, n_ids)), values)[0]
        replicates = _macro(draws.id_counts(n_ids), values)  # B x seeds
        if resample_seeds and n_seeds > 1:
            replicates = (replicates * draws.seed_counts(n_seeds)).sum(axis=1) / n_seeds
        else:
            replicates = replicates.mean(axis=1)
        rows.append((*key, float(per_seed.mean()), *_interval(replicates, confidence), n_seeds, n_ids,
                     n_cells, float(per_seed.std(ddof=1)) if n_seeds > 1 else np.nan))
    columns = CI_COLUMNS[:5] + list(by) + CI_COLUMNS[5:]
    return pd.DataFrame(rows, columns=keys + CI_COLUMNS[5:])[columns]


def _default_pairs(strategies: Iterable[str]) -> list[tuple[str, str]]:
    rank = {name: i for i, name in enumerate(STRATEGY_ORDER)}
    ordered = sorted(set(strategies), key=lambda s: (rank.get(s, len(rank)), s))
    return list(itertools.combinations(ordered, 2))


def _sign_flip_p(differences: np.ndarray, signs: np.ndarray) -> float:
    """Two-sided sign-flip p-value of the macro average of ``differences`` (ids x cells, NaN = missing).

    ``signs``: random +-1 matrix (flips x ids), one row per randomisation.
    """
    present = ~np.isnan(differences)
    per_cell = present.sum(axis=0)
    used = per_cell > 0
    # The macro average is linear in the ids: T = sum_i share_i, with share_i = id i's part of it.
    share = (np.where(present, differences, 0.0)[:, used] / per_cell[used]).sum(axis=1) / used.sum()
    observed = abs(share.sum())
    flipped = np.abs(signs @ share)
    at_least = (flipped >= observed - 1e-10 * (1.0 + observed)).sum()  # ties count as extreme
    return float((1 + at_least) / (1 + len(signs)))


def _paired_row(values: np.ndarray, a: int, b: int, counts: np.ndarray, signs: np.ndarray,
                confidence: float) -> list:
    """Statistics of strategy a - b from ``values`` (strategies x seeds x ids x cells)."""
    both = ~np.isnan(values[a]).all(axis=0) & ~np.isnan(values[b]).all(axis=0)  # ids x cells
    seeds_a, seeds_b = (np.where(both, values[s], np.nan) for s in (a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # seeds a strategy does not have
        mean_a, mean_b = np.nanmean(seeds_a, axis=0), np.nanmean(seeds_b, axis=0)
    differences = mean_a - mean_b
    ones = np.ones((1, values.shape[2]))
    macro_a, macro_b = _macro(ones, mean_a)[0], _macro(ones, mean_b)[0]
    single_a, single_b = _macro(ones, seeds_a)[0], _macro(ones, seeds_b)[0]
    single_a, single_b = single_a[~np.isnan(single_a)], single_b[~np.isnan(single_b)]
    by_seed = (single_a[:, None] - single_b[None, :]).ravel()
    replicates = _macro(counts, differences)
    return [float(macro_a), float(macro_b), float(_macro(ones, differences)[0]),
            *_interval(replicates, confidence), _sign_flip_p(differences, signs),
            int(both.any(axis=1).sum()), len(single_a), len(single_b), float(by_seed.min()), float(by_seed.max())]


def paired_tests(per_query: pd.DataFrame, pairs_of_strategies: Optional[Sequence[tuple[str, str]]] = None,
                 bootstrap_samples: int = 1000, seed: int = 0, confidence: float = 0.95,
                 by: Sequence[str] = ()) -> pd.DataFrame:
    """Paired comparison of strategies a and b per (model, eval_dataset, setting, metric).

    For each pair: each (query id, cell) value is averaged over the strategy's seeds, the
    difference a - b is taken where both strategies have a value, and its macro average is
    ``mean_diff``. ``ci_low``/``ci_high``: percentile interval of the paired bootstrap over
    query ids (the same drawn ids for a, b and all cells). ``p_value``: two-sided paired sign-flip
    randomisation test with ``bootstrap_samples`` random sign vectors (each id's difference vector
    over cells is flipped as a whole); identical strategies give exactly 1, and the smallest
    possible value is 1 / (B + 1). ``seed_diff_min/max``: the smallest and largest difference of
    macro averages between one seed of a and one seed of b.

    Args:
        per_query: the evaluation's per-query frame (columns ``PER_QUERY_COLUMNS``).
        pairs_of_strategies: (a, b) pairs to compare; default every pair of the strategies
            present, a before b in ``STRATEGY_ORDER``. Pairs absent from a group are skipped.
        bootstrap_samples: resamples B (and number of random sign vectors).
        seed: seed of the resampling; the same seed gives the same results.
        confidence: coverage of the interval of the difference.
        by: extra grouping columns (e.g. ``languages`` from ``label_seen_languages``).

    Returns a frame with ``TEST_COLUMNS`` (+ ``by``), one row per group and pair.
    """
    _check_frame(per_query, by)
    _check_resampling(bootstrap_samples, confidence)
    pairs = list(pairs_of_strategies) if pairs_of_strategies is not None else \
        _default_pairs(per_query["strategy"].unique())
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise StatsError(f"pairs_of_strategies: {pair!r} is not a pair of two different strategies")
    codes = _codes(per_query)
    keys = ["model", "eval_dataset", "setting", "metric", *by]
    draws, rows = _Draws(seed, bootstrap_samples), []
    for key, idx in _groups(per_query, keys):
        present = np.unique(codes.strategy[idx])  # strategies of this group, in the order of _dense
        position = {codes.strategies[c]: i for i, c in enumerate(present)}
        values = _dense([codes.strategy[idx], codes.seed[idx], codes.query[idx], codes.cell[idx]],
                        codes.value[idx], " / ".join(map(str, key)))
        counts, signs = draws.id_counts(values.shape[2]), draws.signs(values.shape[2])
        for a, b in pairs:
            if a in position and b in position:
                rows.append([*key, a, b, *_paired_row(values, position[a], position[b], counts, signs,
                                                      confidence)])
    columns = TEST_COLUMNS[:4] + list(by) + TEST_COLUMNS[4:]
    return pd.DataFrame(rows, columns=keys + TEST_COLUMNS[4:])[columns]


def label_seen_languages(per_query: pd.DataFrame, train_languages: Sequence[str],
                         column: str = "languages") -> pd.DataFrame:
    """A copy of ``per_query`` with a ``column`` saying whether a row's languages were seen in training.

    Monolingual and multilingual rows: ``seen`` / ``unseen`` by the query language (the pool of a
    multilingual query holds every language). Cross-lingual rows: ``both seen`` when the query
    and the pool language were both trained on, else ``query or pool unseen``.
    """
    _check_frame(per_query, ())
    unknown = sorted(set(per_query["setting"]) - set(SETTINGS))
    if unknown:
        raise StatsError(f"unknown setting(s) {', '.join(map(str, unknown))} (expected {', '.join(SETTINGS)})")
    seen_query = per_query["query_lang"].isin(train_languages).to_numpy()
    seen_pool = per_query["pool_lang"].isin(train_languages).to_numpy()
    cross = (per_query["setting"] == "crosslingual").to_numpy()
    labels = np.where(cross, np.where(seen_query & seen_pool, "both seen", "query or pool unseen"),
                      np.where(seen_query, "seen", "unseen"))
    return per_query.assign(**{column: labels})


def unseen_language_split(per_query: pd.DataFrame, train_languages: Sequence[str], **bootstrap) -> pd.DataFrame:
    """Macro means with bootstrap intervals over the cells whose languages were seen / unseen in training.

    Example (issue 7, item 3): training on MLQA-R and evaluating on XQuAD-R leaves el, ru, th
    and tr unseen. The split labels are those of ``label_seen_languages``; each split is
    macro-averaged over its own cells and resampled as in ``bootstrap_ci`` (``**bootstrap`` is
    passed to it). Returns ``bootstrap_ci``'s columns plus ``languages``.
    """
    if isinstance(train_languages, str) or not len(train_languages):
        raise StatsError(f"train_languages must be a non-empty list of language codes, got {train_languages!r}")
    return bootstrap_ci(label_seen_languages(per_query, train_languages), by=["languages"], **bootstrap)


# ----------------------------------------------------------------------------- claims
@dataclass(frozen=True)
class Claim:
    """One of the paper's claims, tested as ``strategy`` against each of ``competitors``.

    kind ``best``: ``strategy`` is better than every competitor in every setting.
    kind ``matches_or_beats``: ``strategy`` is not worse than any competitor in any setting.
    """
    name: str
    kind: str
    strategy: str
    competitors: tuple[str, ...]
    settings: tuple[str, ...]
    metric: str


CLAIMS = (
    Claim("X-X-mono is best monolingually", "best", "x-x-mono", ("x-y", "hybrid"), ("monolingual",), "mAP"),
    Claim("X-Y is best cross-lingually", "best", "x-y", ("x-x-mono", "hybrid"), ("crosslingual",), "mAP"),
    Claim("Hybrid matches or beats X-X-mono and X-Y everywhere", "matches_or_beats", "hybrid",
          ("x-x-mono", "x-y"), SETTINGS, "mAP"),
    Claim("Hybrid lowers the rank distance relative to X-X-mono", "best", "hybrid", ("x-x-mono",),
          ("multilingual",), "rank_distance"),
)


def _holm(p_values: np.ndarray) -> np.ndarray:
    """Holm's step-down adjustment (Holm 1979) of a family of p-values."""
    order = np.argsort(p_values)
    steps = (len(p_values) - np.arange(len(p_values))) * p_values[order]
    adjusted = np.empty(len(p_values))
    adjusted[order] = np.minimum(np.maximum.accumulate(steps), 1.0)
    return adjusted


def _comparison(tests: pd.DataFrame, x: str, y: str, setting: str, metric: str) -> Optional[dict]:
    """The test of x - y in ``tests`` (one model and dataset), turned around if it was run as y - x."""
    rows = tests[(tests["setting"] == setting) & (tests["metric"] == metric)]
    for a, b, sign in ((x, y, 1.0), (y, x, -1.0)):
        found = rows[(rows["strategy_a"] == a) & (rows["strategy_b"] == b)]
        if len(found) > 1:
            raise StatsError(f"significance frame has {len(found)} rows for {a} vs {b}, {setting} {metric}")
        if len(found) == 1:
            row = found.iloc[0]
            low, high = sorted((sign * row["ci_low"], sign * row["ci_high"]))
            seed_range = sorted((sign * row.get("seed_diff_min", np.nan), sign * row.get("seed_diff_max", np.nan)))
            return dict(x=x, y=y, setting=setting, diff=sign * row["mean_diff"], low=low, high=high,
                        p=float(row["p_value"]), seed_min=seed_range[0], seed_max=seed_range[1])
    return None


def _describe(c: dict, metric: str) -> str:
    digits = 1 if metric in LOWER_IS_BETTER else 4
    text = (f"{c['x']} - {c['y']} ({c['setting']} {metric}) = {c['diff']:+.{digits}f} "
            f"[{c['low']:+.{digits}f}, {c['high']:+.{digits}f}], p = {c['p']:.3g}")
    if c["p_holm"] != c["p"]:
        text += f" (Holm {c['p_holm']:.3g})"
    return text


def _seed_caution(deciding: list[dict], metric: str) -> str:
    mixed = [c for c in deciding if c["seed_min"] < 0 < c["seed_max"]]
    if not mixed:
        return ""
    digits = 1 if metric in LOWER_IS_BETTER else 4
    spans = "; ".join(f"{c['x']} - {c['y']} ({c['setting']}) from {c['seed_min']:+.{digits}f} "
                      f"to {c['seed_max']:+.{digits}f}" for c in mixed)
    return f"; caution, between single seeds the sign changes: {spans}"


def _verdict(claim: Claim, found: list[dict], alpha: float, margin: float) -> tuple[str, str]:
    direction = -1.0 if claim.metric in LOWER_IS_BETTER else 1.0  # +1: higher is better
    for c, p_holm in zip(found, _holm(np.array([c["p"] for c in found]))):
        c["p_holm"] = p_holm
        c["gain"] = direction * c["diff"]  # > 0: claim.strategy is better
        c["worst_gain"] = min(direction * c["low"], direction * c["high"])  # CI bound least favourable
    describe = lambda cs: "; ".join(_describe(c, claim.metric) for c in cs)  # noqa: E731
    against = [c for c in found if c["gain"] < 0 and c["p_holm"] < alpha]
    if against:
        return "does not hold", (f"{claim.strategy} is significantly worse than a competitor: "
                                 f"{describe(against)}{_seed_caution(against, claim.metric)}")
    if claim.kind == "best":
        weak = [c for c in found if not (c["gain"] > 0 and c["p"] < alpha)]
        if not weak:
            return "holds", (f"{claim.strategy} is significantly better than every competitor: "
                             f"{describe(found)}{_seed_caution(found, claim.metric)}")
        return "undecided", f"no competitor is significantly better, but not every lead is significant: {describe(weak)}"
    short = [c for c in found if c["worst_gain"] < -margin]
    if not short:
        closest = min(found, key=lambda c: c["worst_gain"])
        return "holds", (f"no significant deficit and every interval excludes a deficit larger than the margin "
                         f"{margin:g}; closest: {describe([closest])}{_seed_caution(found, claim.metric)}")
    return "undecided", (f"no significant deficit, but a deficit larger than the margin {margin:g} is not "
                         f"excluded: {describe(short)}")


def claim_verdicts(significance: pd.DataFrame, alpha: float = 0.05, margin: float = 0.005,
                   claims: Sequence[Claim] = CLAIMS) -> pd.DataFrame:
    """Verdict on each of the paper's claims per (model, eval_dataset), from ``paired_tests`` output.

    Each claim compares ``claim.strategy`` (S) with competitors C in some settings; one
    comparison = one row of ``significance`` (used in either orientation). "S better" means a
    higher mAP, or a lower rank distance. The rules, checked in this order:

    - ``not tested``: a needed comparison is missing from ``significance``.
    - ``does not hold``: some competitor is significantly better than S: the difference favours
      C and its Holm-adjusted p-value (over the claim's comparisons) is < ``alpha``.
    - ``best`` claims (a, b, d): ``holds`` when S is better than every competitor in every
      setting with unadjusted p < ``alpha`` (an intersection-union test: all must be
      significant, which already keeps the error at ``alpha``); else ``undecided``.
    - ``matches or beats`` claim (c): ``holds`` when, for every competitor and setting, the
      interval of S - C (95% by default) lies above ``-margin``: a one-sided non-inferiority
      test at level 2.5% per comparison, with margin ``margin`` in the metric's units (0.005
      mAP by default); else ``undecided`` (a deficit larger than the margin is not excluded). A significant deficit counts against the claim even
      when it is smaller than the margin (rule 2): the data then show S below C.

    p-values are the sign-flip p-values of ``paired_tests`` (conditional on the trained models);
    when the difference between single seeds changes sign, the reason says so.

    Returns a frame ``model, eval_dataset, claim, verdict, reason`` (reason: one sentence with
    the differences, their intervals and p-values).
    """
    needed = ["eval_dataset", "setting", "metric", "strategy_a", "strategy_b", "mean_diff", "ci_low",
              "ci_high", "p_value"]
    missing = [c for c in needed if c not in significance.columns]
    if missing:
        raise StatsError(f"significance frame lacks column(s) {', '.join(missing)} (use paired_tests output)")
    if not 0.0 < alpha < 1.0 or margin < 0:
        raise StatsError(f"alpha must be in (0, 1) and margin >= 0, got alpha={alpha}, margin={margin}")
    keys = [c for c in ("model", "eval_dataset") if c in significance.columns]
    rows = []
    for key, tests in significance.groupby(keys, sort=True):
        key = key if isinstance(key, tuple) else (key,)
        for claim in claims:
            wanted = [(setting, other) for setting in claim.settings for other in claim.competitors]
            found = [_comparison(tests, claim.strategy, other, setting, claim.metric) for setting, other in wanted]
            absent = [f"{claim.strategy} vs {other} ({setting} {claim.metric})"
                      for (setting, other), c in zip(wanted, found) if c is None]
            if absent:
                verdict, reason = "not tested", f"no paired test of {', '.join(absent)}"
            else:
                verdict, reason = _verdict(claim, found, alpha, margin)
            rows.append((*key, claim.name, verdict, reason))
    return pd.DataFrame(rows, columns=[*keys, "claim", "verdict", "reason"])
