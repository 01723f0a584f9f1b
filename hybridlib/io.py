"""Atomic writes: a killed run never leaves half a file (or half a model folder) where a finished one
is expected.

Every writer goes through ``atomic_path``: the content is written to a hidden temporary file
beside the target (``.<name>.tmp-<pid>``) and renamed onto it only when complete.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
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


@contextmanager
def atomic_dir(path: Path, tag: str, keep_existing: bool = False) -> Iterator[Path]:
    """Yield a new empty folder beside ``path`` (``.<name>.<tag>-<pid>-<random>``, mode 755)
    that replaces ``path`` when the block succeeds; it is removed in every case.

    ``keep_existing``: if ``path`` exists by then (another process finished first), keep it and
    discard the new folder. The previous ``path`` is deleted only after the swap, so a reader
    never meets a half-written folder (only, for an instant, no folder).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    building = Path(tempfile.mkdtemp(prefix=f".{path.name}.{tag}-{os.getpid()}-", dir=path.parent))
    building.chmod(0o755)  # mkdtemp makes it private; the cache and run folders may be shared
    try:
        yield building
        if not (keep_existing and path.exists()):
            _replace_dir(building, path)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _replace_dir(built: Path, target: Path) -> None:
    """Move a completed folder onto ``target``; an older ``target`` is removed after the swap."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
