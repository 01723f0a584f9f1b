"""Shared test fixtures: the real default encoder and a tiny random encoder for fast tests.

- ``default_encoder`` (session): ``DualEncoder("default")`` on the CPU in fp32, the embedded
  multilingual-e5-small (built into the cache on first use, ~10 s; loading ~5 s). Read-only:
  do not train it (use ``tiny_encoder`` for that). Tests using it should be marked ``slow``.
- ``tiny_model_dir`` (session): a folder with a random 2-layer BERT (hidden 32) and the default
  tokenizer, saved with ``save_pretrained``: loads with ``AutoModel`` / ``DualEncoder`` in a
  second. Never write into it (copy it first).
- ``tiny_encoder`` (function): a fresh ``DualEncoder`` on ``tiny_model_dir`` (fp32, CPU) whose
  weights a test may change (training tests): its model is a private copy.
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


@pytest.fixture(scope="session")
def default_encoder():
    """The embedded default encoder (multilingual-e5-small, dequantized), CPU, fp32. Read-only."""
    from hybridlib.models import DualEncoder

    return DualEncoder("default", device="cpu", precision="fp32")


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
