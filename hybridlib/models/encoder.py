"""``DualEncoder``: one transformer with shared weights that embeds queries and passages.

``DualEncoder`` loads a model named as ``folders.resolve_model`` resolves it, with its tokenizer
from ``tokenizer.load_tokenizer``, and offers ``encode`` for evaluation (numpy, no gradients,
length-sorted batches), ``embed`` for training (differentiable) and ``save`` to a folder that
plain transformers can load too, with the encoder's settings beside the weights.

>>> encoder = DualEncoder("default")
>>> encoder.encode(["how tall is the eiffel tower"], kind="query").shape
(1, 384)
"""
from __future__ import annotations

import contextlib
import copy
import functools
import json
import logging
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ModelError
from ..io import atomic_dir, write_json
from .default_model import PROVENANCE_FILE
from .device import limit_threads_to_cpus, precision_warning, resolve_device, resolve_precision
from .dropout import use_fast_dropout
from .folders import ENCODER_SETTINGS_FILE, resolve_model, unreachable
from .packed import packed_pooled, supports_packing
from .tokenizer import load_tokenizer

logger = logging.getLogger(__name__)

ENCODER_DEFAULTS = {"pooling": "mean", "query_prefix": "query: ", "passage_prefix": "passage: ", "max_length": 128}
CPU_TOKENS_PER_THREAD = 1024  # encode's batch size on the CPU, in padded tokens per thread

Kind = Literal["query", "passage"]


def _load_model(name_or_path: str, label: str) -> torch.nn.Module:
    """AutoModel in fp32, without BERT's pooler; ModelError when it cannot be loaded."""
    from transformers import AutoModel

    try:
        try:  # BERT-like models: the pooler is unused by both poolings, so do not create it
            model = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        raise unreachable(name_or_path, label, error) from None
    return model.float()


def _saved_settings(folder: str) -> dict:
    """Settings saved by ``DualEncoder.save`` (or the default model's label), else ``{}``."""
    settings, provenance = Path(folder) / ENCODER_SETTINGS_FILE, Path(folder) / PROVENANCE_FILE
    if settings.is_file():
        return json.loads(settings.read_text(encoding="utf-8"))
    if provenance.is_file():
        return {"name": json.loads(provenance.read_text(encoding="utf-8"))["label"]}
    return {}


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)


