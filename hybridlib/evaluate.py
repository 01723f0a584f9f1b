"""LAReQA evaluation (XQuAD-R, MLQA-R) and BEIR-format evaluation (MIRACL) of a dual encoder.

Protocol (docs/paper.md, "Evaluation"): every sentence of every paragraph is a candidate.
A query's relevant candidates in pool language Y are the answer sentences of the questions
sharing its ``id`` in language Y; in the multilingual pool, those of every language.

* monolingual X->X: pool = candidates of X; cross-lingual X->Y (X != Y): pool = candidates of
  Y, queries without an answer in Y left out (MLQA-R), settings without queries left out;
  multilingual: one pool of all candidates, queries of every language.
* metrics per query: full-depth AP (sklearn's definition, ties included), R@1, R@10,
  nDCG@10 (binary, trec_eval's), and in the multilingual pool the rank distance
  (max - min position of the query's parallel answers); see ``hybridlib.metrics``.
* averages: a setting (language pair) is the mean over its queries; mono and cross are
  macro-averaged over settings; multilingual per query language, then over query languages.

Speed: each text set is encoded once per model (cached on disk); the scores of one query
language against all candidates come from one matrix product; a relevant candidate's rank in
its own pool is counted by comparison, its rank among all candidates by sorting the row and a
binary search (``metrics.ranks_per_pool``). All 11 + 110 + 1 XQuAD-R settings take about 1 s
from embeddings on two CPU cores, half of it the matrix products: ~300x faster than a
per-query sklearn loop (``benchmarks/bench_metrics.py``).

>>> from hybridlib.data import load_lareqa
>>> from hybridlib.models import DualEncoder
>>> metrics = evaluate_lareqa(DualEncoder("default"), load_lareqa("xquad-r", max_ids=30),
...                           model="e5-small", strategy="zero-shot", seed=0)  # doctest: +SKIP
>>> summarize(metrics)                                                        # doctest: +SKIP
"""
from __future__ import annotations

import gzip
import hashlib
import inspect
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union

import numpy as np
import pandas as pd

from . import metrics as M
from .data import LaReQA, cache_dir
from .errors import HybridlibError
from .io import atomic_path, write_table  # noqa: F401  (write_table: part of this module's API)

MONO, CROSS, MULTI = "monolingual", "crosslingual", "multilingual"
SETTINGS = (MONO, CROSS, MULTI)
ALL = "all"
RANKING_METRICS = ("mAP", "R@1", "R@10", "nDCG@10")
METRICS = RANKING_METRICS + ("rank_distance",)
KEYS = ("model", "strategy", "seed", "eval_dataset")
METRIC_COLUMNS = KEYS + ("setting", "query_lang", "pool_lang", "metric", "value")
PER_QUERY_COLUMNS = KEYS + ("setting", "query_lang", "pool_lang", "query_id", "metric", "value")
CACHE_FORMAT = 1  # bump to invalidate every cached embedding

# Scores of at most this many (query, candidate) pairs are held at once (128 MB of float32).
_SCORE_BLOCK = 1 << 25


class EvaluationError(HybridlibError):
    """Evaluation inputs do not fit together (embedding shapes, missing files, unknown dataset)."""


# ---------------------------------------------------------------------------------------------
# Encoding with an on-disk cache
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class PoolEmbeddings:
    """Embeddings of a LAReQA dataset: ``queries`` row i = ``data.questions`` row i,
    ``candidates`` row j = ``data.candidates`` row j. Scores are dot products (cosine for the
    L2-normalised embeddings a ``DualEncoder`` gives)."""

    queries: np.ndarray
    candidates: np.ndarray


