"""Training-pair sources: every source gives one table of parallel pairs.

The pairs table has columns ``id, lang, query, positive, negatives`` (``negatives`` a list of
strings); rows sharing ``id`` are translations of one another. Sources:
- ``xquad-r`` / ``mlqa-r``: LAReQA, hard negatives = other sentences of the paragraph;
- a path ending in ``.jsonl``: users' own data, one JSON object per line with those keys.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import pandas as pd

from .data import DataError, build_training_pairs, load_lareqa

PAIR_COLUMNS = ["id", "lang", "query", "positive", "negatives"]


def load_jsonl_pairs(path, hard_negatives: int = 1) -> pd.DataFrame:
    """Read a JSONL file of ``id, lang, query, positive, negatives`` rows (negatives optional)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such training file")
    rows = []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                rows.append((str(row["id"]), row["lang"], row["query"], row["positive"],
                             list(row.get("negatives", []))[:hard_negatives]))
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise DataError(f"{path}, line {number}: not a pairs row with keys "
                                f"{', '.join(PAIR_COLUMNS)} ({error})") from None
    if not rows:
        raise DataError(f"{path}: no training pairs in the file")
    return pd.DataFrame(rows, columns=PAIR_COLUMNS)


def load_pairs(source: str, languages: Optional[Sequence[str]] = None, max_ids: Optional[int] = None,
               hard_negatives: int = 1, seed: int = 0) -> pd.DataFrame:
    """The training pairs of one source, restricted to ``languages`` and the first ``max_ids`` ids."""
    if source.endswith(".jsonl"):
        pairs = load_jsonl_pairs(source, hard_negatives)
    elif source in ("xquad-r", "mlqa-r"):
        pairs = build_training_pairs(load_lareqa(source, languages), hard_negatives, seed)
    else:
        raise DataError(f"unknown training source {source!r}")
    if languages:
        pairs = pairs[pairs["lang"].isin(languages)]
        missing = sorted(set(languages) - set(pairs["lang"]))
        if missing:
            raise DataError(f"{source}: no training pairs in {', '.join(missing)}")
    if max_ids:
        keep = sorted(pairs["id"].unique())[:max_ids]
        pairs = pairs[pairs["id"].isin(keep)]
    return pairs.reset_index(drop=True)
