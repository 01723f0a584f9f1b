"""LAReQA evaluation (XQuAD-R, MLQA-R): ranks in every pool, per-query metrics, macro averages.

Protocol (docs/paper.md, "Evaluation"): every sentence of every paragraph is a candidate.
A query's relevant candidates in pool language Y are the answer sentences of the questions
sharing its ``id`` in language Y; in the multilingual pool, those of every language.

* monolingual X->X: pool = candidates of X; cross-lingual X->Y (X != Y): pool = candidates of
  Y, queries without an answer in Y left out (MLQA-R), settings without queries left out;
  multilingual: one pool of all candidates, queries of every language.
* metrics per query (``hybridlib.metrics``): full-depth AP (sklearn's definition, ties
  included), R@1, R@10, nDCG@10 (binary, trec_eval's). A mono- or cross-lingual pool holds one
  relevant candidate per query, so there R@k is a hit (0 or 1). The multilingual pool holds
  all of a question's parallel answers (11 on XQuAD-R, 2-4 on MLQA-R), so there R@k is the
  *share* of them in the top k (R@1 <= 1/11 on XQuAD-R) and ``Hit@1`` / ``Hit@10`` say whether
  at least one is. The multilingual pool also gives three measures of language bias:
  ``rank_distance`` (max - min position of the query's parallel answers, in positions: it
  grows with the pool, e.g. 13,014 candidates on the full XQuAD-R, 3,495 on a 400-id subset),
  ``rank_distance_fraction`` (the same divided by the pool size, comparable across pools and
  datasets; on MLQA-R the answers a question has, 2-4, define it the same way) and
  ``own_lang@10`` (the share of the top 10 in the query's own language, of the whole pool if
  it has fewer candidates; about 1/11 for a language-agnostic model on XQuAD-R, more for a
  biased one; ties at the 10th place shared as by a random order, ``metrics.own_pool_share_at_k``).
* averages (``aggregate``): a setting (language pair) is the mean over its queries; mono and
  cross are macro-averaged over settings; multilingual per query language, then over query
  languages.

Speed: the scores of one query language against all candidates come from one matrix product;
a relevant candidate's rank in its own pool is counted by comparison, its rank among all
candidates (and the top 10's languages) from sorting the row (``metrics.ranks_per_pool``). All
11 + 110 + 1 XQuAD-R settings take about 1 s from embeddings on two CPU cores, half of it the
matrix products: ~300x faster than a per-query sklearn loop (``benchmarks/bench_metrics.py``).

>>> from hybridlib.data import load_lareqa
>>> from hybridlib.models import DualEncoder
>>> metrics = evaluate_lareqa(DualEncoder("default"), load_lareqa("xquad-r", max_ids=30),
...                           model="e5-small", strategy="zero-shot", seed=0)  # doctest: +SKIP
>>> summarize(metrics)                                                        # doctest: +SKIP
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np
import pandas as pd

from .. import metrics as M
from ..constants import (
    ALL,
    CROSS,
    KEYS,
    METRIC_COLUMNS,
    METRICS,
    MONO,
    MULTI,
    OWN_LANGUAGE,
    OWN_LANGUAGE_K,
    PER_QUERY_COLUMNS,
    RANK_DISTANCE,
    RANK_DISTANCE_FRACTION,
    SETTINGS,
    ZERO_SHOT,
)
from ..data import LaReQA
from .cache import EvaluationError, PoolEmbeddings, encode_pools

# the columns that name one language pair's mean of a metric
PAIR_COLUMNS = KEYS + ("setting", "query_lang", "pool_lang", "metric")


def _as_embeddings(source, data: LaReQA, **encode_options) -> PoolEmbeddings:
    """PoolEmbeddings from an encoder, a PoolEmbeddings or a (queries, candidates) pair; checked."""
    if hasattr(source, "encode"):
        embeddings = encode_pools(source, data, **encode_options)
    elif isinstance(source, PoolEmbeddings):
        embeddings = source
    elif isinstance(source, (tuple, list)) and len(source) == 2:
        embeddings = PoolEmbeddings(*source)
    else:
        raise EvaluationError(f"expected an encoder (with .encode) or (query, candidate) embeddings, "
                              f"got {type(source).__name__}")
    queries = np.ascontiguousarray(embeddings.queries, dtype=np.float32)
    candidates = np.ascontiguousarray(embeddings.candidates, dtype=np.float32)
    if queries.shape[0] != len(data.questions) or candidates.shape[0] != len(data.candidates):
        raise EvaluationError(f"embeddings of {queries.shape[0]} queries and {candidates.shape[0]} candidates "
                              f"do not fit {data.name}: {len(data.questions)} questions, "
                              f"{len(data.candidates)} candidates")
    if queries.ndim != 2 or candidates.ndim != 2 or queries.shape[1] != candidates.shape[1]:
        raise EvaluationError(f"query embeddings {queries.shape} and candidate embeddings {candidates.shape} "
                              f"must be 2-d with the same width")
    return PoolEmbeddings(queries, candidates)


# ---------------------------------------------------------------------------------------------
# Ranks of the relevant candidates in every pool
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Ranked:
    """Ranks of one setting's queries: ``rows`` index ``data.questions``; ``ranks`` (n, k);
    ``pool_size`` candidates; multilingual only: ``own_share``, the own language's share of the top 10."""

    setting: str
    query_lang: str
    pool_lang: str
    rows: np.ndarray
    ranks: np.ndarray
    pool_size: int
    own_share: Optional[np.ndarray] = None


