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
# Domain-adaptive pre-training (``hybridlib.dapt``; Gururangan et al., ACL 2020): continued masked-LM
# training of the encoder on the training dataset's paragraphs, one run per seed shared by both strategies.
DAPT = "dapt"  # DAPT, then zero-shot evaluation of the DAPT encoder
DAPT_HYBRID = "dapt+hybrid"  # DAPT, then hybrid fine-tuning (the study's settings) from the DAPT encoder
# The DAPT strategies and the batch strategy each fine-tunes with after DAPT (None: not fine-tuned).
DAPT_FINE_TUNING = {DAPT: None, DAPT_HYBRID: "hybrid"}
DAPT_STRATEGIES = tuple(DAPT_FINE_TUNING)
# Every strategy a study may list, in display order: each DAPT strategy beside its counterpart
# without DAPT (dapt after zero-shot, dapt+hybrid after hybrid).
STRATEGIES = tuple(name for base in (ZERO_SHOT, *BATCH_STRATEGIES) for name in (
    base, *(d for d, fine_tuning in DAPT_FINE_TUNING.items() if (fine_tuning or ZERO_SHOT) == base)))
# The three strategies the paper compares (its claims are about these).
PAPER_STRATEGIES = ("x-x-mono", "x-y", "hybrid")
# The kinds of batch a hybrid run mixes: X-X-mono with probability alpha, else X-Y.
HYBRID_KINDS = ("x-x-mono", "x-y")

# ----------------------------------------------------------------------------- settings
MONO, CROSS, MULTI = "monolingual", "crosslingual", "multilingual"
SETTINGS = (MONO, CROSS, MULTI)
ALL = "all"  # the language columns of a macro-averaged row

# ----------------------------------------------------------------------------- metrics
# Per query, in every pool. R@k is the share of the query's relevant candidates in the top k: in
# the multilingual pool of XQuAD-R a question has 11 relevant answers, so R@1 <= 1/11 there.
RANKING_METRICS = ("mAP", "R@1", "R@10", "nDCG@10")
# Multilingual pool only. Hit@k: at least one relevant candidate in the top k.
HIT_METRICS = ("Hit@1", "Hit@10")
# Language bias (multilingual pool): max - min rank of a query's relevant candidates, in positions
# (grows with the pool) and as a fraction of the pool's size (comparable across pools and datasets).
RANK_DISTANCE = "rank_distance"
RANK_DISTANCE_FRACTION = "rank_distance_fraction"
# Share of the top k of the multilingual pool in the query's own language (lower: less biased,
# down to about 1 / number of languages).
OWN_LANGUAGE_K = 10
OWN_LANGUAGE = f"own_lang@{OWN_LANGUAGE_K}"
METRICS = RANKING_METRICS + HIT_METRICS + (RANK_DISTANCE, RANK_DISTANCE_FRACTION, OWN_LANGUAGE)
LOWER_IS_BETTER = frozenset({RANK_DISTANCE, RANK_DISTANCE_FRACTION, OWN_LANGUAGE})

# ----------------------------------------------------------------------------- precision
# "auto": bf16 where the hardware computes it natively (CUDA, AVX-512-BF16/AMX CPUs), else fp32.
PRECISIONS = ("auto", "fp32", "bf16", "fp16")

# ----------------------------------------------------------------------------- tables
KEYS = ("model", "strategy", "seed", "eval_dataset")
METRIC_COLUMNS = KEYS + ("setting", "query_lang", "pool_lang", "metric", "value")
PER_QUERY_COLUMNS = KEYS + ("setting", "query_lang", "pool_lang", "query_id", "metric", "value")
# Held-out retrieval columns of a validation log (``hybridlib.train.validation``). The checkpoint of
# every strategy is selected on VALIDATION_SCORE (higher is better): the mean of the held-out mAP
# of the three settings, identical in kind for every strategy.
VALIDATION_SCORE = "val_score"
VALIDATION_RECALL = "val_R@10"
VALIDATION_MAP_COLUMNS = {setting: f"val_mAP_{setting}" for setting in SETTINGS}
VALIDATION_RETRIEVAL_COLUMNS = (VALIDATION_SCORE, *VALIDATION_MAP_COLUMNS.values(), VALIDATION_RECALL)


def is_lower_better(metric: str) -> bool:
    """Whether a smaller value of ``metric`` is better (the language-bias measures)."""
    return metric in LOWER_IS_BETTER


def ordered_strategies(strategies: Iterable[str]) -> list[str]:
    """The distinct strategies in the study's order (unknown names last, alphabetically)."""
    rank = {name: i for i, name in enumerate(STRATEGIES)}
    return sorted(set(strategies), key=lambda s: (rank.get(s, len(rank)), s))