def model_fingerprint(encoder) -> Optional[str]:
    """Identity of an encoder's weights for the embedding cache, or None (do not cache).

    An explicit ``encoder.fingerprint`` (attribute or method) wins; otherwise the sha256 of the
    state dicts of the encoder's torch modules, so a fine-tuned model never reuses the
    embeddings of the model it started from, whatever its ``name``.
    """
    explicit = getattr(encoder, "fingerprint", None)
    if explicit is not None:
        return str(explicit() if callable(explicit) else explicit)
    import torch

    attributes = sorted(getattr(encoder, "__dict__", {}).items())
    modules = [(key, value) for key, value in attributes if isinstance(value, torch.nn.Module)]
    if not modules:
        return None
    digest = hashlib.sha256()
    for attribute, module in modules:
        for key, tensor in module.state_dict().items():
            digest.update(f"{attribute}.{key}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def _cache_key(encoder, fingerprint: str, texts: Sequence[str], kind: str) -> str:
    prefixes = getattr(encoder, "prefixes", None) or {}
    description = {
        "format": CACHE_FORMAT, "model": fingerprint, "name": str(getattr(encoder, "name", "")),
        "kind": kind, "prefix": prefixes.get(kind),
        "max_length": getattr(encoder, "max_length", None), "pooling": getattr(encoder, "pooling", None),
        "precision": getattr(encoder, "precision", None),
        "texts": hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest(),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:40]


def _cache_folder(cache) -> Optional[Path]:
    if cache is True:
        return cache_dir() / "embeddings"
    if cache is False or cache is None:
        return None
    return Path(cache)


def _call_encode(encoder, texts: list[str], kind: str, batch_size: int, progress: bool) -> np.ndarray:
    accepted = inspect.signature(encoder.encode).parameters
    options = {name: value for name, value in (("batch_size", batch_size), ("progress", progress))
               if name in accepted}
    embeddings = np.asarray(encoder.encode(texts, kind=kind, **options), dtype=np.float32)
    if embeddings.ndim != 2 or len(embeddings) != len(texts):
        raise EvaluationError(f"{type(encoder).__name__}.encode returned shape {embeddings.shape} "
                              f"for {len(texts)} texts (expected ({len(texts)}, dim))")
    return embeddings


def encode_texts(encoder, texts: Sequence[str], kind: str, *, cache: Union[bool, str, Path, None] = True,
                 batch_size: int = 64, progress: bool = True) -> np.ndarray:
    """Embed ``texts`` (``kind`` "query" or "passage"), each distinct text once, through a cache.

    ``cache``: True = ``cache_dir()/embeddings``, a folder (e.g. inside a run folder), or
    False. The file is keyed by the model's weights (``model_fingerprint``), its name, prefix,
    max length, pooling, precision, the kind and the sha256 of the text list; it is written
    atomically (temp file + rename). Encoders without a fingerprint are never cached.
    """
    texts = list(texts)
    codes, distinct = pd.factorize(pd.Series(texts, dtype=object))  # identical texts -> one row, exact ties
    distinct = [str(t) for t in distinct]
    folder = _cache_folder(cache)
    fingerprint = model_fingerprint(encoder) if folder is not None else None
    path = folder / f"{_cache_key(encoder, fingerprint, distinct, kind)}.npy" if fingerprint else None
    embeddings = None
    if path is not None and path.is_file():
        embeddings = np.load(path)
        if len(embeddings) != len(distinct):  # never trust a file that does not fit
            embeddings = None
    if embeddings is None:
        embeddings = _call_encode(encoder, distinct, kind, batch_size, progress)
        if path is not None:
            _save_npy_atomically(embeddings, path)
    return embeddings[codes]


def _save_npy_atomically(array: np.ndarray, path: Path) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:  # a handle: np.save adds .npy to names
        np.save(handle, array)


def candidate_texts(data: LaReQA, candidate_context: bool = False) -> list[str]:
    """Texts encoded for the candidates: the sentence alone (default) or with its paragraph.

    LAReQA's USE-QA encodes (sentence, paragraph) with a separate context input; a plain dual
    encoder has one input, so ``candidate_context=True`` encodes ``sentence + " " + paragraph``
    (truncated at the encoder's ``max_length`` tokens: the sentence always comes first).
    """
    sentences = data.candidates["text"].astype(str)
    if not candidate_context:
        return sentences.tolist()
    return (sentences + " " + data.candidates["context"].astype(str)).tolist()


def encode_pools(encoder, data: LaReQA, *, cache: Union[bool, str, Path, None] = True,
                 candidate_context: bool = False, batch_size: int = 64, progress: bool = True) -> PoolEmbeddings:
    """Embed a LAReQA dataset's questions (kind "query") and candidates (kind "passage").

    ``encoder``: any object with ``encode(texts, kind)`` returning ``(len(texts), dim)`` arrays
    (e.g. ``hybridlib.models.DualEncoder``, which adds the prefixes). Each text set is encoded
    once per model: see ``encode_texts`` for the cache.
    """
    queries = encode_texts(encoder, data.questions["text"].astype(str).tolist(), "query",
                           cache=cache, batch_size=batch_size, progress=progress)
    candidates = encode_texts(encoder, candidate_texts(data, candidate_context), "passage",
                              cache=cache, batch_size=batch_size, progress=progress)
    return PoolEmbeddings(queries, candidates)


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
# LAReQA: ranks of the relevant candidates in every pool
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Ranked:
    """Ranks of one setting's queries: ``rows`` index ``data.questions``; ``ranks`` (n, k)."""

    setting: str
    query_lang: str
    pool_lang: str
    rows: np.ndarray
    ranks: np.ndarray


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
    cross-lingual) and among all candidates (multilingual). Yields every setting.
    """
    languages = sorted(set(data.questions["lang"]) | set(data.candidates["lang"]))
    cand_lang = pd.Categorical(data.candidates["lang"], categories=languages).codes
    order = np.argsort(cand_lang, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    bounds = np.concatenate([[0], np.cumsum(np.bincount(cand_lang, minlength=len(languages)))])
    candidates = embeddings.candidates[order]
    answers = _answer_table(data, languages, position)  # (questions, languages)
    query_lang = data.questions["lang"].to_numpy()
    # one score buffer for every block: fresh 60-130 MB arrays cost page faults on each product
    scores = np.empty((_block_rows(len(candidates)), len(candidates)), dtype=np.float32)
    for x, lang in enumerate(languages):
        rows = np.flatnonzero(query_lang == lang)
        if len(rows) == 0:
            continue
        ranked = [_rank_block(embeddings.queries[block], candidates, answers[block], bounds, scores)
                  for block in _row_blocks(rows, len(candidates))]
        within, overall = (np.concatenate(part) for part in zip(*ranked))
        relevant = answers[rows]
        for y, pool in enumerate(languages):
            keep = relevant[:, y] >= 0
            if keep.any():
                yield _Ranked(MONO if x == y else CROSS, lang, pool, rows[keep], within[keep, y][:, None])
        yield _Ranked(MULTI, lang, ALL, rows, overall)


def _block_rows(width: int) -> int:
    return max(1, _SCORE_BLOCK // max(1, width))


def _row_blocks(rows: np.ndarray, width: int) -> list[np.ndarray]:
    size = _block_rows(width)
    return [rows[start:start + size] for start in range(0, len(rows), size)]


def _rank_block(queries: np.ndarray, candidates: np.ndarray, relevant: np.ndarray, bounds,
                buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``metrics.ranks_per_pool`` of a block of queries: (within-pool ranks, overall ranks).

    The scores are written into ``buffer`` (at least ``len(queries)`` rows) by torch's matrix
    product: numpy's OpenBLAS threads keep spinning after it and slow the ranking by 1.6x.
    """
    import torch

    scores = buffer[:len(queries)]
    torch.mm(torch.from_numpy(queries), torch.from_numpy(candidates).T, out=torch.from_numpy(scores))
    return M.ranks_per_pool(scores, relevant, bounds, overwrite=True)


