"""Bootstrap intervals of macro averages, resampling clusters of questions and training runs.

A reported number is a macro average: the mean over cells of the per-cell mean over queries;
with several runs (seeds) of a strategy, the mean over runs of that macro average.

Resampling units (issue 14). Questions are not independent: the ids whose answers come from
one paragraph share context and often the answer sentence, so the unit of resampling is the
*cluster* (``clusters``: query id -> cluster, e.g. ``hybridlib.data.paragraph_clusters``;
default every id alone). Training runs are the replicates of a strategy: a verdict is about
the strategy, not about three particular trained models. One bootstrap replicate draws the
clusters with replacement (the SAME drawn clusters in every cell of the setting, because the
translations of a question share its id) and, independently, the strategy's runs with
replacement; the macro average is then recomputed, cells keeping their unequal query counts.
This is the two-way bootstrap of crossed factors (questions x runs; Owen 2007, "The pigeonhole
bootstrap", Ann. Appl. Stat.), with whole clusters as the question-level unit (Davison &
Hinkley 1997, sec. 3.8). With R runs the run level is resampled from R values, which
underestimates the run variance by the factor (R - 1) / R (0.8 for five runs); ``run_sd``
is reported beside the interval.

Efficiency: a replicate is a count vector ``c`` over clusters, and a cell's resampled mean is
``sum_g c_g S_gk / sum_g c_g N_gk`` (``S``: the cluster's sum of values in cell k, ``N``: its
number of values), so B replicates of every run and cell are two matrix products
(B x clusters) @ (clusters x runs*cells).

Intervals are percentile intervals (Efron & Tibshirani 1993, ch. 13).
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import pandas as pd

from .frame import QUESTION, Clusters, check_frame, check_resampling, dense, frame_codes, group_clusters, groups

CI_COLUMNS = ["model", "strategy", "eval_dataset", "setting", "metric", "mean", "ci_low", "ci_high", "run_sd",
              "n_runs", "n_queries", "n_clusters", "n_cells", "resampling_unit"]


# ----------------------------------------------------------------------------- one group as arrays
@dataclass
class Block:
    """The values of one group, ``runs x ids x cells`` (NaN = missing), and the cluster of each id.

    ``clusters`` holds codes 0..k-1, each used by at least one id (``frame.group_clusters``); runs
    without any value must be left out by the caller (``drop_empty_runs``).
    """
    values: np.ndarray
    clusters: np.ndarray

    def __post_init__(self):
        n_runs, n_ids, n_cells = self.values.shape
        self.n_clusters = int(self.clusters.max()) + 1
        present = ~np.isnan(self.values)
        order = np.argsort(self.clusters, kind="stable")  # ids of a cluster side by side, summed with reduceat
        starts = np.searchsorted(self.clusters[order], np.arange(self.n_clusters))
        by_id = np.moveaxis(np.where(present, self.values, 0.0), 1, 0)[order].reshape(n_ids, -1)
        self.sums = np.add.reduceat(by_id, starts, axis=0)  # clusters x (runs * cells)
        counts = np.add.reduceat(np.moveaxis(present, 1, 0)[order].reshape(n_ids, -1), starts, axis=0)
        counts = counts.astype(float)
        first = counts[:, :n_cells]
        self.one_mask = bool((counts.reshape(-1, n_runs, n_cells) == first[:, None, :]).all())
        self.counts = first if self.one_mask else counts  # the usual case: the same values exist in every run

    @property
    def n_runs(self) -> int:
        return self.values.shape[0]

    @property
    def n_cells(self) -> int:
        return self.values.shape[2]

    def run_macros(self, cluster_counts: np.ndarray) -> np.ndarray:
        """``B x runs``: each run's macro average under each row of cluster counts (``B x clusters``).

        A cell none of whose clusters was drawn is left out of that replicate's average.
        """
        b = len(cluster_counts)
        sums = (cluster_counts @ self.sums).reshape(b, self.n_runs, self.n_cells)
        weights = (cluster_counts @ self.counts).reshape(b, -1, self.n_cells)
        drawn = weights > 0
        means = np.divide(sums, weights, out=np.zeros_like(sums), where=drawn)
        with np.errstate(invalid="ignore", divide="ignore"):  # 0 / 0: a replicate that drew no value of a run
            return means.sum(axis=-1) / drawn.sum(axis=-1)

    def observed(self) -> np.ndarray:
        """Each run's macro average (the evaluation's number): every cluster counted once."""
        return self.run_macros(np.ones((1, self.n_clusters)))[0]


def drop_empty_runs(values: np.ndarray) -> np.ndarray:
    """``values`` (runs x ids x cells) without the runs that have no value at all."""
    return values[~np.isnan(values).all(axis=(1, 2))]


def over_runs(per_run: np.ndarray, run_counts: Optional[np.ndarray]) -> np.ndarray:
    """Mean over runs of ``per_run`` (B x runs), each run weighted by how often it was drawn (None: once)."""
    present = ~np.isnan(per_run)
    weights = present if run_counts is None else run_counts * present
    with np.errstate(invalid="ignore", divide="ignore"):
        return (np.where(present, per_run, 0.0) * weights).sum(axis=1) / weights.sum(axis=1)


# ----------------------------------------------------------------------------- random draws
class Draws:
    """The random draws of one call, cached and shared by every group that needs the same draw.

    Cluster draws have their own stream per number of clusters, so groups with the same clusters
    share them (the same drawn questions for every strategy, setting and metric). Run draws have
    a stream per (strategy, number of runs): a strategy's runs are drawn the same way in every
    group and in ``bootstrap_ci`` and ``paired_tests``, and independently of any other strategy's
    runs (runs are not paired across strategies).
    """

    def __init__(self, seed: int, n_resamples: int):
        self.seed, self.n_resamples, self._cache = int(seed), int(n_resamples), {}

    def _counts(self, key: tuple, stream: list, n: int) -> np.ndarray:
        if key not in self._cache:
            rng = np.random.default_rng([self.seed, *stream])
            self._cache[key] = rng.multinomial(n, np.full(n, 1.0 / n), size=self.n_resamples).astype(float)
        return self._cache[key]

    def clusters(self, n_clusters: int) -> np.ndarray:
        """``B x n_clusters``: how often each cluster is drawn when n_clusters are drawn with replacement."""
        return self._counts(("clusters", n_clusters), [0, n_clusters], n_clusters)

    def runs(self, strategy: str, n_runs: int) -> np.ndarray:
        """``B x n_runs``: how often each run of ``strategy`` is drawn (runs drawn with replacement)."""
        tag = zlib.crc32(str(strategy).encode("utf-8"))
        return self._counts(("runs", strategy, n_runs), [1, n_runs, tag], n_runs)


def replicates(block: Block, draws: Draws, strategy: str, resample_runs: bool) -> np.ndarray:
    """The B bootstrap replicates of the mean over runs of the macro average of ``block``."""
    per_run = block.run_macros(draws.clusters(block.n_clusters))
    run_counts = draws.runs(strategy, block.n_runs) if resample_runs and block.n_runs > 1 else None
    return over_runs(per_run, run_counts)


# ----------------------------------------------------------------------------- summaries of replicates
def percentile_interval(values: np.ndarray, confidence: float) -> tuple[float, float]:
    """The equal-tailed percentile interval of bootstrap replicates."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.nanquantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def percentile_p_value(differences: np.ndarray) -> float:
    """Two-sided p-value of "no difference" from bootstrap replicates of a difference.

    ``p = min(1, 2 (1 + min(#{T* <= 0}, #{T* >= 0})) / (B + 1))``: the smallest ``1 - confidence``
    whose equal-tailed percentile interval excludes 0 (Efron & Tibshirani 1993, sec. 15.4), so
    ``p < alpha`` exactly when the interval at level ``1 - alpha`` lies on one side of 0 (up to
    the +1 that keeps p above 0). Identical strategies give 1; the smallest value is 2 / (B + 1).
    """
    values = differences[~np.isnan(differences)]
    tie = 1e-12 * max(1.0, float(np.abs(values).max(initial=0.0)))  # rounding noise counts as 0
    extreme = min(int((values <= tie).sum()), int((values >= -tie).sum()))
    return float(min(1.0, 2.0 * (1 + extreme) / (1 + len(values))))