def _answer_table(data: LaReQA, languages: list[str], position: np.ndarray) -> np.ndarray:
    """(questions, languages) -> pool position of the answer of the same id in that language, or -1."""
    questions = data.questions
    id_code, _ = pd.factorize(questions["id"])
    lang_code = pd.Categorical(questions["lang"], categories=languages).codes
    answers = np.full((id_code.max(initial=-1) + 1, len(languages)), -1, dtype=np.int64)
    answers[id_code, lang_code] = position[questions["candidate"].to_numpy()]
    return answers[id_code]


def lareqa_ranks(embeddings: PoolEmbeddings, data: LaReQA) -> Iterator[_Ranked]:
    """Ranks of every query's relevant candidates in every LAReQA pool (see module doc).

    Candidates are ordered by language so that each pool is a column slice; for each query
    language the scores against all candidates come from one matrix product, and
    ``metrics.ranks_per_pool`` ranks each relevant candidate within its pool (mono- and
    cross-lingual) and among all candidates (multilingual), and gives the share of the query's
    own language in its top 10. Yields every setting.
    """
    languages = sorted(set(data.questions["lang"]) | set(data.candidates["lang"]))
    cand_lang = pd.Categorical(data.candidates["lang"], categories=languages).codes
    order = np.argsort(cand_lang, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    sizes = np.bincount(cand_lang, minlength=len(languages))
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    candidates = embeddings.candidates[order]
    answers = _answer_table(data, languages, position)  # (questions, languages)
    query_lang = data.questions["lang"].to_numpy()
    # one score buffer for every block: fresh 60-130 MB arrays cost page faults on each product
    scores = np.empty((M.block_rows(len(candidates)), len(candidates)), dtype=np.float32)
    top_k = min(OWN_LANGUAGE_K, len(candidates))
    for x, lang in enumerate(languages):
        rows = np.flatnonzero(query_lang == lang)
        if len(rows) == 0:
            continue
        ranked = [_rank_block(embeddings.queries[block], candidates, answers[block], bounds, x, top_k, scores)
                  for block in _row_blocks(rows, len(candidates))]
        within, overall, own_share = (np.concatenate(part) for part in zip(*ranked))
        relevant = answers[rows]
        for y, pool in enumerate(languages):
            keep = relevant[:, y] >= 0
            if keep.any():
                yield _Ranked(MONO if x == y else CROSS, lang, pool, rows[keep], within[keep, y][:, None],
                              int(sizes[y]))
        yield _Ranked(MULTI, lang, ALL, rows, overall, len(candidates), own_share)


def _row_blocks(rows: np.ndarray, width: int) -> list[np.ndarray]:
    size = M.block_rows(width)
    return [rows[start:start + size] for start in range(0, len(rows), size)]


def _rank_block(queries: np.ndarray, candidates: np.ndarray, relevant: np.ndarray, bounds, own_pool: int,
                top_k: int, buffer: np.ndarray) -> M.PoolRanks:
    """``metrics.ranks_per_pool`` of a block of queries of language ``own_pool``.

    The scores are written into ``buffer`` (at least ``len(queries)`` rows) by torch's matrix
    product: numpy's OpenBLAS threads keep spinning after it and slow the ranking by 1.6x.
    """
    import torch

    scores = buffer[:len(queries)]
    torch.mm(torch.from_numpy(queries), torch.from_numpy(candidates).T, out=torch.from_numpy(scores))
    return M.ranks_per_pool(scores, relevant, bounds, own_pool=own_pool, k=top_k, overwrite=True)


# ---------------------------------------------------------------------------------------------
# Per-query metrics
# ---------------------------------------------------------------------------------------------

def _query_metrics(ranks: np.ndarray, multilingual: bool, pool_size=None, own_share=None) -> dict[str, np.ndarray]:
    values = {"mAP": M.average_precision_from_ranks(ranks), "R@1": M.recall_at_k(ranks, 1),
              "R@10": M.recall_at_k(ranks, 10), "nDCG@10": M.ndcg_at_k(ranks, 10)}
    if multilingual:
        values.update({"Hit@1": M.hit_at_k(ranks, 1), "Hit@10": M.hit_at_k(ranks, 10),
                       RANK_DISTANCE: M.rank_distance(ranks),
                       RANK_DISTANCE_FRACTION: M.rank_distance_fraction(ranks, pool_size),
                       OWN_LANGUAGE: own_share})
    return values


def lareqa_per_query(embeddings: PoolEmbeddings, data: LaReQA) -> pd.DataFrame:
    """Per-query metrics of every setting: columns ``setting, query_lang, pool_lang, query_id,
    metric, value`` (categoricals), one row per (setting, query, metric); metrics as in the module doc."""
    settings, qlangs, plangs, rows, metric_codes, values = [], [], [], [], [], []
    languages = sorted(set(data.questions["lang"]) | set(data.candidates["lang"])) + [ALL]
    ranked_all = list(lareqa_ranks(embeddings, data))
    for multilingual in (False, True):  # the metrics of all settings of a kind in one call each
        group = [r for r in ranked_all if (r.setting == MULTI) == multilingual]
        if not group:
            continue
        width = max(r.ranks.shape[1] for r in group)
        ranks = np.concatenate([np.pad(r.ranks, ((0, 0), (0, width - r.ranks.shape[1]))) for r in group])
        split = np.cumsum([len(r.rows) for r in group])[:-1]
        extra = {}
        if multilingual:
            extra = {"pool_size": np.concatenate([np.full(len(r.rows), r.pool_size) for r in group]),
                     "own_share": np.concatenate([r.own_share for r in group])}
        for metric, value in _query_metrics(ranks, multilingual, **extra).items():
            for ranked, part in zip(group, np.split(value, split)):
                n = len(part)
                settings.append(np.full(n, SETTINGS.index(ranked.setting), dtype=np.int8))
                qlangs.append(np.full(n, languages.index(ranked.query_lang), dtype=np.int8))
                plangs.append(np.full(n, languages.index(ranked.pool_lang), dtype=np.int8))
                rows.append(ranked.rows)
                metric_codes.append(np.full(n, METRICS.index(metric), dtype=np.int8))
                values.append(part)
    id_code, ids = pd.factorize(data.questions["id"])
    rows = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    return pd.DataFrame({
        "setting": pd.Categorical.from_codes(_cat(settings), SETTINGS),
        "query_lang": pd.Categorical.from_codes(_cat(qlangs), languages),
        "pool_lang": pd.Categorical.from_codes(_cat(plangs), languages),
        "query_id": pd.Categorical.from_codes(id_code[rows], ids),
        "metric": pd.Categorical.from_codes(_cat(metric_codes), METRICS),
        "value": np.concatenate(values) if values else np.zeros(0),
    })


def _cat(parts: list[np.ndarray]) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int8)


