"""The per-query frame as dense arrays: checks, integer codes, clusters of questions, one block per group.

The evaluation's per-query frame (``hybridlib.evaluate``) has one value per row, columns
``PER_QUERY_COLUMNS``. A *cell* is one ``(query_lang, pool_lang)`` pair of a setting; a *run*
is one trained model (one ``seed`` of a strategy); a *cluster* is a set of question ids that
are not independent (by default each id alone; ``hybridlib.data.paragraph_clusters`` gives the
paragraph of each id's answer). A group of rows becomes a ``Block``: values indexed by
(run, id, cell) and the cluster of each id.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence, Union

import numpy as np
import pandas as pd

from ..constants import PER_QUERY_COLUMNS
from ..errors import HybridlibError

Clusters = Optional[Union[pd.Series, Mapping]]
QUESTION = "question"  # the unit when every id is its own cluster


class StatsError(HybridlibError, ValueError):
    """The per-query or significance frame is unusable; the message names the problem."""


def check_frame(per_query: pd.DataFrame, by: Sequence[str]) -> None:
    """Raise ``StatsError`` unless ``per_query`` is a non-empty frame with the per-query columns and ``by``."""
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


def check_resampling(bootstrap_samples: int, confidence: float) -> None:
    """Raise ``StatsError`` for fewer than 10 resamples or a confidence outside (0, 1)."""
    if int(bootstrap_samples) < 10:
        raise StatsError(f"bootstrap_samples must be at least 10, got {bootstrap_samples}")
    if not 0.0 < confidence < 1.0:
        raise StatsError(f"confidence must be between 0 and 1, got {confidence}")


def _factorize(values) -> tuple[np.ndarray, np.ndarray]:
    """Codes 0..n-1 in sorted order of the values, and the values; a missing value (NaN, None) is a value too."""
    try:
        codes, uniques = pd.factorize(values, sort=True, use_na_sentinel=False)
    except TypeError:  # mixed types (e.g. int and str ids): order them as strings
        codes, uniques = pd.factorize(pd.Series(values).astype(str), sort=True)
    return codes, np.asarray(uniques, dtype=object)


def _cluster_codes(ids: np.ndarray, clusters: Clusters) -> tuple[np.ndarray, str]:
    """The cluster code of each id (codes in sorted order of the cluster labels) and the cluster unit's name."""
    if clusters is None:
        return np.arange(len(ids)), QUESTION
    mapping = clusters if isinstance(clusters, pd.Series) else pd.Series(dict(clusters), dtype=object)
    if mapping.index.has_duplicates:
        raise StatsError("clusters: a query id appears more than once in the mapping")
    labels = mapping.reindex(pd.Index(ids, dtype=object))
    if labels.isna().any():
        absent = ids[labels.isna().to_numpy()]
        raise StatsError(f"clusters: no cluster for {len(absent)} query id(s) of the per-query frame, "
                         f"e.g. {', '.join(map(repr, absent[:3]))}")
    return _factorize(labels.to_numpy())[0], str(mapping.name or "")


@dataclass
class Codes:
    """Integer codes of the whole per-query frame, computed once and shared by every group."""
    run: np.ndarray
    query: np.ndarray
    cluster_of_query: np.ndarray  # cluster code of each query code
    cell: np.ndarray
    strategy: np.ndarray
    strategies: np.ndarray
    value: np.ndarray
    unit: str  # what a cluster is: "question" (each id alone), the mapping's name ("paragraph"), or ""


def frame_codes(per_query: pd.DataFrame, clusters: Clusters = None) -> Codes:
    """The ``Codes`` of ``per_query``; ``clusters`` maps every query id to its cluster (None: each id alone)."""
    query, ids = _factorize(per_query["query_id"])
    query_lang, pool_lang = _factorize(per_query["query_lang"])[0], _factorize(per_query["pool_lang"])[0]
    strategy, strategies = pd.factorize(per_query["strategy"])
    cluster_of_query, unit = _cluster_codes(ids, clusters)
    return Codes(run=_factorize(per_query["seed"])[0], query=query, cluster_of_query=cluster_of_query,
                 cell=query_lang * (pool_lang.max() + 1) + pool_lang, strategy=strategy,
                 strategies=np.asarray(strategies), value=per_query["value"].to_numpy(float), unit=unit)


def _renumber(codes: np.ndarray) -> np.ndarray:
    """Codes renumbered 0..n-1 in the order of the original codes (a sort-free np.unique)."""
    seen = np.zeros(int(codes.max()) + 1, dtype=bool)
    seen[codes] = True
    return (np.cumsum(seen) - 1)[codes]


def dense(axes: Sequence[np.ndarray], values: np.ndarray, where: str) -> np.ndarray:
    """Scatter ``values`` into an array indexed by the (renumbered) codes of ``axes``; NaN = missing."""
    local = [_renumber(codes) for codes in axes]
    shape = tuple(int(codes.max()) + 1 for codes in local)
    flat = np.ravel_multi_index(local, shape)
    if np.bincount(flat, minlength=int(np.prod(shape))).max() > 1:
        raise StatsError(f"{where}: several values for one (strategy, seed, query_id, query_lang, pool_lang)")
    out = np.full(int(np.prod(shape)), np.nan)
    out[flat] = values
    return out.reshape(shape)


def group_clusters(codes: Codes, rows: np.ndarray) -> np.ndarray:
    """Cluster of each id of a group (ids in the order of ``dense``), renumbered 0..k-1."""
    ids = np.flatnonzero(np.bincount(codes.query[rows]))  # the group's query codes, sorted like _renumber
    return _renumber(codes.cluster_of_query[ids])


def groups(per_query: pd.DataFrame, keys: list[str]) -> Iterable[tuple[tuple, np.ndarray]]:
    """(key tuple, row positions) per group, in sorted key order."""
    for key, rows in sorted(per_query.groupby(keys, sort=False, dropna=False).indices.items()):
        yield (key if isinstance(key, tuple) else (key,)), rows
