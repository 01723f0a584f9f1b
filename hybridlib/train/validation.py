"""Validation of a training run: the selection score (held-out retrieval) and the per-kind losses.

Before the first step and every ``eval_every`` steps, the encoder embeds each distinct held-out
text once (``hybridlib.evaluate.encode_texts``: eval mode, the encoder's precision) and gives one
row of ``val_log.csv`` (``validation_columns``):

- ``val_score``: **the selection rule** (best checkpoint and early stopping; higher is better),
  identical in kind for every strategy: the mean of the held-out mAP of three settings,
  - ``val_mAP_monolingual``: each held-out query against the held-out answers of its own language,
  - ``val_mAP_crosslingual``: each query against the answers of each other language (queries
    without an answer in that language left out),
  - ``val_mAP_multilingual``: each query against the answers of every language,

  averaged as the evaluation averages (docs/paper.md, "Evaluation protocol"): a language pair
  is the mean AP of its queries; mono and cross are macro-averaged over language pairs, multi
  over query languages. A setting the held-out data lack (cross-lingual with one language) is
  left out of the mean. An answer is relevant to a query when it answers the query's id (an
  answer sentence shared by several ids answers each of them).
- ``val_R@10``: in the multilingual pool, the share of a query's relevant answers (its answer
  in every language) found in the top 10, macro-averaged over query languages.
- ``val_loss_<kind>``: the mean contrastive loss over the fixed validation batches of each of the
  strategy's kinds (``split.validation_batches``; x-x-mono and x-y for hybrid), and ``val_loss``,
  their mean: the strategy's own loss, logged but not used for selection (each strategy
  computes it on batches of its own kind, so the strategies' losses are not comparable).
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import pandas as pd
import torch

from ..constants import (
    CROSS,
    MONO,
    MULTI,
    SETTINGS,
    VALIDATION_MAP_COLUMNS,
    VALIDATION_RETRIEVAL_COLUMNS,
    VALIDATION_SCORE,
)
from ..evaluate import encode_texts
from ..losses import contrastive_loss, false_negative_mask
from ..metrics import average_precision_from_ranks, recall_at_k, relevant_ranks

RECALL_K = 10  # the k of VALIDATION_RECALL
LOSS = "val_loss"


def validation_columns(kinds: Sequence[str]) -> list[str]:
    """The columns of ``val_log.csv`` for a strategy validated on batches of ``kinds``."""
    return ["step", *VALIDATION_RETRIEVAL_COLUMNS, LOSS] + [f"{LOSS}_{kind}" for kind in kinds]


def held_out_retrieval(queries: np.ndarray, answers: np.ndarray, query_ids: Sequence, query_langs: Sequence,
                       answer_ids: Sequence, answer_langs: Sequence, k: int = RECALL_K) -> dict:
    """Held-out mAP per setting, their mean (``val_score``) and multilingual R@k (see module doc).

    ``queries`` [n_q, d] and ``answers`` [n_a, d]: embeddings (the score is their dot product);
    ``query_ids`` / ``query_langs``: per query; ``answer_ids``: per answer, the set of question ids
    it answers; ``answer_langs``: per answer. AP is sklearn's (``metrics.average_precision_from_ranks``).
    Returns ``{val_score, val_mAP_<setting>..., val_R@<k>}``.
    """
    query_ids, query_langs = np.asarray(query_ids).astype(str), np.asarray(query_langs)
    answer_langs = np.asarray(answer_langs)
    column = {qid: c for c, qid in enumerate(dict.fromkeys(query_ids))}
    answers_id = np.zeros((len(answer_ids), len(column)), dtype=bool)  # answer a answers id c
    for a, ids in enumerate(answer_ids):
        answers_id[a, [column[qid] for qid in map(str, ids) if qid in column]] = True
    query_column = np.array([column[qid] for qid in query_ids])
    maps, recalls = {setting: [] for setting in SETTINGS}, []
    for x in sorted(set(query_langs)):
        rows = np.flatnonzero(query_langs == x)
        scores = queries[rows] @ answers.T  # one query language at a time: memory ~ n_x * n_a
        relevant = answers_id[:, query_column[rows]].T
        pools = [(MULTI, np.ones(len(answer_langs), dtype=bool))]
        pools += [(MONO if x == y else CROSS, answer_langs == y) for y in sorted(set(answer_langs))]
        for setting, pool in pools:
            in_pool = relevant[:, pool]
            keep = in_pool.any(axis=1)  # queries without a relevant answer in the pool are left out
            if not keep.any():
                continue
            ranks = relevant_ranks(scores[keep][:, pool], in_pool[keep])
            maps[setting].append(float(np.mean(average_precision_from_ranks(ranks))))
            if setting == MULTI:
                recalls.append(float(np.mean(recall_at_k(ranks, k))))
    values = {VALIDATION_MAP_COLUMNS[setting]: float(np.mean(v)) if v else float("nan")
              for setting, v in maps.items()}
    score = float(np.mean([v for v in values.values() if not np.isnan(v)]))
    return {VALIDATION_SCORE: score, **values, f"val_R@{k}": float(np.mean(recalls))}


def _answers(table: pd.DataFrame) -> pd.DataFrame:
    """The distinct held-out answers: one row per (language, answer text) with ``row`` (its first
    row in ``table``) and ``ids`` (the question ids it answers)."""
    frame = pd.DataFrame({"lang": table["lang"].to_numpy(), "positive": table["positive"].to_numpy(),
                          "id": table["id"].astype(str).to_numpy(), "row": np.arange(len(table))})
    grouped = frame.groupby(["lang", "positive"], sort=False)
    return pd.DataFrame({"row": grouped["row"].first(), "ids": grouped["id"].agg(frozenset)}).reset_index()


def validation_losses(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                      negative_rows: list, batches: dict, temperature: float, symmetric: bool,
                      texts: Optional[Sequence[str]] = None) -> dict:
    """``{val_loss_<kind>: mean contrastive loss over the kind's batches}`` from embeddings of the table.

    ``queries`` and ``positives``: one row per table row; ``negatives``: the hard negatives of every
    table row, those of row r at ``negative_rows[r]`` (a list of indices), as ``batch_texts`` orders them.
    ``texts``: the passage texts, positives (one per table row) then negatives in the same order;
    given, copies of a query's positive leave its denominator as in training
    (``losses.false_negative_mask``).
    """
    losses = {}
    for kind, kind_batches in batches.items():
        values = []
        for batch in kind_batches:
            p_rows = list(batch.passage_rows)
            n_rows = [i for r in p_rows for i in negative_rows[r]]
            mask = None
            if texts is not None:
                positive_texts = [texts[r] for r in p_rows]
                negative_texts = [texts[len(positives) + i] for i in n_rows]
                mask = false_negative_mask(positive_texts, positive_texts + negative_texts)
            values.append(contrastive_loss(queries[list(batch.query_rows)], positives[p_rows], negatives[n_rows],
                                           temperature, symmetric, false_negatives=mask).item())
        losses[f"{LOSS}_{kind}"] = float(np.mean(values))
    return losses


def validation_metrics(encoder, table: pd.DataFrame, batches: dict, temperature: float, symmetric: bool,
                       cache: bool = False) -> dict:
    """One validation of ``encoder`` on the held-out ``table``: ``{val_score, ..., val_loss, val_loss_<kind>...}``.

    Each distinct held-out text is embedded once (``encode_texts``; ``cache``: through its on-disk
    cache, keyed by the weights); the losses of the fixed ``batches`` (``split.validation_batches``)
    and the held-out retrieval both use these embeddings.
    """
    negatives = table["negatives"].tolist()
    passage_texts = table["positive"].tolist() + [t for negs in negatives for t in negs]
    queries = encode_texts(encoder, table["query"].tolist(), "query", cache=cache, progress=False)
    passages = encode_texts(encoder, passage_texts, "passage", cache=cache, progress=False)
    positives = passages[:len(table)]
    ends = np.cumsum([len(negs) for negs in negatives])
    negative_rows = [list(range(end - len(negs), end)) for negs, end in zip(negatives, ends)]
    as_tensor = torch.from_numpy
    losses = validation_losses(as_tensor(queries), as_tensor(positives), as_tensor(passages[len(table):]),
                               negative_rows, batches, temperature, symmetric, passage_texts)
    answers = _answers(table)
    retrieval = held_out_retrieval(queries, positives[answers["row"].to_numpy()], table["id"], table["lang"],
                                   answers["ids"].tolist(), answers["lang"])
    return {**retrieval, LOSS: float(np.mean(list(losses.values()))), **losses}
