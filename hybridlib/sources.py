"""Training-pair sources: every source gives one table of parallel pairs.

The pairs table has columns ``id, lang, query, positive, negatives`` (``negatives`` a list of
strings); rows sharing ``id`` are translations of one another. Sources:
- ``xquad-r`` / ``mlqa-r``: LAReQA, hard negatives = other sentences of the paragraph;
- ``mmarco``: mMARCO (Bonifacio et al. 2021, ``unicamp-dl/mmarco``, Google translations),
  query-passage pairs and negatives from MS MARCO's training triples, parallel across languages;
- a path ending in ``.jsonl``: users' own data, one JSON object per line with those keys
  (``docs/data-format.md``).
Several sources are mixed by the batch sampler (``hybridlib.sampling``), one table each.

>>> pairs = load_pairs("xquad-r", languages=["en", "de"], max_ids=10)
>>> pairs.columns.tolist()
['id', 'lang', 'query', 'positive', 'negatives']
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import pandas as pd
from tqdm.auto import tqdm

from .config import DATASET_LANGUAGES
from .data import MIRROR_ENV, DataError, build_training_pairs, cache_dir, load_lareqa
from .io import atomic_path

PAIR_COLUMNS = ["id", "lang", "query", "positive", "negatives"]
LAREQA_SOURCES = tuple(DATASET_LANGUAGES)

# mMARCO on the Hugging Face hub, pinned to the last commit that changed its data files.
MMARCO_DATASET = "unicamp-dl/mmarco"
MMARCO_REVISION = "4618200568100aa0bf7fbf494d8d022e7ecab9a6"
MMARCO_TRIPLES = "data/triples.train.ids.small.tsv"  # qid, positive pid, negative pid
MMARCO_QUERIES = "data/google/queries/train/{name}_queries.train.tsv"  # qid, text
MMARCO_COLLECTION = "data/google/collections/{name}_collection.tsv"  # pid, text
MMARCO_ROWS = {"triples": 39_780_811, "queries": 808_731, "collection": 8_841_823}  # for progress bars
MMARCO_LANGUAGES = {
    "ar": "arabic", "de": "german", "en": "english", "es": "spanish", "fr": "french",
    "hi": "hindi", "id": "indonesian", "it": "italian", "ja": "japanese", "nl": "dutch",
    "pt": "portuguese", "ru": "russian", "vi": "vietnamese", "zh": "chinese",
}
MMARCO_PAPER_LANGUAGES = ("en", "ar", "zh", "de", "es", "ru", "hi")  # the paper's seven


# -- users' own data: JSONL ----------------------------------------------------------------

def _text(row: dict, key: str) -> str:
    value = row[key]
    if not isinstance(value, str):
        raise ValueError(f"{key} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{key} is empty")
    return value


def _pair_row(row, hard_negatives: int) -> tuple:
    """One validated pairs row from a parsed JSON line; ``ValueError`` names the problem."""
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object with keys {', '.join(PAIR_COLUMNS)}, got {type(row).__name__}")
    missing = [key for key in PAIR_COLUMNS[:4] if key not in row]
    if missing:
        raise ValueError(f"missing key {', '.join(missing)} (a row has keys {', '.join(PAIR_COLUMNS)})")
    pair_id = row["id"]
    if isinstance(pair_id, bool) or not isinstance(pair_id, (str, int)) or not str(pair_id).strip():
        raise ValueError(f"id must be a non-empty string or an integer, got {pair_id!r}")
    negatives = row.get("negatives", [])
    if not isinstance(negatives, list):
        raise ValueError(f"negatives must be a list of strings, got {type(negatives).__name__}")
    for k, negative in enumerate(negatives):
        if not isinstance(negative, str) or not negative.strip():
            raise ValueError(f"negatives[{k}] must be a non-empty string, got {negative!r}")
    return (str(pair_id), _text(row, "lang"), _text(row, "query"), _text(row, "positive"),
            negatives[:hard_negatives])


def load_jsonl_pairs(path, hard_negatives: int = 1) -> pd.DataFrame:
    """Read a JSONL file of ``id, lang, query, positive, negatives`` rows (``docs/data-format.md``).

    ``negatives`` is optional (default none) and cut to ``hard_negatives``. A row that is not
    valid JSON, misses a key, has an empty text, a ``negatives`` that is not a list of strings,
    or repeats an (id, lang) pair raises ``DataError`` naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such training file")
    rows, first_line = [], {}
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = _pair_row(json.loads(line), hard_negatives)
            except (json.JSONDecodeError, ValueError) as error:
                raise DataError(f"{path}, line {number}: {error}") from None
            if row[:2] in first_line:
                raise DataError(f"{path}, line {number}: duplicate row for id {row[0]!r} in language "
                                f"{row[1]!r} (first at line {first_line[row[:2]]})")
            first_line[row[:2]] = number
            rows.append(row)
    if not rows:
        raise DataError(f"{path}: no training pairs in the file")
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def write_jsonl_pairs(pairs: pd.DataFrame, path) -> Path:
    """Write a pairs table in the JSONL format that ``load_jsonl_pairs`` reads (atomically)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as out:
        for pair_id, lang, query, positive, negatives in pairs[PAIR_COLUMNS].itertuples(index=False):
            out.write(json.dumps({"id": pair_id, "lang": lang, "query": query, "positive": positive,
                                  "negatives": list(negatives)}, ensure_ascii=False) + "\n")
    return path


# -- mMARCO: a pure table builder ------------------------------------------------------------

def select_mmarco_triples(triples: Iterable[Sequence], max_ids: Optional[int] = None,
                          hard_negatives: int = 1) -> dict:
    """Query id -> (positive passage id, [negative passage ids]) from MS MARCO training triples.

    ``triples`` yields ``(qid, positive pid, negative pid)`` rows. A query keeps the positive
    of its first triple and up to ``hard_negatives`` distinct negatives from its triples, in
    file order; only the first ``max_ids`` query ids met are kept. Reading stops as soon as
    every kept query has its negatives (with ``hard_negatives`` 1, after ``max_ids`` queries).
    """
    chosen: dict = {}
    missing = 0  # kept queries still short of negatives
    for qid, positive, negative in triples:
        qid, positive, negative = str(qid), str(positive), str(negative)
        if qid not in chosen:
            if max_ids is not None and len(chosen) >= max_ids:
                continue  # still reading for the negatives of the kept queries
            chosen[qid] = (positive, [])
            missing += hard_negatives > 0
        negatives = chosen[qid][1]
        if len(negatives) < hard_negatives and negative != chosen[qid][0] and negative not in negatives:
            negatives.append(negative)
            missing -= len(negatives) == hard_negatives
        if missing == 0 and max_ids is not None and len(chosen) >= max_ids:
            break
    return chosen


def _texts_of(rows: Iterable[Sequence], wanted: set) -> dict:
    """id -> text for the ids in ``wanted`` from ``(id, text)`` rows; stops once all are found."""
    found = {}
    if not wanted:
        return found
    for key, text in rows:
        key = str(key)
        if key in wanted:
            found[key] = text
            if len(found) == len(wanted):
                break
    return found


def build_mmarco_pairs(triples: Iterable[Sequence], queries: Mapping[str, Iterable[Sequence]],
                       collections: Mapping[str, Iterable[Sequence]], max_ids: Optional[int] = None,
                       hard_negatives: int = 1) -> pd.DataFrame:
    """The parallel pairs table of mMARCO from its per-language tables.

    ``triples``: ``(qid, positive pid, negative pid)`` rows (shared by every language);
    ``queries[lang]``: ``(qid, text)`` rows; ``collections[lang]``: ``(pid, text)`` rows (lists,
    DataFrames' ``itertuples`` or streams: each is read once, only the needed texts are kept).
    mMARCO translates MS MARCO keeping its ids, so the pair (qid, positive pid) in language L
    is the translation of the same pair in every other language: rows share ``id`` = qid.
    A language missing a query or its positive has no row for that id; negatives missing in
    a language are left out of that row.
    """
    if set(queries) != set(collections):
        raise DataError(f"mMARCO: queries in {', '.join(sorted(queries))} but collections in "
                        f"{', '.join(sorted(collections))}")
    chosen = select_mmarco_triples(triples, max_ids, hard_negatives)
    passage_ids = {pid for positive, negatives in chosen.values() for pid in [positive, *negatives]}
    rows = []
    for lang in queries:
        query_text = _texts_of(queries[lang], set(chosen))
        passage_text = _texts_of(collections[lang], passage_ids)
        for qid, (positive, negatives) in chosen.items():
            if qid in query_text and positive in passage_text:
                rows.append((qid, lang, query_text[qid], passage_text[positive],
                             [passage_text[n] for n in negatives if n in passage_text]))
    if not rows:
        raise DataError("mMARCO: no query has its text and its positive passage in the given tables")
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


# -- mMARCO: reading the files (mirror folder first, then the hub, streamed) ----------------------

def _mmarco_lines(relpath: str, total: Optional[int], label: str) -> Iterator[str]:
    """Lines of one mMARCO file, streamed by ``datasets`` from the mirror or the pinned hub revision."""
    mirror = os.environ.get(MIRROR_ENV)
    local = Path(mirror) / "mmarco" / relpath if mirror else None
    source = str(local) if local and local.is_file() else \
        f"hf://datasets/{MMARCO_DATASET}@{MMARCO_REVISION}/{relpath}"
    try:
        import datasets

        stream = datasets.load_dataset("text", data_files=source, split="train", streaming=True)
        for row in tqdm(stream, total=total, desc=label, unit=" rows", mininterval=5, leave=False):
            yield row["text"]
    except ImportError:
        raise DataError("mmarco needs the `datasets` package (pip install datasets)") from None
    except Exception as error:  # network and hub failures come from several libraries
        where = f"${MIRROR_ENV}/mmarco/{relpath} does not exist, and " if mirror else ""
        raise DataError(f"cannot read {MMARCO_DATASET} ({relpath}): {where}the hub failed "
                        f"({type(error).__name__}: {error}). Put a copy of the dataset's files in "
                        f"${MIRROR_ENV}/mmarco/, or give your own pairs as a .jsonl file "
                        f"(docs/data-format.md).") from None


def _tsv_rows(lines: Iterable[str], columns: int) -> Iterator[list]:
    for line in lines:
        fields = line.split("\t", columns - 1)
        if len(fields) == columns:  # a blank or broken line is skipped
            yield fields


def load_mmarco_pairs(languages: Optional[Sequence[str]] = None, max_ids: Optional[int] = None,
                      hard_negatives: int = 1) -> pd.DataFrame:
    """mMARCO's parallel training pairs in ``languages`` (default: the paper's seven).

    Streams the files of ``unicamp-dl/mmarco`` (pinned revision; ``$HYBRIDLIB_MIRROR/mmarco/``
    first, laid out like the hub repository) with ``datasets``: the training triples, then
    each language's queries and passage collection, keeping only the texts needed by the
    first ``max_ids`` queries. The table is cached as JSONL in the cache folder; delete the
    file to rebuild it. Raises ``DataError`` when neither the mirror nor the hub can be read.
    """
    languages = list(languages or MMARCO_PAPER_LANGUAGES)
    unknown = [lang for lang in languages if lang not in MMARCO_LANGUAGES]
    if unknown:
        raise DataError(f"mmarco has no language {', '.join(unknown)} (it has {', '.join(sorted(MMARCO_LANGUAGES))})")
    cached = cache_dir() / "mmarco" / (f"pairs-{MMARCO_REVISION[:7]}-{'-'.join(sorted(languages))}-"
                                       f"ids{max_ids or 'all'}-neg{hard_negatives}.jsonl")
    if cached.is_file():
        return load_jsonl_pairs(cached, hard_negatives)
    triples = _tsv_rows(_mmarco_lines(MMARCO_TRIPLES, MMARCO_ROWS["triples"], "mMARCO triples"), 3)
    queries, collections = {}, {}
    for lang in languages:
        name = MMARCO_LANGUAGES[lang]
        queries[lang] = _tsv_rows(_mmarco_lines(MMARCO_QUERIES.format(name=name), MMARCO_ROWS["queries"],
                                                f"mMARCO {lang} queries"), 2)
        collections[lang] = _tsv_rows(_mmarco_lines(MMARCO_COLLECTION.format(name=name), MMARCO_ROWS["collection"],
                                                    f"mMARCO {lang} passages"), 2)
    pairs = build_mmarco_pairs(triples, queries, collections, max_ids, hard_negatives)
    write_jsonl_pairs(pairs, cached)
    return pairs


def _held_languages(source: str, languages: Optional[Sequence[str]]) -> Optional[list[str]]:
    """The requested languages that a LAReQA source has (None: all of them); none of them is an error."""
    if not languages:
        return None
    held = [lang for lang in languages if lang in DATASET_LANGUAGES[source]]
    if not held:
        raise DataError(f"{source}: no training pairs in {', '.join(languages)} "
                        f"(it has {', '.join(DATASET_LANGUAGES[source])})")
    return held


# -- one entry point -------------------------------------------------------------------------

def load_pairs(source: str, languages: Optional[Sequence[str]] = None, max_ids: Optional[int] = None,
               hard_negatives: int = 1) -> pd.DataFrame:
    """The training pairs of one source, restricted to ``languages`` and the first ``max_ids`` ids.

    ``source``: ``xquad-r``, ``mlqa-r``, ``mmarco`` or a ``.jsonl`` path. ``languages`` None keeps
    every language of the source (for mMARCO, the paper's seven); a source holding only some of
    the requested languages keeps those (an English-only dataset can join a multilingual mix);
    one holding none of them is an error. ``max_ids`` keeps the first ``max_ids`` ids in sorted
    order (for mMARCO, the first ids of its triples file). LAReQA's hard negatives are drawn once,
    with a fixed seed, so every run of a study trains on the same pairs.
    """
    if source.endswith(".jsonl"):
        pairs = load_jsonl_pairs(source, hard_negatives)
    elif source in LAREQA_SOURCES:
        pairs = build_training_pairs(load_lareqa(source, _held_languages(source, languages)), hard_negatives)
    elif source == "mmarco":
        available = [lang for lang in languages if lang in MMARCO_LANGUAGES] if languages else None
        if languages and not available:
            raise DataError(f"mmarco: no training pairs in {', '.join(languages)} "
                            f"(it has {', '.join(sorted(MMARCO_LANGUAGES))})")
        pairs = load_mmarco_pairs(available, max_ids, hard_negatives)
    else:
        raise DataError(f"unknown training source {source!r} (expected {', '.join(LAREQA_SOURCES)}, "
                        f"mmarco, or a path ending in .jsonl)")
    if languages:
        pairs = pairs[pairs["lang"].isin(languages)]
        if pairs.empty:
            raise DataError(f"{source}: no training pairs in {', '.join(languages)}")
    if max_ids:
        keep = sorted(pairs["id"].unique())[:max_ids]
        pairs = pairs[pairs["id"].isin(keep)]
    return pairs.reset_index(drop=True)