def _query_metrics(ranks: np.ndarray, multilingual: bool) -> dict[str, np.ndarray]:
    values = {"mAP": M.average_precision_from_ranks(ranks), "R@1": M.recall_at_k(ranks, 1),
              "R@10": M.recall_at_k(ranks, 10), "nDCG@10": M.ndcg_at_k(ranks, 10)}
    if multilingual:
        values["rank_distance"] = M.rank_distance(ranks)
    return values


def lareqa_per_query(embeddings: PoolEmbeddings, data: LaReQA) -> pd.DataFrame:
    """Per-query metrics of every setting: columns ``setting, query_lang, pool_lang, query_id,
    metric, value`` (categoricals), one row per (setting, query, metric)."""
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
        for metric, value in _query_metrics(ranks, multilingual).items():
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


def aggregate(per_query: pd.DataFrame) -> pd.DataFrame:
    """Tidy metrics table from per-query values.

    Per (model, strategy, seed, eval_dataset, setting, query_lang, pool_lang, metric): the mean
    over queries (a language pair; for the multilingual setting a query language with
    ``pool_lang=all``); then per setting the macro average over those rows, with
    ``query_lang=all, pool_lang=all``. Columns ``METRIC_COLUMNS``.
    """
    group = list(KEYS) + ["setting", "query_lang", "pool_lang", "metric"]
    return _with_macro_averages(per_query.groupby(group, observed=True, sort=False)["value"].mean().reset_index())