def _trimmed_rows(batch: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """Rows of a tokenized batch, trimmed to their longest text."""
    width = int(batch["attention_mask"][rows].sum(dim=1).max())
    return {key: value[rows, :width] for key, value in batch.items()}


# -- the encoder ------------------------------------------------------------------------------

class DualEncoder:
    """One transformer that embeds queries and passages into one space (shared weights).

    Queries and passages differ only by their prefix (``"query: "`` / ``"passage: "`` for E5).
    Embeddings are pooled (``mean`` over non-padding tokens, or the first token for ``cls``)
    and L2-normalised, so a dot product is the cosine similarity.

    Arguments left at ``None`` take the values saved with the model by ``save`` (a fine-tuned
    folder restores its own settings), else ``mean`` / ``"query: "`` / ``"passage: "`` / 128.
    ``device``: ``auto``, ``cpu``, ``cuda[:N]``, ``mps``. ``precision``: ``auto``, ``fp32``,
    ``bf16``, ``fp16``, the autocast dtype of ``encode`` (see ``resolve_precision``); a
    precision the CPU emulates is logged once as a warning (``precision_warning``).

    >>> encoder = DualEncoder("default", device="cpu", precision="fp32")
    >>> q = encoder.encode(["where is Paris?"], kind="query")
    >>> p = encoder.encode(["Paris is in France.", "Bonn is in Germany."], kind="passage")
    >>> int((p @ q.T).argmax())
    0
    """

    def __init__(self, name_or_path: str = "default", pooling: Optional[str] = None,
                 query_prefix: Optional[str] = None, passage_prefix: Optional[str] = None,
                 max_length: Optional[int] = None, device: str = "auto", precision: str = "auto"):
        path = resolve_model(str(name_or_path))
        settings = {**ENCODER_DEFAULTS, "name": str(name_or_path), **_saved_settings(path)}
        given = {"pooling": pooling, "query_prefix": query_prefix, "passage_prefix": passage_prefix,
                 "max_length": max_length}
        settings.update({key: value for key, value in given.items() if value is not None})
        if settings["pooling"] not in ("mean", "cls"):
            raise ModelError(f"pooling {settings['pooling']!r}: unknown (use mean or cls)")
        self.name, self.pooling, self.max_length = settings["name"], settings["pooling"], int(settings["max_length"])
        self.prefixes = {"query": settings["query_prefix"], "passage": settings["passage_prefix"]}
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        warning = precision_warning(self.precision, self.device)
        if warning:
            _warn_once(warning)
        limit_threads_to_cpus()
        self.tokenizer = load_tokenizer(path, str(name_or_path))
        self.model = use_fast_dropout(_load_model(path, str(name_or_path))).to(self.device).eval()

    def __setstate__(self, state: dict) -> None:
        # unpickled in another process (torch.multiprocessing spawn): register its attention function there
        self.__dict__.update(state)
        use_fast_dropout(self.model)

    @classmethod
    def from_params(cls, params, name_or_path: Optional[str] = None) -> "DualEncoder":
        """The encoder a study's ``StudyParams`` describe; ``name_or_path`` overrides ``params.model``."""
        return cls(name_or_path or params.model, pooling=params.pooling, query_prefix=params.query_prefix,
                   passage_prefix=params.passage_prefix, max_length=params.max_length,
                   device=params.device, precision=params.precision)

    @property
    def dim(self) -> int:
        """Embedding size."""
        return self.model.config.hidden_size

    def __repr__(self) -> str:
        return (f"DualEncoder({self.name!r}, pooling={self.pooling!r}, max_length={self.max_length}, "
                f"device={str(self.device)!r}, precision={self.precision!r})")

    # -- precision
    def autocast(self):
        """The autocast context of ``self.precision`` (a no-op for fp32)."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    # -- training: differentiable embeddings
    def _prefixed(self, texts: Iterable[str], kind: Kind) -> list[str]:
        if kind not in self.prefixes:
            raise ValueError(f"kind must be 'query' or 'passage', not {kind!r}")
        prefix = self.prefixes[kind]
        return [prefix + text for text in texts]

    def tokenize(self, texts: Sequence[str], kind: Kind) -> dict[str, torch.Tensor]:
        """Prefix, tokenize and pad ``texts`` into ``input_ids`` / ``attention_mask`` on the device."""
        batch = self.tokenizer(self._prefixed(texts, kind), padding=True, truncation=True,
                               max_length=self.max_length, return_tensors="pt")
        return {key: batch[key].to(self.device) for key in ("input_ids", "attention_mask")}

    def embed_tokens(self, batch: dict[str, torch.Tensor], model: Optional[torch.nn.Module] = None) -> torch.Tensor:
        """Pooled, L2-normalised float32 embeddings of a tokenized batch (differentiable).

        Rows of a ``tokenize`` output may be sliced first (GradCache embeds chunk by chunk).
        ``model``: the module to run, ``self.model`` by default (``encode`` passes a bf16 copy).
        """
        model = self.model if model is None else model
        mask = batch["attention_mask"]
        hidden = model(input_ids=batch["input_ids"], attention_mask=mask).last_hidden_state.float()
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return torch.nn.functional.normalize(pooled, dim=-1)

    def embed_groups(self, batch: dict[str, torch.Tensor], groups: list) -> torch.Tensor:
        """``embed_tokens(batch)`` computed group by group of rows (tensors of row indices covering
        every row once), each padded only to its own longest text; rows in ``batch`` order.

        A BERT-family model runs on the real tokens only (``packed_pooled``: the groups are padded
        for attention alone); any other model runs ``embed_tokens`` on each group.
        """
        if supports_packing(self.model):
            pooled = packed_pooled(self.model, batch, groups, self.pooling)
            return torch.nn.functional.normalize(pooled, dim=-1)
        embedded = torch.cat([self.embed_tokens(_trimmed_rows(batch, rows)) for rows in groups])
        return embedded[torch.argsort(torch.cat(list(groups)))]

    def embed(self, texts: Sequence[str], kind: Kind) -> torch.Tensor:
        """Differentiable embeddings for training: ``embed_tokens(tokenize(texts, kind))``."""
        return self.embed_tokens(self.tokenize(texts, kind))

    # -- evaluation: fast, no gradients
    def _batch_tokens(self, max_batch_tokens: Union[int, str, None]) -> Optional[int]:
        if max_batch_tokens != "auto":
            return max_batch_tokens
        # On the CPU, batches of ~1k tokens per thread keep activations in cache: measured
        # 1.1-1.3x faster than batches of 64 texts (benchmarks/bench_encode.py). GPUs like big batches.
        return CPU_TOKENS_PER_THREAD * torch.get_num_threads() if self.device.type == "cpu" else None

    @staticmethod
    def _batches(lengths: np.ndarray, batch_size: int, max_tokens: Optional[int]) -> Iterable[np.ndarray]:
        """Row indices by decreasing length, in batches of at most ``batch_size`` texts and
        ``max_tokens`` padded tokens (always at least one text)."""
        order = np.argsort(-lengths, kind="stable")
        start = 0
        while start < len(order):
            size = batch_size if max_tokens is None else max(1, min(batch_size, max_tokens // lengths[order[start]]))
            yield order[start:start + size]
            start += size

    def _padded(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        width = max(len(row) for row in ids)
        input_ids = np.full((len(ids), width), self.tokenizer.pad_token_id, dtype=np.int64)
        mask = np.zeros((len(ids), width), dtype=np.int64)
        for i, row in enumerate(ids):
            input_ids[i, :len(row)] = row
            mask[i, :len(row)] = 1
        return {"input_ids": torch.from_numpy(input_ids).to(self.device),
                "attention_mask": torch.from_numpy(mask).to(self.device)}

    def encode(self, texts: Sequence[str], kind: Kind, batch_size: int = 64, progress: bool = True,
               max_batch_tokens: Union[int, str, None] = "auto") -> np.ndarray:
        """Embed ``texts`` for retrieval: float32 array (len(texts), dim), L2-normalised, input order.

        Texts are tokenized once, sorted by token count and run in batches of similar length
        (little padding) under ``torch.inference_mode`` and the encoder's autocast precision
        (in bf16/fp16 on a copy with its linear weights cast once: ``_inference_model``).
        A batch holds at most ``batch_size`` texts and ``max_batch_tokens`` padded tokens
        (``auto``: 1024 per thread on the CPU, no limit on GPUs; ``None``: no limit).
        """
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(self._prefixed(texts, kind), truncation=True, max_length=self.max_length)["input_ids"]
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        was_training = self.model.training
        self.model.eval()
        try:
            model = self._inference_model()
            with torch.inference_mode(), self.autocast(), \
                    tqdm(total=len(texts), desc=f"encode {kind} texts", unit="text", disable=not progress) as bar:
                for rows in self._batches(lengths, batch_size, self._batch_tokens(max_batch_tokens)):
                    out[rows] = self.embed_tokens(self._padded([ids[i] for i in rows]), model).cpu().numpy()
                    bar.update(len(rows))
        finally:
            self.model.train(was_training)
        return out

    def _inference_model(self) -> torch.nn.Module:
        """The module ``encode`` runs: the model itself in fp32; in bf16/fp16, a copy whose
        ``nn.Linear`` weights are cast once (the other weights are shared, not copied).

        Autocast casts every linear weight again in every batch; casting them once gives the
        same embeddings 1.1x faster (``benchmarks/bench_encode.py``). Embeddings, LayerNorms
        and the residual stream stay fp32 under autocast. A copy of the whole model in bf16
        was 1.1x faster still on all of XQuAD-R, but doubled the shift of its multilingual mAP
        against fp32 (0.0010 instead of 0.0005), so it is not used.
        """
        if self.precision == "fp32":
            return self.model
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        linear = {id(t) for module in self.model.modules() if isinstance(module, torch.nn.Linear)
                  for t in module.parameters()}
        shared = {id(t): t for t in self.model.parameters() if id(t) not in linear}
        clone = copy.deepcopy(self.model, memo=shared)
        for module in clone.modules():
            if isinstance(module, torch.nn.Linear):
                module.to(dtype)
        return clone

    # -- persistence
    def settings(self) -> dict:
        """The settings ``save`` writes next to the weights (restored by ``DualEncoder(path)``)."""
        return {"name": self.name, "pooling": self.pooling, "query_prefix": self.prefixes["query"],
                "passage_prefix": self.prefixes["passage"], "max_length": self.max_length}

    def save(self, path: Union[str, Path]) -> Path:
        """Save model, tokenizer and ``hybridlib_encoder.json`` to ``path`` (replaced atomically).

        The folder loads with ``DualEncoder(path)`` (same settings) and with plain
        ``AutoModel`` / ``AutoTokenizer``.
        """
        path = Path(path)
        with atomic_dir(path, "saving") as building:
            self.model.save_pretrained(building)
            self.tokenizer.save_pretrained(building)
            write_json(self.settings(), building / ENCODER_SETTINGS_FILE)
        return path
