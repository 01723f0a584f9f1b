"""BEIR-format evaluation (monolingual retrieval: MIRACL dev, or any local BEIR folder).

A BEIR folder holds ``corpus.jsonl``, ``queries.jsonl`` and ``qrels/<split>.tsv`` (Thakur et
al. 2021); MIRACL (Zhang et al. 2023) is read from the Hugging Face hub in the same shape.
Metrics are trec_eval's nDCG@10 and R@100 over the full ranking of the corpus.

>>> from hybridlib.models import DualEncoder
>>> evaluate_beir(DualEncoder("default"), "miracl:sw")  # doctest: +SKIP
"""
from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from .. import metrics as M
from ..constants import ALL, MONO, PER_QUERY_COLUMNS, ZERO_SHOT
from .cache import EvaluationError, encode_texts
from .lareqa import aggregate


@dataclass(frozen=True)
class BeirData:
    """A BEIR-format retrieval dataset: ``corpus`` (``_id, title, text``), ``queries``
    (``_id, text``), ``qrels`` (``query-id, corpus-id, score``; score > 0 is relevant)."""

    name: str
    corpus: pd.DataFrame
    queries: pd.DataFrame
    qrels: pd.DataFrame
    language: Optional[str] = None


# The deepest rank BEIR's metrics look at (R@100).
BEIR_DEPTH = 100

def _read_jsonl(path: Path, fields: Sequence[str], rename: Optional[dict] = None) -> pd.DataFrame:
    opener = gzip.open if path.suffix == ".gz" else open
    rename = rename or {}
    rows = []
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise EvaluationError(f"{path}: line {number} is not JSON ({error})") from None
                record = {rename.get(k, k): v for k, v in record.items()}
                rows.append(tuple(str(record.get(f, "") or "") for f in fields))
    except UnicodeDecodeError as error:
        raise EvaluationError(f"{path}: not UTF-8 text ({error})") from None
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
    size = M.block_rows(len(corpus_embeddings))
    for start in range(0, len(query_embeddings), size):
        scores = query_embeddings[start:start + size] @ corpus_embeddings.T
        ranks[start:start + size] = M.ranks_of(scores, relevant[start:start + size])
    return ranks


def beir_top_k_ranks(query_embeddings: np.ndarray, corpus_embeddings: np.ndarray, relevant: np.ndarray,
                     k: int, index_type: str) -> np.ndarray:
    """Ranks of each query's relevant documents within its top ``k`` from a faiss index (``search.top_k``):
    enough for nDCG@10 and R@k, with no (queries, corpus) score matrix.

    A relevant document not retrieved gets a distinct rank beyond ``k`` (``k + 1 + its slot``):
    equal ranks would read as a tie group in ``metrics``. ``index_type``: ``flat`` (exact),
    ``hnsw`` or ``ivf`` (approximate, for corpora of millions).
    """
    from ..search import top_k

    _, rows = top_k(query_embeddings, corpus_embeddings, min(k, len(corpus_embeddings)), index_type)
    ranks = np.full(relevant.shape, M.NO_RANK, dtype=np.int64)
    for q in range(len(relevant)):
        position = {row: i + 1 for i, row in enumerate(rows[q]) if row >= 0}
        ranks[q] = [position.get(row, k + 1 + j) if row >= 0 else M.NO_RANK for j, row in enumerate(relevant[q])]
    return ranks


def _relevant_rows(data: BeirData, queries: pd.DataFrame, qrels: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(n, k) corpus rows of each query's relevant documents (-1 padded) and their number in the qrels."""
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
    return relevant, n_relevant


def evaluate_beir(encoder, source: Union[str, Path, BeirData], *, split: str = "test",
                  model: Optional[str] = None, strategy: str = ZERO_SHOT, seed=0,
                  language: Optional[str] = None, per_query: bool = False,
                  cache: Union[bool, str, Path, None] = True, batch_size: int = 64, progress: bool = True,
                  index_type: Optional[str] = None):
    """Monolingual retrieval on a BEIR-format dataset: nDCG@10 and R@100 (trec_eval's).

    ``source``: a BEIR folder, ``miracl:<lang>`` or a ``BeirData``. Documents are encoded as
    ``title + " " + text`` (BEIR's convention), queries as their text. Relevant = qrels score
    > 0 (binary gain; graded qrels are binarised); queries without a relevant document are
    left out; relevant documents missing from the corpus still count in R (as in trec_eval).
    Returns the tidy table of ``aggregate`` (setting ``monolingual``, ``query_lang = pool_lang``
    = the language, and the ``all`` row; one row when the language is unknown), and with
    ``per_query`` also the per-query table: the per-query tables of several languages
    concatenated and passed to ``aggregate`` give their macro average. ``index_type`` (``flat``,
    ``hnsw``, ``ivf``): retrieve the top 100 from a faiss index (``beir_top_k_ranks``) instead of
    ranking the whole corpus with a dense score matrix (None).
    """
    data = source if isinstance(source, BeirData) else load_beir(source, split)
    lang = language or data.language or ALL
    model = model or getattr(encoder, "name", None) or "model"
    qrels = data.qrels[data.qrels["score"] > 0]
    queries = data.queries[data.queries["_id"].isin(set(qrels["query-id"]))].reset_index(drop=True)
    if queries.empty:
        raise EvaluationError(f"{data.name}: no query has a relevant document in the qrels")
    relevant, n_relevant = _relevant_rows(data, queries, qrels)
    documents = (data.corpus["title"].astype(str) + " " + data.corpus["text"].astype(str)).str.strip()
    options = dict(cache=cache, batch_size=batch_size, progress=progress)
    query_embeddings = encode_texts(encoder, queries["text"].astype(str).tolist(), "query", **options)
    corpus_embeddings = encode_texts(encoder, documents.tolist(), "passage", **options)
    if index_type is None:
        ranks = beir_ranks(query_embeddings, corpus_embeddings, relevant)
    else:
        ranks = beir_top_k_ranks(query_embeddings, corpus_embeddings, relevant, BEIR_DEPTH, index_type)
    values = {"nDCG@10": M.ndcg_at_k(ranks, 10, n_relevant), "R@100": M.recall_at_k(ranks, BEIR_DEPTH, n_relevant)}
    frame = pd.DataFrame([(model, strategy, seed, data.name, MONO, lang, lang, qid, metric, v)
                          for metric, column in values.items() for qid, v in zip(queries["_id"], column)],
                         columns=list(PER_QUERY_COLUMNS))
    table = aggregate(frame)
    return (table, frame) if per_query else table
