"""LAReQA data (XQuAD-R, MLQA-R): fetch by pinned URL + sha256, load as tables, build pairs.

Files are looked for first in ``$HYBRIDLIB_MIRROR/lareqa/<dataset>/<lang>.json`` (a folder laid
out like ``shared/data``, for air-gapped machines), then in the cache
(``$HYBRIDLIB_CACHE``, default the user's cache dir), and only then downloaded.

>>> data = load_lareqa("xquad-r", languages=["en", "de"])
>>> data.questions.columns.tolist()
['lang', 'id', 'text', 'candidate']
"""
from __future__ import annotations

import hashlib
import json
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import pandas as pd
import platformdirs

from .config import DATASET_LANGUAGES
from .errors import HybridlibError
from .io import atomic_path

MIRROR_ENV = "HYBRIDLIB_MIRROR"
CACHE_ENV = "HYBRIDLIB_CACHE"

# Pinned commits of google-research-datasets/lareqa (MLQA-R was removed after 354d67d).
LAREQA_COMMITS = {
    "xquad-r": "9bc8c7fb6dd8d01d72a05a93c2cb96882b0d299c",
    "mlqa-r": "354d67d1cd066854cdfbf5ad0e6105528976141d",
}
LAREQA_URL = "https://raw.githubusercontent.com/google-research-datasets/lareqa/{commit}/{dataset}/{lang}.json"
LAREQA_SHA256 = {
    "mlqa-r/ar.json": "2132fbc03208535c0fe01f2e2c5121d06f9c2aa799af93b0a719dbc105bdf137",
    "mlqa-r/de.json": "ce9454dc5aa6f2d85c23cd6e49cb367fbb7c4c6e62d7f71e355c6b5dae4d0886",
    "mlqa-r/en.json": "fedd9a5cc0848dda80caf84aa36f482adaae230526a3f6e9e86926a93ef3b1e4",
    "mlqa-r/es.json": "70ecba276b8c96a692b120693a595d076ce94ad21d4b28311538a9fcbfe0f9d7",
    "mlqa-r/hi.json": "4dd0fb3c06f737a5481d705bc1dcac7876712a5815c9265908fbb3a0696cb654",
    "mlqa-r/vi.json": "9d3baff6ba03e6793b25594217265ea59a136b9733833dca8a9582a84a78ff85",
    "mlqa-r/zh.json": "57f01d2fff50cf3392805635b01445339f225ad5bf28ba8443b12f8dbd1e69dc",
    "xquad-r/ar.json": "c52922d3b8ac1ae03ed5ac38647ad59870dca3dda2beefe18ecdc30729acb69d",
    "xquad-r/de.json": "16fb0f4bf4916154b585a20c24c66074591c9718a1affe764ff4697572328949",
    "xquad-r/el.json": "163fd43ee785a30eb534ae2061e9eaa766a7ee4e8ffce5e4b422480c150f64b6",
    "xquad-r/en.json": "7b0954f39297c27a31fef610f0883337dd2907fa8699151dc922afdd0fa12ffe",
    "xquad-r/es.json": "f8e836b2d91009c4363e04315f7ede363eedbbb49c67dda60de6c4aa782f58de",
    "xquad-r/hi.json": "ea45ba8ae4513d1533b222bebdc02a90bc319c055d3aeea68584a053d2e92872",
    "xquad-r/ru.json": "7f4dff853538b9a5fcc28c070b8bb983a5c5d190ac747b8e005a1ada9cab18f1",
    "xquad-r/th.json": "c3a041864c3a9fb0b4dd91cfdf99cf36b411b3e704c58a303c97bc6dc786cfe4",
    "xquad-r/tr.json": "f3e8c13002bbce154a4578f535f7533cb70f3da08840e6b62735935baec7bd94",
    "xquad-r/vi.json": "e35926bf5cc6fc6ecbdfca49467aabeb454f08d152d7818143a906bd31dde995",
    "xquad-r/zh.json": "80c2cde7b9c2fb134c303cbb52f2ba396ead9eb0014aec43993543d2ba9e93ed",
}


class DataError(HybridlibError):
    """A data file is missing, corrupt or not in the expected format."""


