"""Shared test fixtures: the real default encoder and a tiny random encoder for fast tests.

- ``default_encoder`` (session): ``DualEncoder("default")`` on the CPU in fp32, the embedded
  multilingual-e5-small (built into the cache on first use, ~10 s; loading ~5 s). Read-only:
  do not train it (use ``tiny_encoder`` for that). Tests using it should be marked ``slow``.
- ``default_encoder_memo`` (session): ``default_encoder`` behind a proxy that keeps what ``encode``
  returned per (texts, kind), so slow tests that embed the same texts (e.g. the first 12 XQuAD-R
  ids) share one encoding; its ``fingerprint`` is computed once (hashing the weights takes ~1 s).
- ``tiny_model_dir`` (session): a folder with a random 2-layer BERT (hidden 32) and the default
  tokenizer, saved with ``save_pretrained``: loads with ``AutoModel`` / ``DualEncoder`` in a
  second. Never write into it (copy it first).
- ``tiny_encoder`` (function): a fresh ``DualEncoder`` on ``tiny_model_dir`` (fp32, CPU) whose
  weights a test may change (training tests): its model is a private copy.
- ``one_torch_thread`` (module): torch on one thread while a module runs (``pytestmark =
  pytest.mark.usefixtures("one_torch_thread")``): tiny matrices gain nothing from more threads,
  and lose a lot on a busy machine.
- ``trained_tiny_model`` (session): ``(params, result)`` of one short ``train`` run on
  ``tiny_model_dir`` (x-y batches, 2 steps, no validation), for tests that check what a finished
  run leaves rather than how it trains. Read-only: copy ``result.model_dir.parent`` first.
"""
from __future__ import annotations

import copy
import os
import shutil
from pathlib import Path

import pytest
import torch

# The benchmark files come from the local mirror (CI: ../shared/data beside the checkout);
# the Makefile and .ci/run export it, this keeps a bare `pytest` working too.
_SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
if "HYBRIDLIB_MIRROR" not in os.environ and _SHARED_DATA.is_dir():
    os.environ["HYBRIDLIB_MIRROR"] = str(_SHARED_DATA)

TINY_HIDDEN = 32
TINY_LAYERS = 2


@pytest.fixture(scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def default_encoder():
    """The embedded default encoder (multilingual-e5-small, dequantized), CPU, fp32. Read-only."""
    from hybridlib.models import DualEncoder

    return DualEncoder("default", device="cpu", precision="fp32")


class _RememberingEncoder:
    """An encoder whose ``encode`` results are kept per (texts, kind); every other attribute is the
    wrapped encoder's. The tests that use it check what is done with embeddings, not how a
    batch size changes their last bits, so one encoding serves every batch size."""

    def __init__(self, encoder):
        from hybridlib.evaluate import model_fingerprint

        self._encoder, self._kept = encoder, {}
        self.fingerprint = model_fingerprint(encoder)

    def __getattr__(self, name):
        return getattr(self._encoder, name)

    def encode(self, texts, kind, batch_size=64, progress=True):
        key = (tuple(texts), kind)
        if key not in self._kept:
            self._kept[key] = self._encoder.encode(list(texts), kind, batch_size=batch_size, progress=False)
        return self._kept[key].copy()


@pytest.fixture(scope="session")
def default_encoder_memo(default_encoder):
    """``default_encoder`` (read-only) with its encodings kept for the session (``_RememberingEncoder``)."""
    return _RememberingEncoder(default_encoder)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder of a random 2-layer BERT (hidden 32, seed 0) with the default tokenizer files."""
    from transformers import BertConfig, BertModel

    from hybridlib.models import build_default_model

    default_dir = build_default_model()
    folder = tmp_path_factory.mktemp("tiny-bert")
    config = BertConfig(vocab_size=250037, hidden_size=TINY_HIDDEN, num_hidden_layers=TINY_LAYERS,
                        num_attention_heads=4, intermediate_size=2 * TINY_HIDDEN,
                        max_position_embeddings=512, pad_token_id=1)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = BertModel(config, add_pooling_layer=False)
    model.save_pretrained(folder)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copyfile(default_dir / name, folder / name)
    return folder


@pytest.fixture(scope="session")
def _tiny_encoder_template(tiny_model_dir):
    from hybridlib.models import DualEncoder

    return DualEncoder(str(tiny_model_dir), device="cpu", precision="fp32")


@pytest.fixture
def tiny_encoder(_tiny_encoder_template):
    """A ``DualEncoder`` on ``tiny_model_dir`` (CPU, fp32, mean pooling) with its own weights."""
    encoder = copy.copy(_tiny_encoder_template)
    encoder.prefixes = dict(encoder.prefixes)
    encoder.model = copy.deepcopy(_tiny_encoder_template.model)
    return encoder


@pytest.fixture(scope="session")
def trained_tiny_model(tiny_model_dir, tmp_path_factory):
    """``(params, result)`` of ``train(params, "x-y", 0, folder)`` on the tiny model: batches of 4
    MLQA-R pairs (en, de, es; 80 ids) with one hard negative, max_length 32, 2 steps at lr 1e-3,
    frozen word embeddings, no validation; fp32 on the CPU. Read-only."""
    from hybridlib.config import params_from_dict
    from hybridlib.train import train

    params = params_from_dict(dict(
        model=str(tiny_model_dir), train_dataset="mlqa-r", train_languages=["en", "de", "es"], train_max_ids=80,
        validation_ids=0, batch_size=4, hard_negatives=1, max_length=32, learning_rate=1e-3, max_steps=2,
        device="cpu", precision="fp32", strategies=["x-y"]))
    return params, train(params, "x-y", 0, tmp_path_factory.mktemp("trained-tiny"), progress=False)
