"""Embeddings of texts and LAReQA pools, each distinct text encoded once per model through an on-disk cache.

A cached file is keyed by the model's weights (``model_fingerprint``), its name, prefix, max
length, pooling and precision, the kind of text and the sha256 of the text list, so a
fine-tuned model never reuses the embeddings of the model it started from.

>>> from hybridlib.data import load_lareqa
>>> from hybridlib.models import DualEncoder
>>> pools = encode_pools(DualEncoder("default"), load_lareqa("xquad-r", max_ids=30))  # doctest: +SKIP
>>> pools.queries.shape, pools.candidates.shape                                       # doctest: +SKIP
"""
from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import numpy as np
import pandas as pd

from ..data import LaReQA, cache_dir
from ..errors import HybridlibError
from ..io import atomic_path

CACHE_FORMAT = 1  # bump to invalidate every cached embedding


class EvaluationError(HybridlibError):
    """Evaluation inputs do not fit together (embedding shapes, missing files, unknown dataset)."""


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


def cache_key(encoder, fingerprint: str, texts: Sequence[str], kind: str, extra: Optional[dict] = None) -> str:
    """The file key of ``texts`` embedded by ``encoder`` as ``kind``: a hash of the weights'
    ``fingerprint``, the encoder's name, prefix, max length, pooling and precision, and the texts.
    ``extra``: more that the cached object depends on (e.g. a faiss index's type)."""
    prefixes = getattr(encoder, "prefixes", None) or {}
    description = {
        "format": CACHE_FORMAT, "model": fingerprint, "name": str(getattr(encoder, "name", "")),
        "kind": kind, "prefix": prefixes.get(kind),
        "max_length": getattr(encoder, "max_length", None), "pooling": getattr(encoder, "pooling", None),
        "precision": getattr(encoder, "precision", None),
        "texts": hashlib.sha256(json.dumps(list(texts), ensure_ascii=False).encode()).hexdigest(),
        **(extra or {}),
    }
    return hashlib.sha256(json.dumps(description, sort_keys=True).encode()).hexdigest()[:40]


def cache_folder(cache) -> Optional[Path]:
    """The folder of the embedding cache: True = ``cache_dir()/embeddings``, a path, or None (no cache)."""
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
    Identical texts get the same row (exactly tied scores).
    """
    texts = list(texts)
    codes, distinct = pd.factorize(pd.Series(texts, dtype=object))
    distinct = [str(t) for t in distinct]
    folder = cache_folder(cache)
    fingerprint = model_fingerprint(encoder) if folder is not None else None
    path = folder / f"{cache_key(encoder, fingerprint, distinct, kind)}.npy" if fingerprint else None
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
