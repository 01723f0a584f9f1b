"""faiss indexes over LAReQA pools, and the top k of a question in one (see ``hybridlib.search``).

``build_index`` puts a pool's candidate embeddings (one language, or all: the multilingual
pool) into a faiss index, by default ``IndexFlatIP`` over L2-normalised embeddings, which is
exact: its scores are the cosines the evaluation ranks by. The index is saved next to the
embedding cache (``evaluate.encode_texts``), keyed like it by the model's weights, settings and
the pool's texts, and reused. ``search`` returns the top k of each question as a tidy table.

Pools too large for a flat index take an approximate one (``index_type``): ``hnsw`` (a
navigable small-world graph, Malkov & Yashunin 2018: faiss ``IndexHNSWFlat``) or ``ivf``
(k-means cells searched nearest first: faiss ``IndexIVFFlat``). ``top_k`` does the same for
any two embedding matrices (the BEIR path).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import faiss
import numpy as np
import pandas as pd

from ..constants import ALL
from ..data import LaReQA
from ..errors import HybridlibError
from ..evaluate import cache_folder, cache_key, candidate_texts, encode_texts, model_fingerprint
from ..io import atomic_path

INDEX_TYPES = ("flat", "hnsw", "ivf")
INDEX_FORMAT = 1  # bump to invalidate every saved index
HNSW_NEIGHBOURS = 32  # M, links per node (faiss's benchmarks use 16-64)
HNSW_EF_CONSTRUCTION = 80
HNSW_EF_SEARCH = 128  # raised to k when k is larger
IVF_PROBES = 16  # cells visited per query (of about 4 sqrt(n))
SEARCH_COLUMNS = ("question", "query_lang", "query_id", "rank", "score", "candidate_lang", "candidate_text",
                  "relevant", "candidate_row")
Cache = Union[bool, str, Path, None]


class SearchError(HybridlibError):
    """A search cannot run: unknown model or language, an empty query, k outside the pool."""


# ------------------------------------------------------------------------------------ faiss indexes
def make_index(embeddings: np.ndarray, index_type: str = "flat"):
    """A faiss inner-product index over the L2-normalised rows of ``embeddings`` (a copy is normalised).

    ``flat``: exact (``IndexFlatIP``). ``hnsw``: ``IndexHNSWFlat`` with ``HNSW_NEIGHBOURS`` links.
    ``ivf``: ``IndexIVFFlat`` with about ``4 sqrt(n)`` k-means cells (at least 39 training
    points per cell, faiss's minimum), trained on the embeddings themselves.
    """
    _check_index_type(index_type)
    vectors = np.array(embeddings, dtype=np.float32, order="C", copy=True)
    if vectors.ndim != 2 or len(vectors) == 0:
        raise SearchError(f"cannot index embeddings of shape {vectors.shape}: expected (n >= 1, dim)")
    faiss.normalize_L2(vectors)
    dim = vectors.shape[1]
    if index_type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif index_type == "hnsw":
        index = faiss.IndexHNSWFlat(dim, HNSW_NEIGHBOURS, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
    else:
        cells = max(1, min(round(4 * np.sqrt(len(vectors))), len(vectors) // 39))
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, cells, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    return index


def _check_index_type(index_type: str) -> None:
    if index_type not in INDEX_TYPES:
        raise SearchError(f"index_type {index_type!r}: unknown (use {', '.join(INDEX_TYPES)})")


def _search_index(index, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """faiss search of normalised ``queries``: (scores, rows), -1 rows where an approximate index found fewer."""
    if isinstance(index, faiss.IndexHNSW):
        index.hnsw.efSearch = max(HNSW_EF_SEARCH, k)
    elif isinstance(index, faiss.IndexIVF):
        index.nprobe = min(index.nlist, IVF_PROBES)
    vectors = np.array(queries, dtype=np.float32, order="C", copy=True)
    faiss.normalize_L2(vectors)
    return index.search(vectors, k)


def top_k(query_embeddings: np.ndarray, corpus_embeddings: np.ndarray, k: int,
          index_type: str = "flat") -> tuple[np.ndarray, np.ndarray]:
    """The k best corpus rows of each query by cosine: ``(scores, rows)``, both ``(n_queries, k)``.

    For retrieval without a dense ``(queries, corpus)`` score matrix (BEIR-sized corpora).
    ``flat`` is exact; within a group of tied scores faiss's order is arbitrary (the study's
    metrics count ties pessimistically). Approximate indexes (``hnsw``, ``ivf``) may miss true
    neighbours and then pad a row with score ``-inf`` and row -1.
    """
    if not 1 <= k <= len(corpus_embeddings):
        raise SearchError(f"k={k}: must be between 1 and the corpus size {len(corpus_embeddings)}")
    scores, rows = _search_index(make_index(corpus_embeddings, index_type), query_embeddings, k)
    return np.where(rows >= 0, scores, -np.inf).astype(np.float32), rows.astype(np.int64)


@dataclass
class PoolIndex:
    """A faiss index over one LAReQA pool: index entry i is candidate ``rows[i]`` of ``data.candidates``.

    ``lang``: the pool's language, or ``all`` (the multilingual pool); ``path``: the saved
    index file (None when not cached).
    """

    data: LaReQA
    lang: str
    rows: np.ndarray
    index: object
    index_type: str
    path: Optional[Path] = None

    def __len__(self) -> int:
        return len(self.rows)


def _index_path(encoder, texts: list[str], index_type: str, cache: Cache) -> Optional[Path]:
    """``<embedding cache>/index-<key>.<type>.faiss``, keyed as ``encode_texts`` keys embeddings; None = no cache."""
    folder = cache_folder(cache)
    fingerprint = model_fingerprint(encoder) if folder is not None else None
    if fingerprint is None:
        return None
    index = {"index_format": INDEX_FORMAT, "index": index_type,
             "parameters": [HNSW_NEIGHBOURS, HNSW_EF_CONSTRUCTION] if index_type == "hnsw" else []}
    return folder / f"index-{cache_key(encoder, fingerprint, texts, 'passage', index)}.{index_type}.faiss"


def build_index(encoder, data: LaReQA, lang: str = ALL, *, index_type: str = "flat", cache: Cache = True,
                candidate_context: bool = False, batch_size: int = 64, progress: bool = True) -> PoolIndex:
    """The faiss index of a LAReQA pool (``lang``, or ``all``) for ``encoder``, read from the cache if there.

    The candidates are embedded as the evaluation embeds them (``candidate_texts`` of the whole
    dataset through ``encode_texts`` with ``cache``, so the embeddings are shared with it) and
    the pool's rows indexed (``make_index``). With a cache folder and an encoder with a
    fingerprint, the index is written there atomically and read back on the next call.
    """
    _check_index_type(index_type)
    languages = sorted(data.candidates["lang"].unique())
    if lang != ALL and lang not in languages:
        raise SearchError(f"{data.name} has no language {lang!r} (it has {', '.join(languages)}, or {ALL})")
    texts = candidate_texts(data, candidate_context)
    rows = np.arange(len(texts)) if lang == ALL else np.flatnonzero(data.candidates["lang"].to_numpy() == lang)
    path = _index_path(encoder, [texts[i] for i in rows], index_type, cache)
    index = faiss.read_index(str(path)) if path is not None and path.is_file() else None
    if index is None or index.ntotal != len(rows):  # never trust a file that does not fit
        embeddings = encode_texts(encoder, texts, "passage", cache=cache, batch_size=batch_size, progress=progress)
        index = make_index(embeddings[rows], index_type)
        if path is not None:
            with atomic_path(path) as tmp:
                faiss.write_index(index, str(tmp))
    return PoolIndex(data, lang, rows, index, index_type, path)


# ------------------------------------------------------------------------------------------- search
def _as_questions(data: LaReQA, questions) -> pd.DataFrame:
    """Questions -> ``question, query_lang, query_id, row`` (row of ``data.questions``, -1 for free text)."""
    if isinstance(questions, pd.DataFrame):
        keys = questions["lang"].astype(str) + ":" + questions["id"].astype(str)
    else:
        keys = pd.Series([questions] if isinstance(questions, str) else list(questions), dtype=object)
    asked = data.questions
    row_of = pd.Series(np.arange(len(asked)), index=asked["lang"] + ":" + asked["id"])
    row_of = row_of[~row_of.index.duplicated()]
    rows = row_of.reindex(keys.astype(str).str.strip()).fillna(-1).astype(np.int64).to_numpy()
    if isinstance(questions, pd.DataFrame) and np.any(rows < 0):
        raise SearchError(f"{int(np.sum(rows < 0))} of the given questions are not questions of {data.name}")
    texts = [str(k).strip() for k in keys]
    if not texts or any(not t for t in texts):
        raise SearchError("empty query: give a question text (any language) or <lang>:<question id>")
    known = rows >= 0
    return pd.DataFrame({
        "question": np.where(known, asked["text"].to_numpy()[np.maximum(rows, 0)], texts),
        "query_lang": pd.array(np.where(known, asked["lang"].to_numpy()[np.maximum(rows, 0)], None), dtype="string"),
        "query_id": pd.array(np.where(known, asked["id"].to_numpy()[np.maximum(rows, 0)], None), dtype="string"),
        "row": rows})


def _query_embeddings(encoder, data: LaReQA, questions: pd.DataFrame, cache: Cache) -> np.ndarray:
    """Dataset questions from the embeddings of all ``data.questions`` (the evaluation's cache); free text encoded."""
    known = questions["row"].to_numpy() >= 0
    parts = {}
    if known.any():
        every = encode_texts(encoder, data.questions["text"].astype(str).tolist(), "query", cache=cache,
                             progress=False)
        parts[True] = every[questions["row"].to_numpy()[known]]
    if (~known).any():
        parts[False] = encode_texts(encoder, questions["question"][~known].tolist(), "query", cache=False,
                                    progress=False)
    dim = next(iter(parts.values())).shape[1]
    embeddings = np.empty((len(questions), dim), dtype=np.float32)
    for is_known, values in parts.items():
        embeddings[known == is_known] = values
    return embeddings


def _relevant_rows(data: LaReQA) -> pd.Series:
    """Question id -> the candidate rows of its answers in every language (LAReQA's relevance)."""
    return data.questions.groupby("id")["candidate"].agg(frozenset)


def search(encoder, index: PoolIndex, questions, k: int = 10, *, cache: Cache = True) -> pd.DataFrame:
    """The top ``k`` candidates of ``index``'s pool for each question, as a tidy table.

    ``questions``: a text or a list of texts (a text ``"<lang>:<question id>"`` of the dataset
    is that dataset question), or rows of ``index.data.questions``. Dataset questions are
    embedded from the embeddings of every dataset question (``encode_texts`` with ``cache``:
    those of the evaluation), free texts on their own. Columns ``SEARCH_COLUMNS``: ``rank``
    1..k in faiss's order, ``score`` the cosine, ``relevant`` whether the candidate is an
    answer of the question's id in some language (NA for free text), ``candidate_row`` its
    row of ``data.candidates``; ``query_lang`` and ``query_id`` are NA for free text.
    """
    if not 1 <= k <= len(index):
        raise SearchError(f"k={k}: must be between 1 and the pool size {len(index)} ({index.data.name}, {index.lang})")
    asked = _as_questions(index.data, questions)
    scores, hits = _search_index(index.index, _query_embeddings(encoder, index.data, asked, cache), k)
    found = hits >= 0
    q, position = np.nonzero(found)
    rows = index.rows[hits[found]]
    answers = _relevant_rows(index.data)
    ids = asked["query_id"].to_numpy()[q]
    relevant = [pd.NA if pd.isna(i) else row in answers[i] for i, row in zip(ids, rows)]
    candidates = index.data.candidates
    return pd.DataFrame({
        "question": asked["question"].to_numpy()[q], "query_lang": asked["query_lang"].array[q],
        "query_id": asked["query_id"].array[q], "rank": position + 1, "score": scores[found],
        "candidate_lang": candidates["lang"].to_numpy()[rows], "candidate_text": candidates["text"].to_numpy()[rows],
        "relevant": pd.array(relevant, dtype="boolean"), "candidate_row": rows})


def _pool_vectors(index: PoolIndex) -> np.ndarray:
    """The normalised embeddings stored in the index (IVF needs its direct map to give them back)."""
    if isinstance(index.index, faiss.IndexIVF):
        index.index.make_direct_map()
    return index.index.reconstruct_n(0, index.index.ntotal)


def question_rank_distances(encoder, index: PoolIndex, questions, *, cache: Cache = True) -> pd.DataFrame:
    """The rank distance (``metrics.rank_distance``: max - min position of a question's relevant
    candidates in the whole pool, ties pessimistic) of dataset questions: columns ``question,
    query_lang, query_id, rank_distance``. The study's language-bias measure on the ``all`` pool."""
    from .. import metrics as M

    asked = _as_questions(index.data, questions)
    if (asked["row"] < 0).any():
        raise SearchError("a rank distance needs dataset questions (<lang>:<question id>), not free text")
    scores = _query_embeddings(encoder, index.data, asked, cache) @ _pool_vectors(index).T
    answers = _relevant_rows(index.data)
    mask = np.stack([np.isin(index.rows, list(answers[i])) for i in asked["query_id"]])
    distances = M.rank_distance(M.relevant_ranks(scores, mask))
    return asked.drop(columns="row").assign(rank_distance=distances)


def own_language_share(encoder, index: PoolIndex, k: int = 10, *, cache: Cache = True) -> pd.DataFrame:
    """Per dataset question: the share of its top ``k`` (faiss order) in the question's own language.

    A reading of language bias beside the rank distance: in the multilingual pool of L
    languages of equal size, a model without language preference gives about 1/L (the query
    language's share of the pool), one that prefers the query's language up to 1. The same
    measure as the evaluation's own-language share, except that faiss orders ties at the k-th
    score arbitrarily where the evaluation shares them out evenly.
    Columns ``query_lang, query_id, own_language_share``.
    """
    table = search(encoder, index, index.data.questions, k, cache=cache)
    own = table["candidate_lang"] == table["query_lang"].astype(str)
    shares = own.groupby([table["query_lang"].astype(str), table["query_id"].astype(str)], sort=False).mean()
    return shares.rename("own_language_share").reset_index()
