"""The study's vocabulary, defined once: strategies, settings, metrics and table columns.

Every module that names a strategy, a setting or a metric imports it from here, so that a
new strategy or metric is added in one place. This module imports nothing heavy (no torch,
no pandas), so any module can use it.
"""
from __future__ import annotations

from typing import Iterable

# ----------------------------------------------------------------------------- strategies
ZERO_SHOT = "zero-shot"  # the encoder as loaded, not fine-tuned
# Batch strategies of the sampler (``hybridlib.sampling``), in the order tables show them.
BATCH_STRATEGIES = ("x-x-mono", "x-y", "hybrid", "x-x", "en-en")
# Every strategy a study may list, in display order.
STRATEGIES = (ZERO_SHOT,) + BATCH_STRATEGIES
# The three strategies the paper compares (its claims are about these).
PAPER_STRATEGIES = ("x-x-mono", "x-y", "hybrid")

# ----------------------------------------------------------------------------- settings
MONO, CROSS, MULTI = "monolingual", "crosslingual", "multilingual"
SETTINGS = (MONO, CROSS, MULTI)
ALL = "all"  # the language columns of a macro-averaged row

# ----------------------------------------------------------------------------- metrics
RANKING_METRICS = ("mAP", "R@1", "R@10", "nDCG@10")
RANK_DISTANCE = "rank_distance"
METRICS = RANKING_METRICS + (RANK_DISTANCE,)
LOWER_IS_BETTER = frozenset({RANK_DISTANCE})

# ----------------------------------------------------------------------------- precision
# "auto": bf16 where the hardware computes it natively (CUDA, AVX-512-BF16/AMX CPUs), else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# ----------------------------------------------------------------------------- tables
KEYS = ("model", "strategy", "seed", "eval_dataset")
METRIC_COLUMNS = KEYS + ("setting", "query_lang", "pool_lang", "metric", "value")
PER_QUERY_COLUMNS = KEYS + ("setting", "query_lang", "pool_lang", "query_id", "metric", "value")
# Held-out retrieval columns of a validation log (``hybridlib.train``).
VALIDATION_RETRIEVAL_COLUMNS = ("val_mAP", "val_R@10")


def is_lower_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (the rank distance; display names too)."""
    return metric in LOWER_IS_BETTER or metric.replace(" ", "_") in LOWER_IS_BETTER


def ordered_strategies(strategies: Iterable[str]) -> list[str]:
    """The distinct strategies in the study's order (unknown names last, alphabetically)."""
    rank = {name: i for i, name in enumerate(STRATEGIES)}
    return sorted(set(strategies), key=lambda s: (rank.get(s, len(rank)), s))
