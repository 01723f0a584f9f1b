"""Confidence intervals, paired tests and claim verdicts for the study's macro-averaged metrics.

- ``resampling``: ``bootstrap_ci``, intervals resampling clusters of questions and training runs;
- ``paired``: ``paired_tests``, differences of two strategies with intervals and p-values;
- ``languages``: ``label_seen_languages`` / ``unseen_language_split``, seen vs. unseen languages;
- ``claims``: ``claim_verdicts``, the paper's claims with our and the paper's effect sizes;
- ``frame``: the per-query frame as arrays (``StatsError``).

>>> clusters = paragraph_clusters(data)                   # hybridlib.data: query id -> paragraph
>>> intervals = bootstrap_ci(per_query, clusters=clusters)
>>> claims = claim_verdicts(paired_tests(per_query, clusters=clusters))
"""
from ..constants import PER_QUERY_COLUMNS
from .claims import (
           CLAIM_COLUMNS,
           CLAIMS,
           DAPT_CLAIMS,
           MARGIN_REASON,
           NONINFERIORITY_MARGIN,
           VERDICTS,
           Claim,
           claim_verdicts,
           holm,
)
from .frame import StatsError
from .languages import PAIR_GROUPS, label_pair_groups, label_seen_languages, pair_group_split, unseen_language_split
from .paired import TEST_COLUMNS, default_pairs, paired_tests
from .resampling import CI_COLUMNS, bootstrap_ci

__all__ = ["CI_COLUMNS", "CLAIMS", "CLAIM_COLUMNS", "DAPT_CLAIMS", "PAIR_GROUPS", "label_pair_groups",
           "pair_group_split", "Claim", "MARGIN_REASON", "NONINFERIORITY_MARGIN",
           "PER_QUERY_COLUMNS", "StatsError", "TEST_COLUMNS", "VERDICTS", "bootstrap_ci", "claim_verdicts",
           "default_pairs", "holm", "label_seen_languages", "paired_tests", "unseen_language_split"]
