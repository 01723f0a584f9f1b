"""Atomic file writes: a killed run never leaves half a file where a finished one is expected.

Every writer goes through ``atomic_path``: the content is written to a hidden temporary file
beside the target (``.<name>.tmp-<pid>``) and renamed onto it only when complete.
"""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Union

import pandas as pd

PathLike = Union[str, Path]


@contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it replaces ``path`` if the block succeeds and is
    removed if it fails. The parent folder is created."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_text(text: str, path: PathLike) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(value, path: PathLike) -> Path:
    """Write ``value`` as indented JSON (non-JSON values as strings) atomically."""
    return write_text(json.dumps(value, indent=2, default=str) + "\n", path)


def write_table(frame: pd.DataFrame, path: PathLike) -> Path:
    """Write a table without its index atomically: ``.parquet``, ``.csv`` or ``.csv.gz``."""
    path = Path(path)
    with atomic_path(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, compression="gzip" if path.suffix == ".gz" else None)
    return path