def _pair_means_of_runs(per_query: pd.DataFrame) -> pd.DataFrame:
    """``aggregate``'s first step for a table whose (setting, query_lang, pool_lang, metric)
    groups are contiguous runs of rows with one set of KEYS, as ``evaluate_lareqa`` builds it:
    the means of the runs (NaN skipped, as pandas does), without a groupby (10x faster)."""
    codes = np.stack([per_query[c].cat.codes.to_numpy() for c in ("setting", "query_lang", "pool_lang", "metric")])
    starts = np.flatnonzero(np.concatenate([[True], (codes[:, 1:] != codes[:, :-1]).any(axis=0)]))
    values = per_query["value"].to_numpy(dtype=float)
    known = ~np.isnan(values)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = (np.add.reduceat(np.where(known, values, 0.0), starts)
                 / np.add.reduceat(known.astype(np.int64), starts))
    pairs = per_query.iloc[starts][list(KEYS) + ["setting", "query_lang", "pool_lang", "metric"]]
    return pairs.assign(value=means).reset_index(drop=True)


def _with_macro_averages(pairs: pd.DataFrame) -> pd.DataFrame:
    """Per-pair means -> the tidy table: the pairs, then each setting's macro average, sorted."""
    outer = list(KEYS) + ["setting", "metric"]
    macro = pairs.groupby(outer, observed=True, sort=False)["value"].mean().reset_index()
    macro["query_lang"], macro["pool_lang"] = ALL, ALL
    table = pd.concat([pairs, macro], ignore_index=True)
    for column in ("model", "strategy", "eval_dataset", "setting", "query_lang", "pool_lang", "metric"):
        table[column] = table[column].astype(str)
    table = table.assign(_s=table["setting"].map(SETTINGS.index), _m=table["metric"].map(METRICS.index),
                         _q=table["query_lang"] == ALL, _p=table["pool_lang"] == ALL)
    table = table.sort_values(list(KEYS) + ["_s", "_q", "query_lang", "_p", "pool_lang", "_m"], kind="stable")
    return table[list(METRIC_COLUMNS)].reset_index(drop=True)


