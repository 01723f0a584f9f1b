"""Evaluation of a dual encoder: the embedding cache, LAReQA (XQuAD-R, MLQA-R) and BEIR-format data (MIRACL).

- ``cache``: ``encode_texts`` / ``encode_pools`` embed each distinct text once per model
  through an on-disk cache (``model_fingerprint``, ``PoolEmbeddings``, ``candidate_texts``).
- ``lareqa``: ranks of the relevant candidates in every pool, the per-query table, the macro
  averages (``aggregate``), ``evaluate_lareqa`` and ``summarize``.
- ``beir``: ``load_beir`` (a folder or ``miracl:<lang>``), ``beir_ranks``, ``evaluate_beir``.

Setting and metric names and the table columns are in ``hybridlib.constants``. The command
``hybridlib evaluate`` (``hybridlib.cli``) prints a summary of ``evaluate_lareqa``.
"""
from .beir import BeirData, beir_ranks, evaluate_beir, load_beir
from .cache import (
    EvaluationError,
    PoolEmbeddings,
    cache_folder,
    cache_key,
    candidate_texts,
    encode_pools,
    encode_texts,
    model_fingerprint,
)
from .lareqa import aggregate, evaluate_lareqa, lareqa_per_query, lareqa_ranks, summarize

__all__ = [
    "EvaluationError", "PoolEmbeddings", "cache_folder", "cache_key", "candidate_texts", "encode_pools",
    "encode_texts", "model_fingerprint",
    "aggregate", "evaluate_lareqa", "lareqa_per_query", "lareqa_ranks", "summarize",
    "BeirData", "beir_ranks", "evaluate_beir", "load_beir",
]