def cache_dir() -> Path:
    """The folder for downloaded data and built models (``$HYBRIDLIB_CACHE`` or the user cache)."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("hybridlib"))


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download(url: str, target: Path, sha256: str) -> None:
    with atomic_path(target) as tmp:
        with urllib.request.urlopen(url, timeout=60) as response, open(tmp, "wb") as out:
            out.write(response.read())
        got = sha256_of(tmp)
        if got != sha256:
            raise DataError(f"{url}: sha256 {got} does not match the pinned {sha256}; the file was not kept")


def fetch_file(relpath: str, url: str, sha256: str) -> Path:
    """Return a verified local copy of ``relpath``: from the mirror, the cache, or ``url``."""
    mirror = os.environ.get(MIRROR_ENV)
    if mirror:
        candidate = Path(mirror) / relpath
        if candidate.is_file():
            got = sha256_of(candidate)
            if got != sha256:
                raise DataError(f"{candidate}: sha256 {got} does not match the pinned {sha256}")
            return candidate
    cached = cache_dir() / "data" / relpath
    if cached.is_file():
        if sha256_of(cached) == sha256:
            return cached
        cached.unlink()  # a bad file is never used or kept
    try:
        _download(url, cached, sha256)
    except DataError:
        raise
    except OSError as error:
        where = f"${MIRROR_ENV}={mirror} (no {relpath} there)" if mirror else f"${MIRROR_ENV} is not set"
        raise DataError(f"cannot get {relpath}: download of {url} failed ({error}); {where}. "
                        f"Point {MIRROR_ENV} at a folder holding {relpath} to work offline.") from None
    return cached


def fetch_lareqa(dataset: str, languages: Optional[Iterable[str]] = None) -> dict[str, Path]:
    """Verified local paths of a LAReQA dataset's JSON files, one per language."""
    if dataset not in LAREQA_COMMITS:
        raise DataError(f"unknown LAReQA dataset {dataset!r} (expected one of {', '.join(LAREQA_COMMITS)})")
    languages = list(languages or DATASET_LANGUAGES[dataset])
    paths = {}
    for lang in languages:
        if lang not in DATASET_LANGUAGES[dataset]:
            raise DataError(f"{dataset} has no language {lang!r} (it has {', '.join(DATASET_LANGUAGES[dataset])})")
        relpath = f"{dataset}/{lang}.json"
        url = LAREQA_URL.format(commit=LAREQA_COMMITS[dataset], dataset=dataset, lang=lang)
        paths[lang] = fetch_file(f"lareqa/{relpath}", url, LAREQA_SHA256[relpath])
    return paths


@dataclass(frozen=True)
class LaReQA:
    """A LAReQA dataset as two tables.

    ``questions``: one row per (language, question) with columns ``lang, id, text, candidate``;
    ``candidate`` is the row of the question's answer sentence in ``candidates``.
    ``candidates``: one row per sentence with columns ``lang, text, paragraph, context``
    (``paragraph`` is a paragraph key shared by the sentences of one paragraph, ``context`` its text).
    """

    name: str
    questions: pd.DataFrame
    candidates: pd.DataFrame

    @property
    def languages(self) -> list[str]:
        """Languages present, sorted."""
        return sorted(self.questions["lang"].unique())