def _with_keys(frame: pd.DataFrame, model: str, strategy: str, seed, eval_dataset: str) -> pd.DataFrame:
    keys = {"model": model, "strategy": strategy, "eval_dataset": eval_dataset}
    constant = {k: pd.Categorical.from_codes(np.zeros(len(frame), dtype=np.int8), [v]) for k, v in keys.items()}
    constant["seed"] = np.full(len(frame), seed)
    return pd.concat([pd.DataFrame(constant, index=frame.index), frame], axis=1)


# ---------------------------------------------------------------------------------------------
# Averages
# ---------------------------------------------------------------------------------------------

def aggregate(per_query: pd.DataFrame) -> pd.DataFrame:
    """The tidy metrics table (columns ``METRIC_COLUMNS``) from per-query values: the one macro average.

    Per (model, strategy, seed, eval_dataset, setting, query_lang, pool_lang, metric): the mean
    over queries (NaN skipped, as pandas does) -- a language pair; for the multilingual setting
    a query language with ``pool_lang=all``; for a BEIR dataset one language. Then per setting
    the macro average over those rows, with ``query_lang=all, pool_lang=all`` (a row that
    already has ``all`` in both is kept as it is). Works for LAReQA and BEIR per-query tables,
    with rows in any order and categorical or plain columns.
    """
    return _with_macro_averages(_pair_means(per_query))