def resampling_unit(unit: str, runs: bool) -> str:
    """The words of the ``resampling_unit`` column, e.g. ``paragraph clusters and training runs``."""
    clusters = "question ids" if unit == QUESTION else f"{unit} clusters".lstrip()
    return f"{clusters} and training runs" if runs else f"{clusters} (training runs fixed)"


# ----------------------------------------------------------------------------- public API
def bootstrap_ci(per_query: pd.DataFrame, *, clusters: Clusters = None, bootstrap_samples: int = 1000,
                 seed: int = 0, confidence: float = 0.95, resample_runs: bool = True,
                 by: Sequence[str] = ()) -> pd.DataFrame:
    """Macro mean and bootstrap interval of every (model, strategy, eval_dataset, setting, metric).

    Args:
        per_query: the evaluation's per-query frame (columns ``PER_QUERY_COLUMNS``).
        clusters: query id -> cluster id (a Series or a mapping covering every id), e.g.
            ``hybridlib.data.paragraph_clusters(data)``; None: every id is its own cluster.
        bootstrap_samples: number of replicates B.
        seed: seed of the resampling; the same seed gives the same intervals.
        confidence: coverage of the percentile interval.
        resample_runs: also resample each strategy's runs (seeds), see the module docstring;
            ``False`` keeps the runs fixed (question sampling only).
        by: extra grouping columns (e.g. ``languages`` from ``label_seen_languages``).

    Returns a frame with ``CI_COLUMNS`` (+ ``by`` after ``metric``): ``mean`` is the mean over runs
    of the macro average, ``run_sd`` the standard deviation of the per-run macro averages (NaN
    for one run), ``n_clusters`` the clusters holding the ``n_queries`` ids, ``resampling_unit``
    what was resampled.
    """
    check_frame(per_query, by)
    check_resampling(bootstrap_samples, confidence)
    codes = frame_codes(per_query, clusters)
    keys = ["model", "strategy", "eval_dataset", "setting", "metric", *by]
    draws, rows = Draws(seed, bootstrap_samples), []
    for key, idx in groups(per_query, keys):
        values = dense([codes.run[idx], codes.query[idx], codes.cell[idx]], codes.value[idx],
                       " / ".join(map(str, key)))
        block = Block(drop_empty_runs(values), group_clusters(codes, idx))
        per_run = block.observed()
        low, high = percentile_interval(replicates(block, draws, key[1], resample_runs), confidence)
        rows.append((*key, float(per_run.mean()), low, high, float(per_run.std(ddof=1)) if block.n_runs > 1 else
                     np.nan, block.n_runs, values.shape[1], block.n_clusters, block.n_cells,
                     resampling_unit(codes.unit, resample_runs)))
    columns = CI_COLUMNS[:5] + list(by) + CI_COLUMNS[5:]
    return pd.DataFrame(rows, columns=keys + CI_COLUMNS[5:])[columns]
