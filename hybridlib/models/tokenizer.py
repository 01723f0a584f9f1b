"""Tokenizers loaded once: in memory per process, and across processes from a pickle in the cache.

``AutoTokenizer`` takes 2.5-9 s to load a multilingual tokenizer: transformers parses its 17 MB
``tokenizer.json`` in Python and rebuilds it. A study loads the same tokenizer in every notebook
kernel it starts (a fresh process per training run) and again for every model it saves, and the
tests start dozens of processes. The loaded object unpickles in ~0.6 s and tokenizes exactly as a
fresh load (``tests/test_models.py`` checks both, and that it saves the same files).

A folder's pickle is named by the SHA-256 of its tokenizer files (every file but the weights and
our own settings) and of the versions of transformers and tokenizers: a changed file or an upgrade
loads afresh, and a pickle that cannot be read is replaced. The pickles live in
``hybridlib.data.cache_dir()/tokenizers`` beside the built default model: like the weights there,
the cache is trusted code. Hub names are loaded by transformers itself (it caches the files).
"""
from __future__ import annotations

import hashlib
import logging
import pickle
from collections import OrderedDict
from pathlib import Path
from typing import Optional

from ..io import atomic_path
from .default_model import PROVENANCE_FILE
from .folders import ENCODER_SETTINGS_FILE, WEIGHT_FILES, unreachable

logger = logging.getLogger(__name__)

TOKENIZER_CACHE_SIZE = 2  # distinct tokenizers kept per process (an XLM-R one holds ~0.4 GB)

_TOKENIZERS: OrderedDict = OrderedDict()


def tokenizer_key(name_or_path: str) -> str:
    """A hub name itself; for a folder, a SHA-256 of every file but the weights and our own
    settings, so that the saved runs of a study (same tokenizer, other folders) share one."""
    folder = Path(name_or_path)
    if not folder.is_dir():
        return name_or_path
    digest = hashlib.sha256()
    skip = {*WEIGHT_FILES, ENCODER_SETTINGS_FILE, PROVENANCE_FILE}
    for file in sorted(folder.iterdir()):
        if file.is_file() and file.name not in skip and not file.name.startswith("."):
            digest.update(file.name.encode() + b"\0" + file.read_bytes() + b"\0")
    return "sha256:" + digest.hexdigest()


def pickle_path(key: str) -> Path:
    """The cache file of a folder's tokenizer (``key``: its ``tokenizer_key``)."""
    import tokenizers
    import transformers

    from ..data import cache_dir

    versions = f"transformers {transformers.__version__}, tokenizers {tokenizers.__version__}"
    name = hashlib.sha256(f"{key}\0{versions}".encode()).hexdigest()[:32]
    return cache_dir() / "tokenizers" / f"{name}.pkl"


def _from_pickle(path: Path):
    try:
        with open(path, "rb") as handle:
            return pickle.load(handle)
    except FileNotFoundError:
        return None
    except Exception as error:  # a truncated or foreign file: load afresh and replace it
        logger.warning("tokenizer cache %s unreadable (%s): loading the tokenizer again", path, error)
        return None


def _from_pretrained(name_or_path: str, label: str):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise unreachable(name_or_path, label, error) from None


def _load(name_or_path: str, key: str, label: str):
    if not key.startswith("sha256:"):
        return _from_pretrained(name_or_path, label)
    path = pickle_path(key)
    tokenizer = _from_pickle(path)
    if tokenizer is None:
        tokenizer = _from_pretrained(name_or_path, label)
        try:
            with atomic_path(path) as tmp:
                tmp.write_bytes(pickle.dumps(tokenizer, protocol=pickle.HIGHEST_PROTOCOL))
        except OSError as error:  # a read-only cache: only slower next time
            logger.warning("could not cache the tokenizer in %s: %s", path, error)
    return tokenizer


def load_tokenizer(name_or_path: str, label: Optional[str] = None):
    """``AutoTokenizer.from_pretrained(name_or_path)``, once per process and, for a folder, from
    the cache's pickle once it has been loaded in any process (see the module docstring).

    The object is shared: do not change its attributes, and do not call it from two threads at once.
    ``ModelError`` if it cannot be loaded (``label``: the name the user wrote, for the message).
    """
    key = tokenizer_key(name_or_path)
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = _load(name_or_path, key, label or name_or_path)
        while len(_TOKENIZERS) > TOKENIZER_CACHE_SIZE:
            _TOKENIZERS.popitem(last=False)
    _TOKENIZERS.move_to_end(key)
    return _TOKENIZERS[key]