def evaluate_lareqa(encoder_or_embeddings, data: LaReQA, *, model: Optional[str] = None,
                    strategy: str = "zero-shot", seed=0, per_query: bool = False,
                    cache: Union[bool, str, Path, None] = True, candidate_context: bool = False,
                    batch_size: int = 64, progress: bool = True):
    """Evaluate on a LAReQA dataset (XQuAD-R or MLQA-R): every setting, every metric.

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
    table = _with_macro_averages(_pair_means_of_runs(queries))  # = aggregate(queries), faster
    return (table, queries[list(PER_QUERY_COLUMNS)]) if per_query else table


def summarize(metrics: pd.DataFrame) -> pd.DataFrame:
    """One readable row per (model, strategy, seed, eval_dataset): the macro averages
    ``mono/cross/multi`` x ``mAP, R@1, R@10`` and the multilingual ``rank distance``."""
    macro = metrics[(metrics["query_lang"] == ALL) & (metrics["pool_lang"] == ALL)]
    wide = macro.pivot_table(index=list(KEYS), columns=["setting", "metric"], values="value", sort=False)
    columns = {}
    for metric in ("mAP", "R@1", "R@10"):
        for setting, short in ((MONO, "mono"), (CROSS, "cross"), (MULTI, "multi")):
            if (setting, metric) in wide.columns:
                columns[f"{short} {metric}"] = wide[(setting, metric)]
    if (MULTI, "rank_distance") in wide.columns:
        columns["rank distance"] = wide[(MULTI, "rank_distance")]
    return pd.DataFrame(columns, index=wide.index)


def evaluate_cli(model: str, dataset: str, out: Optional[str] = None, pooling: Optional[str] = None,
                 query_prefix: Optional[str] = None, passage_prefix: Optional[str] = None,
                 max_length: Optional[int] = None, max_ids: Optional[int] = None,
                 strategy: str = "zero-shot", seed: int = 0, precision: str = "auto") -> pd.DataFrame:
    """``hybridlib evaluate``: evaluate a model on XQuAD-R / MLQA-R, print a summary, write ``out``.

    ``model``: ``default``, a model folder or a hub name (``DualEncoder``). ``max_ids`` keeps the
    first question ids only (quick runs); ``precision`` is the encoder's (``resolve_precision``).
    The CSV (tidy, ``METRIC_COLUMNS``) is written atomically.
    """
    from .data import load_lareqa
    from .models import DualEncoder

    data = load_lareqa(dataset, max_ids=max_ids)
    encoder = DualEncoder(model, pooling=pooling, query_prefix=query_prefix,
                          passage_prefix=passage_prefix, max_length=max_length, precision=precision)
    started = time.perf_counter()
    metrics = evaluate_lareqa(encoder, data, model=encoder.name, strategy=strategy, seed=seed)
    elapsed = time.perf_counter() - started
    pairs = metrics[(metrics["query_lang"] != ALL) & (metrics["pool_lang"] != ALL)]
    n_settings = pairs.drop_duplicates(["setting", "query_lang", "pool_lang"])["setting"].value_counts()
    print(f"{encoder.name} ({encoder.precision}) on {dataset}: {len(data.questions)} questions, {len(data.candidates)} candidates; "
          f"{n_settings.get(MONO, 0)} monolingual + {n_settings.get(CROSS, 0)} cross-lingual settings "
          f"+ multilingual ({elapsed:.0f} s)")
    print(summarize(metrics).T.to_string(header=False, float_format="{:.3f}".format))
    if out:
        print(f"metrics written to {write_table(metrics, out)}")
    return metrics


# ---------------------------------------------------------------------------------------------
# BEIR format (monolingual: MIRACL dev, or any local BEIR folder)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class BeirData:
    """A BEIR-format retrieval dataset: ``corpus`` (``_id, title, text``), ``queries``
    (``_id, text``), ``qrels`` (``query-id, corpus-id, score``; score > 0 is relevant)."""

    name: str
    corpus: pd.DataFrame
    queries: pd.DataFrame
    qrels: pd.DataFrame
    language: Optional[str] = None


def _read_jsonl(path: Path, fields: Sequence[str], rename: Optional[dict] = None) -> pd.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    rename = rename or {}
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    record = json.loads(line)
                    record = {rename.get(k, k): v for k, v in record.items()}
                    rows.append(tuple(str(record.get(f, "") or "") for f in fields))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise EvaluationError(f"{path}: line {number} is not JSON ({error})") from None
    return pd.DataFrame(rows, columns=list(fields))


def _load_beir_folder(folder: Path, split: str) -> BeirData:
    """corpus.jsonl, queries.jsonl and qrels/<split>.tsv (with a header) of a BEIR folder."""
    paths = {"corpus": folder / "corpus.jsonl", "queries": folder / "queries.jsonl",
             "qrels": folder / "qrels" / f"{split}.tsv"}
    for path in paths.values():
        if not path.is_file():
            raise EvaluationError(f"{path}: missing (a BEIR folder holds corpus.jsonl, queries.jsonl and "
                                  f"qrels/{split}.tsv)")
    qrels = pd.read_csv(paths["qrels"], sep="\t", dtype=str)
    expected = ["query-id", "corpus-id", "score"]
    if list(qrels.columns[:3]) != expected:
        raise EvaluationError(f"{paths['qrels']}: header {list(qrels.columns)} (expected {' '.join(expected)})")
    qrels = qrels[expected].assign(score=pd.to_numeric(qrels["score"], errors="raise").astype(int))
    return BeirData(folder.name, _read_jsonl(paths["corpus"], ["_id", "title", "text"]),
                    _read_jsonl(paths["queries"], ["_id", "text"]), qrels)


def _load_miracl(lang: str, split: str = "dev") -> BeirData:  # pragma: no cover - needs the hub
    """MIRACL v1.0 (topics, qrels and corpus) of one language from the Hugging Face hub.

    Files of the datasets ``miracl/miracl`` (gated: accept its terms and log in with
    ``huggingface-cli login``) and ``miracl/miracl-corpus``, fetched with ``huggingface_hub``
    (a dependency of ``datasets``) and cached by it.
    """
    try:
        from huggingface_hub import hf_hub_download, list_repo_files

        def fetch(repo: str, name: str) -> Path:
            return Path(hf_hub_download(repo, name, repo_type="dataset"))

        topics = fetch("miracl/miracl", f"miracl-v1.0-{lang}/topics/topics.miracl-v1.0-{lang}-{split}.tsv")
        qrels_path = fetch("miracl/miracl", f"miracl-v1.0-{lang}/qrels/qrels.miracl-v1.0-{lang}-{split}.tsv")
        shards = sorted(f for f in list_repo_files("miracl/miracl-corpus", repo_type="dataset")
                        if f.startswith(f"miracl-corpus-v1.0-{lang}/") and f.endswith(".jsonl.gz"))
        if not shards:
            raise EvaluationError(f"MIRACL has no corpus for language {lang!r}")
        corpus = pd.concat([_read_jsonl(fetch("miracl/miracl-corpus", s), ["_id", "title", "text"],
                                        rename={"docid": "_id"}) for s in shards], ignore_index=True)
    except EvaluationError:
        raise
    except Exception as error:  # network, authentication, unknown file: one clear line
        raise EvaluationError(f"cannot load MIRACL {lang}/{split} from the Hugging Face hub "
                              f"({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                              f"give a local BEIR folder instead") from None
    queries = pd.read_csv(topics, sep="\t", header=None, names=["_id", "text"], dtype=str, quoting=3)
    qrels = pd.read_csv(qrels_path, sep="\t", header=None, names=["query-id", "q0", "corpus-id", "score"],
                        dtype={"query-id": str, "corpus-id": str, "score": int}, quoting=3)
    return BeirData("miracl", corpus, queries, qrels[["query-id", "corpus-id", "score"]], language=lang)


def load_beir(source: Union[str, Path], split: str = "test") -> BeirData:
    """A BEIR-format dataset: a local folder, or ``miracl:<lang>`` (dev split, from the hub)."""
    if str(source).startswith("miracl:"):
        return _load_miracl(str(source).split(":", 1)[1], "dev" if split == "test" else split)
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise EvaluationError(f"{folder}: not a BEIR folder (for MIRACL write miracl:<lang>, e.g. miracl:sw)")
    return _load_beir_folder(folder, split)


def beir_ranks(query_embeddings: np.ndarray, corpus_embeddings: np.ndarray,
               relevant: np.ndarray) -> np.ndarray:
    """Full-depth ranks of each query's relevant documents (``relevant``: (n, k) corpus rows,
    -1 padded), one matrix product per block of queries."""
    ranks = np.zeros(relevant.shape, dtype=np.int64)
    size = max(1, _SCORE_BLOCK // max(1, len(corpus_embeddings)))
    for start in range(0, len(query_embeddings), size):
        scores = query_embeddings[start:start + size] @ corpus_embeddings.T
        ranks[start:start + size] = M.ranks_of(scores, relevant[start:start + size])
    return ranks


def evaluate_beir(encoder, source: Union[str, Path, BeirData], *, split: str = "test",
                  model: Optional[str] = None, strategy: str = "zero-shot", seed=0,
                  language: Optional[str] = None, per_query: bool = False,
                  cache: Union[bool, str, Path, None] = True, batch_size: int = 64, progress: bool = True):
    """Monolingual retrieval on a BEIR-format dataset: nDCG@10 and R@100 (trec_eval's).

    ``source``: a BEIR folder, ``miracl:<lang>`` or a ``BeirData``. Documents are encoded as
    ``title + " " + text`` (BEIR's convention), queries as their text. Relevant = qrels score
    > 0 (binary gain; graded qrels are binarised); queries without a relevant document are
    left out; relevant documents missing from the corpus still count in R (as in trec_eval).
    Returns the tidy table (setting ``monolingual``, ``query_lang = pool_lang`` = the language,
    or ``all`` when unknown), and with ``per_query`` also the per-query table.
    """
    data = source if isinstance(source, BeirData) else load_beir(source, split)
    lang = language or data.language or ALL
    model = model or getattr(encoder, "name", None) or "model"
    qrels = data.qrels[data.qrels["score"] > 0]
    queries = data.queries[data.queries["_id"].isin(set(qrels["query-id"]))].reset_index(drop=True)
    if queries.empty:
        raise EvaluationError(f"{data.name}: no query has a relevant document in the qrels")
    doc_row = pd.Series(np.arange(len(data.corpus)), index=data.corpus["_id"])
    doc_row = doc_row[~doc_row.index.duplicated()]
    grouped = qrels.groupby("query-id")["corpus-id"].apply(list)
    relevant_lists = [list(dict.fromkeys(grouped[qid])) for qid in queries["_id"]]
    n_relevant = np.array([len(docs) for docs in relevant_lists])
    width = max(1, max(int(doc_row.index.isin(docs).sum()) for docs in relevant_lists))
    relevant = np.full((len(queries), width), -1, dtype=np.int64)
    for q, docs in enumerate(relevant_lists):
        rows = doc_row.reindex(docs).dropna().astype(np.int64).to_numpy()
        relevant[q, :len(rows)] = rows
    documents = (data.corpus["title"].astype(str) + " " + data.corpus["text"].astype(str)).str.strip()
    options = dict(cache=cache, batch_size=batch_size, progress=progress)
    ranks = beir_ranks(encode_texts(encoder, queries["text"].astype(str).tolist(), "query", **options),
                       encode_texts(encoder, documents.tolist(), "passage", **options), relevant)
    values = {"nDCG@10": M.ndcg_at_k(ranks, 10, n_relevant), "R@100": M.recall_at_k(ranks, 100, n_relevant)}
    frame = pd.DataFrame([(model, strategy, seed, data.name, MONO, lang, lang, qid, metric, v)
                          for metric, column in values.items() for qid, v in zip(queries["_id"], column)],
                         columns=list(PER_QUERY_COLUMNS))
    table = frame.groupby(list(KEYS) + ["setting", "query_lang", "pool_lang", "metric"], sort=False)["value"] \
                 .mean().reset_index()[list(METRIC_COLUMNS)]
    return (table, frame) if per_query else table
