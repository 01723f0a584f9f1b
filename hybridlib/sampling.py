"""Batch samplers over parallel training pairs: X-X-mono, X-Y, Hybrid, X-X and En-En.

A pairs table (see ``hybridlib.sources``) holds one row per (question id, language); rows
sharing ``id`` are translations. A batch is ``batch_size`` distinct question ids, each with a
query language and a passage language; it is given as row indices into the pairs table:
the query text comes from the query row, the positive and hard negatives from the passage row.

Strategies (docs/paper.md, "Batch sampling"; arXiv 2408.10536):
- ``x-x-mono``: every pair in ONE language L, L drawn uniformly from the training languages
  of the batch's dataset, per batch; only ids that exist in L;
- ``x-y``: every pair cross-lingual: per pair the query language is drawn uniformly among the
  languages having this id, the passage language uniformly among the remaining ones (ids
  with a single language are never used);
- ``hybrid``: an ``x-x-mono`` batch with probability ``alpha``, else an ``x-y`` batch;
- ``x-x`` (LAReQA): each pair monolingual, its language drawn uniformly per pair among the
  id's languages, so languages mix within a batch;
- ``en-en``: English pairs only.

Several training datasets (a list of pairs tables): each batch comes from one dataset, drawn
with probability proportional to its number of ids (DPR's ``MultiSetDataIterator`` idea)
among the datasets that can make the batch's kind: the kind is drawn first, and a dataset
with a single language (e.g. English-only) only joins monolingual batches.

Epochs: each pool of ids (the ids of one language for ``x-x-mono``/``en-en``, the ids with at
least two languages for ``x-y``, all ids for ``x-x``) is consumed in the order of a random
permutation, without replacement, until exhausted; then a new permutation starts. When a
permutation runs out in the middle of a batch, the batch continues with the next one, whose
ids already in the batch are moved to its end: an id never appears twice in a batch and each
id is used once per pass over its pool.

Random streams: the batches (kind, dataset, language, ids and the languages of each pair)
and the parallel-query rows are drawn from two independent generators, both derived from the
one ``seed`` (numpy ``SeedSequence(seed).spawn``), so that drawing parallel-query rows or not
leaves the batches unchanged: objective variants with one seed train on the same batches
(issue 14). Hard negatives are not drawn here: they are fixed when the pairs table is built
(``hybridlib.data.build_training_pairs``, a seed of its own), the same for every training seed.

Distributed training: every rank draws the same global batch (same seed) and keeps its
contiguous shard (``batch_size / world_size`` pairs), so a global batch has one kind and,
for ``x-x-mono``, one language.

    sampler = BatchSampler([pairs], "hybrid", batch_size=32, seed=0, alpha=0.5)
    batch = next(iter(sampler))  # batch.kind is "x-x-mono" or "x-y"
    queries = pairs["query"].to_numpy()[list(batch.query_rows)]
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Optional, Sequence

import numpy as np
import pandas as pd

from .constants import BATCH_STRATEGIES, HYBRID_KINDS
from .errors import HybridlibError

# Alias for the old hybridlib/train.py only; delete it once the hybridlib/train/ package replaces that file.
NO_ROW = -1  # in ``Batch.parallel_rows``: this id has no other language
# The sampler's independent random streams, in ``SeedSequence.spawn`` order: a stream added
# later goes at the end, so the existing ones keep their numbers.
RANDOM_STREAMS = ("batches", "parallel_queries")


class SamplingError(HybridlibError, ValueError):
    """A batch strategy cannot be applied to the given data or settings."""


@dataclass(frozen=True)
class Batch:
    """One (shard of a) batch: row indices into ``tables[dataset]``.

    ``kind``: the strategy that drew it (``x-x-mono``, ``x-y``, ``x-x`` or ``en-en``; a hybrid
    sampler gives the first two). ``parallel_rows`` (only when asked for): per pair a row of
    the same id in a language other than the query's, or ``NO_ROW``.
    """

    kind: str
    dataset: int
    query_rows: tuple
    passage_rows: tuple
    parallel_rows: Optional[tuple] = None

    def __len__(self) -> int:
        return len(self.query_rows)


class _IdPool:
    """Ids of one pool in random-permutation order, one pass after another (see module doc)."""

    def __init__(self, ids: np.ndarray):
        self.ids = ids
        self.order: Optional[np.ndarray] = None
        self.position = 0

    def take(self, count: int, rng: np.random.Generator) -> np.ndarray:
        taken: list = []
        while len(taken) < count:
            if self.order is None or self.position == len(self.order):
                order = rng.permutation(self.ids)
                in_batch = np.isin(order, taken)
                self.order = np.concatenate([order[~in_batch], order[in_batch]])
                self.position = 0
            step = min(count - len(taken), len(self.order) - self.position)
            taken.extend(self.order[self.position:self.position + step].tolist())
            self.position += step
        return np.asarray(taken, dtype=np.int64)

    def state_dict(self) -> dict:
        return {"order": None if self.order is None else self.order.tolist(), "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.order = None if state["order"] is None else np.asarray(state["order"], dtype=np.int64)
        self.position = state["position"]


class _PairIndex:
    """Which rows hold which (id, language) in one pairs table, restricted to ``languages``."""

    def __init__(self, table: pd.DataFrame, languages: Optional[Sequence[str]], name: str):
        missing = {"id", "lang"} - set(table.columns)
        if missing:
            raise SamplingError(f"{name}: the pairs table has no column {', '.join(sorted(missing))}")
        rows = np.flatnonzero(table["lang"].isin(languages).to_numpy()) if languages else np.arange(len(table))
        ids = table["id"].astype(str).to_numpy()[rows]
        langs = table["lang"].astype(str).to_numpy()[rows]
        self.languages = sorted(set(langs))
        self.id_names, id_codes = np.unique(ids, return_inverse=True)
        lang_codes = np.searchsorted(self.languages, langs)
        # row_of[id, lang]: the first row with this id and language, or NO_ROW
        self.row_of = np.full((len(self.id_names), len(self.languages)), NO_ROW, dtype=np.int64)
        cells, first = np.unique(id_codes * len(self.languages) + lang_codes, return_index=True)
        self.row_of.flat[cells] = rows[first]
        self.has = self.row_of != NO_ROW
        self.n_langs = self.has.sum(axis=1)

    def ids_in(self, lang: str) -> np.ndarray:
        return np.flatnonzero(self.has[:, self.languages.index(lang)])

    def cross_ids(self) -> np.ndarray:
        return np.flatnonzero(self.n_langs >= 2)

    def nth_language_of(self, ids: np.ndarray, nth: np.ndarray) -> np.ndarray:
        """The ``nth`` (0-based) language code among the languages each id has."""
        ranks = np.cumsum(self.has[ids], axis=1) - 1
        return np.argmax((ranks == nth[:, None]) & self.has[ids], axis=1)


class BatchSampler:
    """An endless, seeded stream of batches of one strategy over one or several pairs tables.

    Inputs: ``tables`` (a pairs table or a list of them), ``strategy`` (one of
    ``constants.BATCH_STRATEGIES``), ``batch_size`` (global, divisible by ``world_size``), ``seed``,
    ``languages`` (training languages; None = all in the data), ``alpha`` (hybrid only),
    ``rank`` / ``world_size`` (distributed shard), ``parallel_queries`` (also draw, per pair,
    a translation of the query for the parallel-query loss term).
    Raises ``SamplingError`` before any batch is drawn when the settings cannot work.
    """

    def __init__(self, tables, strategy: str, batch_size: int, seed: int,
                 languages: Optional[Sequence[str]] = None, alpha: float = 0.5,
                 rank: int = 0, world_size: int = 1, parallel_queries: bool = False):
        tables = [tables] if isinstance(tables, pd.DataFrame) else list(tables)
        _check_settings(strategy, batch_size, alpha, rank, world_size, len(tables))
        self.strategy, self.batch_size, self.alpha = strategy, batch_size, alpha
        self.rank, self.world_size, self.parallel_queries = rank, world_size, parallel_queries
        self.indexes = [_PairIndex(t, languages, f"training dataset {d}") for d, t in enumerate(tables)]
        _check_languages(self.indexes, languages)
        self.kinds = HYBRID_KINDS if strategy == "hybrid" else (strategy,)
        self.pools = [self._pools_of(d, index) for d, index in enumerate(self.indexes)]
        self.datasets_of = {kind: self._datasets_for(kind) for kind in self.kinds}
        self.rngs = _random_streams(seed)

    def _datasets_for(self, kind: str) -> tuple:
        """The datasets able to give ``kind`` batches and their size-proportional weights."""
        needs = {"x-y": "cross", "en-en": "mono:en"}.get(kind)
        eligible = [d for d, pools in enumerate(self.pools) if needs is None or needs in pools]
        if not eligible:
            reason = "at least two languages" if kind == "x-y" else "English pairs"
            raise SamplingError(f"{kind} batches need {reason}; no training dataset has them")
        sizes = np.array([len(self.indexes[d].id_names) for d in eligible], dtype=float)
        return eligible, sizes / sizes.sum()

    def _pools_of(self, dataset: int, index: _PairIndex) -> dict:
        """The id pools of one dataset for the strategy's kinds, checked against the batch size.

        A dataset with a single language gives no x-y batches (and one without English no
        en-en batches): it only joins the batches it can make.
        """
        name = f"training dataset {dataset}" if len(self.indexes) > 1 else "the training data"
        pools = {}
        if "x-x-mono" in self.kinds:
            pools.update({f"mono:{lang}": index.ids_in(lang) for lang in index.languages})
        if "x-y" in self.kinds and len(index.languages) >= 2:
            pools["cross"] = index.cross_ids()
        if "x-x" in self.kinds:
            pools["all"] = np.arange(len(index.id_names))
        if "en-en" in self.kinds and "en" in index.languages:
            pools["mono:en"] = index.ids_in("en")
        for pool, ids in pools.items():
            if len(ids) < self.batch_size:
                what = {"cross": "ids with at least two languages", "all": "ids"}.get(
                    pool, f"ids in language {pool.removeprefix('mono:')}")
                raise SamplingError(f"batch_size {self.batch_size} is larger than the {len(ids)} {what} "
                                    f"in {name} ({self.strategy} batches hold distinct ids)")
        return {pool: _IdPool(ids) for pool, ids in pools.items()}

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def next_batch(self) -> Batch:
        """The next global batch, cut to this rank's contiguous shard."""
        return self.shard(self.global_batch())

    def shard(self, batch: Batch) -> Batch:
        """This rank's contiguous part of a global batch (the batch itself without distribution)."""
        if self.world_size == 1:
            return batch
        size = self.batch_size // self.world_size
        cut = slice(self.rank * size, (self.rank + 1) * size)
        return Batch(batch.kind, batch.dataset, batch.query_rows[cut], batch.passage_rows[cut],
                     None if batch.parallel_rows is None else batch.parallel_rows[cut])

    def global_batch(self) -> Batch:
        """Draw the next whole batch (the same on every rank)."""
        rng = self.rngs["batches"]
        kind = self.strategy
        if kind == "hybrid":
            kind = "x-x-mono" if rng.random() < self.alpha else "x-y"
        eligible, weights = self.datasets_of[kind]
        dataset = eligible[int(rng.choice(len(eligible), p=weights))] if len(eligible) > 1 else eligible[0]
        index, pools = self.indexes[dataset], self.pools[dataset]
        if kind == "x-x-mono":
            lang = index.languages[int(rng.integers(len(index.languages)))]
            ids = pools[f"mono:{lang}"].take(self.batch_size, rng)
            query_langs = passage_langs = np.full(len(ids), index.languages.index(lang))
        elif kind == "en-en":
            ids = pools["mono:en"].take(self.batch_size, rng)
            query_langs = passage_langs = np.full(len(ids), index.languages.index("en"))
        elif kind == "x-x":
            ids = pools["all"].take(self.batch_size, rng)
            query_langs = passage_langs = index.nth_language_of(ids, rng.integers(index.n_langs[ids]))
        else:  # x-y
            ids = pools["cross"].take(self.batch_size, rng)
            query_nth = rng.integers(index.n_langs[ids])
            passage_nth = rng.integers(index.n_langs[ids] - 1)
            passage_nth += passage_nth >= query_nth  # skip the query's language
            query_langs = index.nth_language_of(ids, query_nth)
            passage_langs = index.nth_language_of(ids, passage_nth)
        parallel = self._parallel_rows(index, ids, query_langs) if self.parallel_queries else None
        return Batch(kind, dataset, tuple(index.row_of[ids, query_langs].tolist()),
                     tuple(index.row_of[ids, passage_langs].tolist()), parallel)

    def _parallel_rows(self, index: _PairIndex, ids: np.ndarray, query_langs: np.ndarray) -> tuple:
        """Per pair, a row of the same id in another language (uniformly), or NO_ROW."""
        others = np.maximum(index.n_langs[ids] - 1, 1)
        nth = self.rngs["parallel_queries"].integers(others)
        query_nth = np.cumsum(index.has[ids], axis=1)[np.arange(len(ids)), query_langs] - 1
        nth += nth >= query_nth
        langs = index.nth_language_of(ids, np.minimum(nth, index.n_langs[ids] - 1))
        rows = index.row_of[ids, langs]
        rows[index.n_langs[ids] < 2] = NO_ROW
        return tuple(rows.tolist())

    def state_dict(self) -> dict:
        """The sampler's position as plain Python values, for checkpoints: the state of every random
        stream (``rngs``, by name) and every id pool's permutation (``pools``)."""
        return {"rngs": {name: rng.bit_generator.state for name, rng in self.rngs.items()},
                "pools": [{name: pool.state_dict() for name, pool in pools.items()} for pools in self.pools]}

    def load_state_dict(self, state: dict) -> None:
        """Continue exactly where ``state_dict()`` was taken, in every random stream."""
        if "rngs" not in state:
            raise SamplingError("the sampler state predates the independent random streams (one generator for "
                                "batches and parallel-query rows); it cannot be continued: train the run again")
        for name, rng in self.rngs.items():
            rng.bit_generator.state = state["rngs"][name]
        for pools, saved in zip(self.pools, state["pools"]):
            for name, pool in pools.items():
                pool.load_state_dict(saved[name])


