"""The paper's published numbers, held once: the headline table, its pools, its effect sizes.

Source: the main results table of Elmahdy, Lin & Ahmad (arXiv 2408.10536), reproduced in
docs/paper.md. ``hybridlib.report`` shows these numbers beside ours; ``hybridlib.stats``
sets the paper's differences beside our intervals in the claims table.

>>> paper_value("LaBSE", "hybrid", "mlqa-r", "multilingual", "mAP")
0.579
>>> round(paper_difference("XLM-R", "xquad-r", "monolingual", "mAP", "hybrid", "x-x-mono"), 3)
0.006
"""
from __future__ import annotations

from typing import Optional

from .constants import CROSS, HYBRID_KINDS, MONO, MULTI, RANK_DISTANCE

PAPER_MODELS = ("XLM-R", "LaBSE")
PAPER_DATASETS = ("xquad-r", "mlqa-r")
# (setting, metric) of the table's columns, per dataset.
PAPER_COLUMNS = ((MONO, "mAP"), (CROSS, "mAP"), (MULTI, "mAP"), (MULTI, RANK_DISTANCE))
# Candidates of the full multilingual pools as hybridlib.data loads them; the paper ranked the
# full pools, so its rank distances (positions) are on this scale.
PAPER_POOL_SIZES = {"xquad-r": 13014, "mlqa-r": 20534}

# (model, strategy) -> XQuAD-R mono / cross / multi mAP, MLQA-R mono / cross / multi mAP,
# rank distance XQuAD-R / MLQA-R.
_TABLE = {
    ("XLM-R", "x-x-mono"): (.792, .674, .547, .648, .584, .473, 410.2, 287.5),
    ("XLM-R", "x-y"): (.755, .700, .593, .626, .620, .508, 295.4, 226.7),
    ("XLM-R", "hybrid"): (.798, .705, .593, .648, .623, .512, 286.6, 227.1),
    ("LaBSE", "x-x-mono"): (.808, .752, .652, .681, .656, .550, 261.5, 225.3),
    ("LaBSE", "x-y"): (.801, .762, .679, .671, .677, .576, 225.2, 198.3),
    ("LaBSE", "hybrid"): (.817, .767, .682, .686, .681, .579, 221.1, 195.0),
}


def _position(dataset: str, setting: str, metric: str) -> Optional[int]:
    """Index into a ``_TABLE`` row of the (dataset, setting, metric) column; None if the paper lacks it."""
    if dataset not in PAPER_DATASETS or (setting, metric) not in PAPER_COLUMNS:
        return None
    d, column = PAPER_DATASETS.index(dataset), PAPER_COLUMNS.index((setting, metric))
    return 6 + d if metric == RANK_DISTANCE else 3 * d + column


def paper_value(model: str, strategy: str, dataset: str, setting: str, metric: str) -> Optional[float]:
    """The paper's number for one cell of its headline table, or None where the paper has none.

    ``model``: one of ``PAPER_MODELS``; ``strategy``: ``x-x-mono``, ``x-y`` or ``hybrid``;
    ``dataset``: ``xquad-r`` or ``mlqa-r``; (``setting``, ``metric``): one of ``PAPER_COLUMNS``.
    """
    position = _position(dataset, setting, metric)
    row = _TABLE.get((model, strategy))
    return None if position is None or row is None else row[position]


def paper_values() -> list[tuple[str, str, str, str, str, float]]:
    """Every number of the headline table as ``(model, strategy, dataset, setting, metric, value)``."""
    return [(model, strategy, dataset, setting, metric, paper_value(model, strategy, dataset, setting, metric))
            for (model, strategy) in _TABLE for dataset in PAPER_DATASETS for setting, metric in PAPER_COLUMNS]


def paper_difference(model: str, dataset: str, setting: str, metric: str, a: str, b: str,
                     pool_size: Optional[int] = None) -> Optional[float]:
    """The paper's ``a - b`` for one column of its table (None where the paper lacks a number).

    A rank distance counts positions, so it grows with the pool: with ``pool_size`` (the number
    of candidates of OUR multilingual pool) the paper's rank-distance difference is rescaled to
    the same fraction of our pool (``difference * pool_size / PAPER_POOL_SIZES[dataset]``); mAP
    differences are returned as they are.
    """
    value_a = paper_value(model, a, dataset, setting, metric)
    value_b = paper_value(model, b, dataset, setting, metric)
    if value_a is None or value_b is None:
        return None
    difference = value_a - value_b
    if metric == RANK_DISTANCE and pool_size is not None:
        difference *= pool_size / PAPER_POOL_SIZES[dataset]
    return difference


def smallest_claimed_gain() -> float:
    """The smallest non-zero mAP gain of Hybrid over the stronger of X-X-mono and X-Y in the paper's table.

    Over every model, dataset and setting; rounded to the table's three decimals (0.003: e.g.
    LaBSE multilingual XQuAD-R, .682 against .679). ``hybridlib.stats`` uses it as the
    non-inferiority margin.
    """
    gains = []
    for model in PAPER_MODELS:
        for dataset in PAPER_DATASETS:
            for setting, metric in PAPER_COLUMNS:
                if metric != RANK_DISTANCE:
                    best_other = max(paper_value(model, s, dataset, setting, metric) for s in HYBRID_KINDS)
                    gains.append(round(paper_value(model, "hybrid", dataset, setting, metric) - best_other, 3))
    return min(g for g in gains if g > 0)
