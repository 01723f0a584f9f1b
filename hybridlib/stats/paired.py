"""Paired comparisons of two strategies: the difference of macro averages, its interval and p-value.

"Paired" means the same questions: a replicate draws the clusters of questions once and uses
them for both strategies (and every cell). The runs are NOT paired (seed 0 of one strategy has
nothing in common with seed 0 of another), so each strategy's runs are drawn independently,
with the same draws as in ``bootstrap_ci`` (see ``hybridlib.stats.resampling``).

The p-value comes from the same replicates (``percentile_p_value``): the two-sided p of "no
difference" is the smallest ``1 - confidence`` whose percentile interval of the difference
excludes 0, so a p-value and the interval beside it never disagree. A two-level permutation
test (sign flips of whole clusters crossed with exchanges of runs between the two strategies)
was not chosen: exchanging runs tests "the strategies' runs are identically distributed" (equal
run-to-run spread too), not "equal means", and with 3-5 runs a side it has only C(2R, R) run
arrangements (20 for three runs, 252 for five).
"""
from __future__ import annotations

import itertools
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd

from ..constants import ordered_strategies
from .frame import Clusters, StatsError, check_frame, check_resampling, dense, frame_codes, group_clusters, groups
from .resampling import (
    Block,
    Draws,
    drop_empty_runs,
    percentile_interval,
    percentile_p_value,
    replicates,
    resampling_unit,
)

TEST_COLUMNS = ["model", "eval_dataset", "setting", "metric", "strategy_a", "strategy_b", "mean_a", "mean_b",
                "mean_diff", "ci_low", "ci_high", "p_value", "n_queries", "n_clusters", "n_runs_a", "n_runs_b",
                "run_diff_min", "run_diff_max", "resampling_unit"]


def default_pairs(strategies: Iterable[str]) -> list[tuple[str, str]]:
    """Every pair of the distinct ``strategies``, the first before the second in the study's order."""
    return list(itertools.combinations(ordered_strategies(strategies), 2))


def _check_pairs(pairs: Sequence[tuple[str, str]]) -> None:
    for pair in pairs:
        if len(pair) != 2 or pair[0] == pair[1]:
            raise StatsError(f"pairs_of_strategies: {pair!r} is not a pair of two different strategies")


class _Group:
    """The blocks of one (model, eval_dataset, setting, metric) group, one per strategy, built once."""

    def __init__(self, values: np.ndarray, clusters: np.ndarray, names: list[str]):
        self.values, self.clusters, self.names = values, clusters, names  # strategies x runs x ids x cells
        self.support = ~np.isnan(values).all(axis=1)  # strategies x ids x cells: any run has a value
        self._cache = {}

    def side(self, s: int, where: np.ndarray, draws: Draws, resample_runs: bool) -> tuple[Block, np.ndarray]:
        """Strategy s on the (id, cell) positions ``where``: its block and its replicates.

        Cached per strategy when nothing is left out (the usual case: both strategies of a pair
        have the same queries), so each strategy is resampled once per group.
        """
        if (where == self.support[s]).all() and s in self._cache:
            return self._cache[s]
        block = Block(drop_empty_runs(np.where(where, self.values[s], np.nan)), self.clusters)
        result = block, replicates(block, draws, self.names[s], resample_runs)
        if (where == self.support[s]).all():
            self._cache[s] = result
        return result


def _paired_row(group: _Group, a: int, b: int, draws: Draws, resample_runs: bool, confidence: float) -> list:
    """The statistics of strategy a - strategy b on the (id, cell) positions both have."""
    both = group.support[a] & group.support[b]
    if not both.any():
        return []
    (block_a, replicates_a), (block_b, replicates_b) = (group.side(s, both, draws, resample_runs) for s in (a, b))
    runs_a, runs_b = block_a.observed(), block_b.observed()
    differences = replicates_a - replicates_b
    by_run = (runs_a[:, None] - runs_b[None, :]).ravel()
    ids = both.any(axis=1)
    return [float(runs_a.mean()), float(runs_b.mean()), float(runs_a.mean() - runs_b.mean()),
            *percentile_interval(differences, confidence), percentile_p_value(differences), int(ids.sum()),
            len(np.unique(group.clusters[ids])), block_a.n_runs, block_b.n_runs, float(by_run.min()),
            float(by_run.max())]


def paired_tests(per_query: pd.DataFrame, pairs_of_strategies: Optional[Sequence[tuple[str, str]]] = None, *,
                 clusters: Clusters = None, bootstrap_samples: int = 1000, seed: int = 0,
                 confidence: float = 0.95, resample_runs: bool = True, by: Sequence[str] = ()) -> pd.DataFrame:
    """Paired comparison of strategies a and b per (model, eval_dataset, setting, metric).

    For each pair, on the (query id, cell) positions both strategies have: ``mean_a``/``mean_b``
    are the means over each strategy's runs of its macro average and ``mean_diff = mean_a -
    mean_b``. ``ci_low``/``ci_high``: percentile interval of the bootstrap replicates of the
    difference (shared clusters, each side's runs drawn independently: see the module
    docstring). ``p_value``: two-sided p of "no difference" from the same replicates
    (``percentile_p_value``; identical strategies give 1, the smallest value is 2 / (B + 1)).
    ``run_diff_min``/``run_diff_max``: the smallest and largest difference between the macro
    averages of one run of a and one run of b.

    Args:
        per_query: the evaluation's per-query frame (columns ``PER_QUERY_COLUMNS``).
        pairs_of_strategies: (a, b) pairs to compare; default every pair of the strategies
            present, a before b in the study's order. Pairs absent from a group are skipped.
        clusters: query id -> cluster id, as in ``bootstrap_ci`` (None: every id alone).
        bootstrap_samples: number of replicates B.
        seed: seed of the resampling; the same seed gives the same results.
        confidence: coverage of the interval of the difference.
        resample_runs: also resample each strategy's runs; ``False`` keeps them fixed.
        by: extra grouping columns (e.g. ``languages`` from ``label_seen_languages``).

    Returns a frame with ``TEST_COLUMNS`` (+ ``by`` after ``metric``), one row per group and pair.
    """
    check_frame(per_query, by)
    check_resampling(bootstrap_samples, confidence)
    pairs = list(pairs_of_strategies) if pairs_of_strategies is not None else \
        default_pairs(per_query["strategy"].unique())
    _check_pairs(pairs)
    codes = frame_codes(per_query, clusters)
    keys = ["model", "eval_dataset", "setting", "metric", *by]
    unit = resampling_unit(codes.unit, resample_runs)
    draws, rows = Draws(seed, bootstrap_samples), []
    for key, idx in groups(per_query, keys):
        present = np.unique(codes.strategy[idx])  # the group's strategies, in the order of dense()
        names = [str(codes.strategies[c]) for c in present]
        values = dense([codes.strategy[idx], codes.run[idx], codes.query[idx], codes.cell[idx]], codes.value[idx],
                       " / ".join(map(str, key)))
        group = _Group(values, group_clusters(codes, idx), names)
        for a, b in pairs:
            if a in names and b in names:
                statistics = _paired_row(group, names.index(a), names.index(b), draws, resample_runs, confidence)
                if statistics:
                    rows.append([*key, a, b, *statistics, unit])
    columns = TEST_COLUMNS[:4] + list(by) + TEST_COLUMNS[4:]
    return pd.DataFrame(rows, columns=keys + TEST_COLUMNS[4:])[columns]