def _random_streams(seed: int) -> dict:
    """One independent numpy generator per name of ``RANDOM_STREAMS``, all derived from ``seed``.

    Children of ``numpy.random.SeedSequence(seed)`` (its ``spawn``): statistically independent
    streams, each a function of the seed and its position only (numpy, "Parallel random number
    generation").
    """
    children = np.random.SeedSequence(seed).spawn(len(RANDOM_STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(RANDOM_STREAMS, children)}


def _check_settings(strategy, batch_size, alpha, rank, world_size, n_tables) -> None:
    if strategy not in BATCH_STRATEGIES:
        raise SamplingError(f"unknown batch strategy {strategy!r} (expected one of {', '.join(BATCH_STRATEGIES)})")
    if not 0.0 <= alpha <= 1.0:
        raise SamplingError(f"alpha must be in [0, 1], got {alpha}")
    if batch_size < 2:
        raise SamplingError(f"batch_size must be at least 2 (in-batch negatives), got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise SamplingError(f"rank {rank} is not in 0..{world_size - 1}")
    if batch_size % world_size:
        raise SamplingError(f"batch_size {batch_size} does not divide by the {world_size} processes")
    if n_tables == 0:
        raise SamplingError("no training data (an empty list of pairs tables)")


def _check_languages(indexes: list, languages: Optional[Sequence[str]]) -> None:
    present = set().union(*(index.languages for index in indexes))
    if not present:
        raise SamplingError("no training pairs" + (f" in {', '.join(languages)}" if languages else ""))
    missing = sorted(set(languages or ()) - present)
    if missing:
        raise SamplingError(f"training languages {', '.join(missing)} are absent from the training data "
                            f"(it has {', '.join(sorted(present))})")