def _pair_means(per_query: pd.DataFrame) -> pd.DataFrame:
    """The mean value of each ``PAIR_COLUMNS`` group, groups in order of first appearance.

    One integer per group and ``np.bincount`` (10x faster than a pandas groupby on 600k rows).
    """
    group, first = _group_numbers(per_query, PAIR_COLUMNS)
    values = per_query["value"].to_numpy(dtype=float)
    known = ~np.isnan(values)
    sums = np.bincount(group, weights=np.where(known, values, 0.0), minlength=len(first))
    counts = np.bincount(group, weights=known, minlength=len(first))
    with np.errstate(invalid="ignore", divide="ignore"):
        means = sums / counts
    return per_query.iloc[first][list(PAIR_COLUMNS)].assign(value=means).reset_index(drop=True)


def _group_numbers(frame: pd.DataFrame, columns) -> tuple[np.ndarray, np.ndarray]:
    """The group of each row (numbered by first appearance) and the first row of each group."""
    combined, span = np.zeros(len(frame), dtype=np.int64), 1
    for column in columns:
        series = frame[column]
        if isinstance(series.dtype, pd.CategoricalDtype):
            codes, size = series.cat.codes.to_numpy().astype(np.int64), len(series.cat.categories)
        else:
            codes, uniques = pd.factorize(series)
            size = len(uniques)
        if span * (size + 1) >= 2 ** 62:  # renumber before the product overflows
            combined, uniques = pd.factorize(combined)
            span = len(uniques)
        combined, span = combined * (size + 1) + codes + 1, span * (size + 1)  # +1: missing values are -1
    group, _ = pd.factorize(combined)
    previous_max = np.maximum.accumulate(np.concatenate([[-1], group[:-1]]))
    return group, np.flatnonzero(group > previous_max)  # a group's first row exceeds every earlier number


