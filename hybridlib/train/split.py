"""The training data of a run: its pairs tables, the held-out validation ids, fixed validation batches.

``validation_ids`` question ids (every language of each) are held out of training with a fixed
seed, so every strategy and seed of a study trains on the same ids and is validated on the same
held-out ones (``hybridlib.train.validation``).

    tables, held_out = split_validation(load_training_data(params), params.validation_ids)
    batches = validation_batches(held_out, "hybrid", params.batch_size)  # {"x-x-mono": [...], "x-y": [...]}
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from ..config import StudyParams
from ..constants import HYBRID_KINDS
from ..errors import HybridlibError
from ..sampling import BatchSampler

VALIDATION_SEED = 0  # the held-out ids and validation batches are the same for every run


class TrainingError(HybridlibError):
    """A training run cannot start or continue (bad strategy, unusable data, foreign checkpoint)."""


def load_training_data(params: StudyParams) -> list:
    """The pairs table of each training source (``params.train_sources``, ``hybridlib.sources.load_pairs``)."""
    from ..sources import load_pairs

    return [load_pairs(source, languages=params.train_languages, max_ids=params.train_max_ids,
                       hard_negatives=params.hard_negatives) for source in params.train_sources]


def split_validation(tables: list, n_ids: int) -> tuple[list, Optional[pd.DataFrame]]:
    """Hold out about ``n_ids`` question ids (every language of each) for validation.

    Ids are split across datasets in proportion to their sizes and drawn with
    ``VALIDATION_SEED``. Returns the training tables and one validation table (ids prefixed
    with the dataset number, so they stay distinct), or None when ``n_ids`` is 0.
    Raises ``TrainingError`` when a dataset would keep no training id.
    """
    if n_ids == 0:
        return tables, None
    rng = np.random.default_rng(VALIDATION_SEED)
    sizes = np.array([t["id"].nunique() for t in tables])
    shares = np.floor(n_ids * sizes / sizes.sum()).astype(int)
    shares[np.argsort(-sizes)[: n_ids - shares.sum()]] += 1  # largest datasets take the remainder
    train_tables, held_out = [], []
    for number, (table, share) in enumerate(zip(tables, shares)):
        ids = np.unique(table["id"].astype(str))
        if share >= len(ids):
            raise TrainingError(f"validation_ids {n_ids} leaves no training ids in training dataset {number} "
                                f"({len(ids)} ids); lower validation_ids")
        chosen = set(rng.choice(ids, size=share, replace=False).tolist())
        is_val = table["id"].astype(str).isin(chosen)
        train_tables.append(table[~is_val].reset_index(drop=True))
        held_out.append(table[is_val].assign(id=lambda t, n=number: f"{n}:" + t["id"].astype(str)))
    return train_tables, pd.concat(held_out, ignore_index=True)


def _pool_sizes(table: pd.DataFrame, kind: str) -> dict:
    """Number of held-out ids each validation sampler of ``kind`` can draw from."""
    langs_per_id = table.groupby("id")["lang"].nunique()
    if kind == "x-x-mono":
        return {lang: int((table["lang"] == lang).sum()) for lang in sorted(set(table["lang"]))}
    if kind == "x-y":
        return {None: int((langs_per_id >= 2).sum())}
    if kind == "en-en":
        return {"en": int((table["lang"] == "en").sum())}
    return {None: len(langs_per_id)}


def validation_batches(table: pd.DataFrame, strategy: str, batch_size: int) -> dict:
    """Fixed validation batches of the held-out ``table`` per kind: ``{kind: [Batch, ...]}``.

    Kinds: the strategy's, or ``x-x-mono`` and ``x-y`` for hybrid. Each pool is covered about
    once: for ``x-x-mono`` every language with enough held-out ids gets ceil(ids / size)
    batches of that language. The validation batch size is ``batch_size`` or, if smaller, the
    smallest pool of at least 2 ids (so every language can be validated).
    Raises ``TrainingError`` when no pool has 2 ids.
    """
    kinds = HYBRID_KINDS if strategy == "hybrid" else (strategy,)
    pools = {kind: _pool_sizes(table, kind) for kind in kinds}
    usable = [n for sizes in pools.values() for n in sizes.values() if n >= 2]
    if not usable:
        raise TrainingError(f"validation_ids is too small to validate {strategy} batches (need at least 2 "
                            f"held-out ids per pool); raise validation_ids or set it to 0")
    size = min(batch_size, min(usable))
    batches = {}
    for kind, sizes in pools.items():
        batches[kind] = []
        for lang, n in sizes.items():
            if n < size:
                continue
            sampler = BatchSampler(table, kind, size, seed=VALIDATION_SEED, languages=[lang] if lang else None)
            batches[kind] += [sampler.next_batch() for _ in range(math.ceil(n / size))]
    return {kind: kind_batches for kind, kind_batches in batches.items() if kind_batches}