def _read_squad(path: Path) -> list:
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle)["data"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a valid LAReQA JSON file ({error})") from None


def _parse_language(path: Path, lang: str, questions: list, candidates: list) -> None:
    for a, article in enumerate(_read_squad(path)):
        for p, paragraph in enumerate(article["paragraphs"]):
            key = f"{lang}/{a}/{p}"
            first = len(candidates)
            starts = [start for start, _ in paragraph["sentence_breaks"]]
            for sentence in paragraph["sentences"]:
                candidates.append((lang, sentence, key, paragraph["context"]))
            for qa in paragraph["qas"]:
                answer = qa["answers"][0]["answer_start"]
                # the sentence whose [start, end) break holds the answer's first character
                index = int(np.searchsorted(starts, answer, side="right")) - 1
                questions.append((lang, qa["id"], qa["question"], first + max(index, 0)))


def load_lareqa(dataset: str, languages: Optional[Iterable[str]] = None,
                max_ids: Optional[int] = None) -> LaReQA:
    """Load XQuAD-R or MLQA-R as question and candidate tables.

    ``max_ids`` keeps the first ``max_ids`` question ids in file order (the first language's
    order) and only the paragraphs that hold their answers, in every language: whole leading
    paragraphs, so the pools shrink in proportion (a smaller but complete benchmark).
    """
    questions, candidates = [], []
    for lang, path in fetch_lareqa(dataset, languages).items():
        try:
            _parse_language(path, lang, questions, candidates)
        except (KeyError, TypeError, IndexError) as error:
            raise DataError(f"{path}: not in LAReQA format (missing {error})") from None
    q = pd.DataFrame(questions, columns=["lang", "id", "text", "candidate"])
    c = pd.DataFrame(candidates, columns=["lang", "text", "paragraph", "context"])
    data = LaReQA(dataset, q, c)
    return subset_ids(data, q["id"].unique()[:max_ids]) if max_ids else data


def subset_ids(data: LaReQA, ids: Iterable[str]) -> LaReQA:
    """Keep the given question ids and the paragraphs that hold their answers; renumber."""
    q = data.questions[data.questions["id"].isin(set(ids))]
    paragraphs = set(data.candidates.loc[q["candidate"], "paragraph"])
    keep = data.candidates["paragraph"].isin(paragraphs).to_numpy()
    new_row = np.cumsum(keep) - 1
    c = data.candidates[keep].reset_index(drop=True)
    q = q.assign(candidate=new_row[q["candidate"].to_numpy()]).reset_index(drop=True)
    return LaReQA(data.name, q, c)


def build_training_pairs(data: LaReQA, hard_negatives: int = 1, seed: int = 0) -> pd.DataFrame:
    """Training pairs, one row per (question id, language).

    Columns ``id, lang, query, positive, negatives``: the question, its answer sentence, and
    up to ``hard_negatives`` other sentences of the same paragraph (drawn with ``seed``).
    Rows sharing ``id`` are translations of one another: that is what the batch samplers use.
    """
    rng = np.random.default_rng(seed)
    sentences_of = data.candidates.groupby("paragraph").groups  # paragraph -> candidate rows
    text = data.candidates["text"].to_numpy()
    paragraph = data.candidates["paragraph"].to_numpy()
    rows = []
    for lang, qid, question, cand in data.questions.itertuples(index=False):
        others = [i for i in sentences_of[paragraph[cand]] if i != cand]
        chosen = rng.choice(others, size=min(hard_negatives, len(others)), replace=False) if others else []
        rows.append((qid, lang, question, text[cand], [text[i] for i in chosen]))
    return pd.DataFrame(rows, columns=["id", "lang", "query", "positive", "negatives"])


def paragraph_clusters(data: LaReQA, language: str = "en") -> pd.Series:
    """Query id -> the paragraph its answer comes from: the clusters of ``hybridlib.stats``' resampling.

    The questions of one paragraph share its context and often the answer sentence, so they are
    not independent. Translations share an id, so one label per id serves every language: the
    paragraph key (``candidates.paragraph``) in ``language`` (English by default), or, for an id
    missing there, in the first language (sorted) that has it; paragraphs with the same text in
    that language are one cluster. Labels are ``<dataset>/<paragraph key>`` (e.g.
    ``xquad-r/en/0/0``), so the clusters of two datasets never share a label. Returns a Series
    indexed by id, in the order of first appearance, named ``paragraph``. On the default study's
    first 400 XQuAD-R ids there are 76 clusters.
    """
    q = data.questions
    rows = q["candidate"].to_numpy()
    rank = {lang: i for i, lang in enumerate([language, *sorted(set(q["lang"]) - {language})])}
    chosen = q.assign(_rank=q["lang"].map(rank).to_numpy(), paragraph=data.candidates["paragraph"].to_numpy()[rows],
                      context=data.candidates["context"].to_numpy()[rows])
    chosen = chosen.sort_values("_rank", kind="stable").drop_duplicates("id")
    label = data.name + "/" + chosen.groupby(["lang", "context"], sort=False)["paragraph"].transform("first")
    return pd.Series(label.to_numpy(), index=chosen["id"].to_numpy(), name="paragraph").reindex(q["id"].unique())


def sample_paragraphs(data: LaReQA, n_ids: int, seed: int = 0) -> LaReQA:
    """A seeded random sample of whole paragraphs, stratified by article, holding about ``n_ids`` ids.

    Every question of a drawn paragraph is kept, in every language, with all the paragraph's
    sentences (``subset_ids``), so the pools shrink in proportion and no question loses its
    neighbours. Stratified: each article's paragraphs are shuffled, the k-th of an article's n
    gets the position ``(k + u) / n`` (u uniform in [0, 1)), and paragraphs are taken in order
    of position until ``n_ids`` ids are reached, so every article gives about the same share of
    its paragraphs. Paragraphs are those of ``paragraph_clusters`` (keys ``<dataset>/<lang>/<article>/<p>``).
    """
    if n_ids < 1:
        raise DataError(f"sample of {n_ids} ids: need at least one")
    rng = np.random.default_rng(seed)
    clusters = paragraph_clusters(data)
    paragraphs = pd.DataFrame({"paragraph": clusters.unique()})
    paragraphs["article"] = paragraphs["paragraph"].str.rsplit("/", n=1).str[0]
    paragraphs["ids"] = paragraphs["paragraph"].map(clusters.value_counts())
    shuffled = paragraphs.sample(frac=1.0, random_state=rng).reset_index(drop=True)
    within = shuffled.groupby("article", sort=False).cumcount()
    size = shuffled.groupby("article", sort=False)["paragraph"].transform("size")
    shuffled["position"] = (within + rng.random(len(shuffled))) / size
    ordered = shuffled.sort_values("position", kind="stable")
    taken = ordered[ordered["ids"].cumsum().shift(fill_value=0) < n_ids]["paragraph"]
    return subset_ids(data, clusters.index[clusters.isin(set(taken))])