def _with_macro_averages(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per-pair means -> the tidy table: the pairs, then each setting's macro average, sorted."""
    is_macro = (pairs["query_lang"].astype(str) == ALL) & (pairs["pool_lang"].astype(str) == ALL)
    outer = list(KEYS) + ["setting", "metric"]
    macro = pairs[~is_macro].groupby(outer, observed=True, sort=False)["value"].mean().reset_index()
    macro["query_lang"], macro["pool_lang"] = ALL, ALL
    table = pd.concat([pairs, macro], ignore_index=True)
    for column in ("model", "strategy", "eval_dataset", "setting", "query_lang", "pool_lang", "metric"):
        table[column] = table[column].astype(str)
    table = table.assign(_s=table["setting"].map(SETTINGS.index), _m=table["metric"].map(_metric_order(table)),
                         _q=table["query_lang"] == ALL, _p=table["pool_lang"] == ALL)
    table = table.sort_values(list(KEYS) + ["_s", "_q", "query_lang", "_p", "pool_lang", "_m"], kind="stable")
    return table[list(METRIC_COLUMNS)].reset_index(drop=True)


def _metric_order(table: pd.DataFrame) -> dict[str, int]:
    """Sort key of each metric: ``METRICS`` first, in their order; others (R@100) after, as they come."""
    others = [m for m in pd.unique(table["metric"]) if m not in METRICS]
    return {m: i for i, m in enumerate(list(METRICS) + others)}


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def evaluate_lareqa(encoder_or_embeddings, data: LaReQA, *, model: Optional[str] = None,
                    strategy: str = ZERO_SHOT, seed=0, per_query: bool = False,
                    cache: Union[bool, str, Path, None] = True, candidate_context: bool = False,
                    batch_size: int = 64, progress: bool = True):
    """Evaluate on a LAReQA dataset (XQuAD-R or MLQA-R): every setting, every metric (module doc).

    ``encoder_or_embeddings``: an object with ``encode(texts, kind)`` (encoded through
    ``encode_pools`` with ``cache``, ``candidate_context``, ``batch_size``, ``progress``), a
    ``PoolEmbeddings``, or a (query, candidate) embedding pair aligned with ``data``.
    ``model`` labels the rows (default: the encoder's ``name``).

    Returns the tidy metrics table (columns ``METRIC_COLUMNS``: per language pair and
    ``all`` averages, see ``aggregate``); with ``per_query=True`` also the per-query table
    (columns ``PER_QUERY_COLUMNS``, categoricals; ``metric`` mAP holds the query's AP), for
    bootstrap intervals and paired tests.
    """
    if model is None:
        model = getattr(encoder_or_embeddings, "name", None)
        if model is None:
            raise EvaluationError("give model= (a label for the metrics rows) when evaluating embeddings")
    embeddings = _as_embeddings(encoder_or_embeddings, data, cache=cache, candidate_context=candidate_context,
                                batch_size=batch_size, progress=progress)
    queries = _with_keys(lareqa_per_query(embeddings, data), str(model), strategy, seed, data.name)
    table = aggregate(queries)
    return (table, queries[list(PER_QUERY_COLUMNS)]) if per_query else table


# (setting, metric) -> column of ``summarize``; multilingual R@k is a share, Hit@k a hit (module doc)
_SUMMARY_COLUMNS = tuple((setting, metric, f"{short} {metric}") for metric in ("mAP", "R@1", "R@10")
                         for setting, short in ((MONO, "mono"), (CROSS, "cross"), (MULTI, "multi"))) + (
    (MULTI, "Hit@1", "multi Hit@1"), (MULTI, "Hit@10", "multi Hit@10"),
    (MULTI, RANK_DISTANCE, "rank distance"), (MULTI, RANK_DISTANCE_FRACTION, "rank distance fraction"),
    (MULTI, OWN_LANGUAGE, OWN_LANGUAGE.replace("_", " ")))


def summarize(metrics: pd.DataFrame) -> pd.DataFrame:
    """One readable row per (model, strategy, seed, eval_dataset): the macro averages
    ``mono/cross/multi`` x ``mAP, R@1, R@10``, the multilingual ``Hit@1, Hit@10``, and the
    language bias: ``rank distance``, ``rank distance fraction`` (of the pool) and ``own lang@10``.
    Columns whose metric the table lacks are left out."""
    macro = metrics[(metrics["query_lang"] == ALL) & (metrics["pool_lang"] == ALL)]
    wide = macro.pivot_table(index=list(KEYS), columns=["setting", "metric"], values="value", sort=False)
    columns = {name: wide[(setting, metric)] for setting, metric, name in _SUMMARY_COLUMNS
               if (setting, metric) in wide.columns}
    return pd.DataFrame(columns, index=wide.index)
