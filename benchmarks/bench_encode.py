"""Encoding throughput: ``DualEncoder.encode`` vs sentence-transformers, fp32 and bf16.

Both encode the same XQuAD-R texts with the same model folder (the default encoder), the same
prefixes, mean pooling, L2 normalisation and max length; runs alternate side by side in one
process, so the ratio is fair even on a busy machine. bf16 means autocast for both.
A second table compares bf16 with fp32 embeddings of ``DualEncoder``: cosine, and agreement
of nearest neighbours among the candidates and of the answer ranks of the questions.

Each row also gives the useful arithmetic rate: the linear layers' FLOPs of the real (non-padding)
tokens per second, and its fraction of the machine's measured matrix-product peak in that
precision (``machine.py``). With ``--full`` (all 13,090 questions + 13,014 candidates) the
macro mAP of every setting is computed from the fp32 and the bf16 embeddings and the bf16 one is
checked to be within ``MAP_TOLERANCE`` of fp32 (the rule ``precision: auto`` relies on).
``--variants`` adds "ours, fixed batches" (64 texts a batch, no token budget) and "ours, autocast
only" (bf16 without the copy whose linear weights are cast once: the same numbers, slower).

    python benchmarks/bench_encode.py            # 2,000 random candidates (+ their questions)
    python benchmarks/bench_encode.py 500 --repeats 3
    python benchmarks/bench_encode.py --full --repeats 1   # all questions and candidates + the mAP check
    python benchmarks/bench_encode.py 500 --threads 1   # stable ratios on a busy machine

bf16 is measured only on a CPU that computes it natively, unless ``--precisions fp32 bf16`` asks
for it (emulated bf16 is several times slower than fp32 and ``precision: auto`` never picks it).
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch
from machine import describe_machine, linear_flops_per_token, real_tokens

from hybridlib.data import load_lareqa
from hybridlib.evaluate import evaluate_lareqa, summarize
from hybridlib.models import DualEncoder, build_default_model, cpu_has_fast_bf16

MAP_TOLERANCE = 0.002  # a reduced precision is usable when every macro mAP is this close to fp32's
MAP_COLUMNS = ("mono mAP", "cross mAP", "multi mAP")


def xquad_texts(n_candidates: int, full: bool, seed: int = 0):
    """(questions, candidates, answer row of each question in candidates or -1) of XQuAD-R."""
    data = load_lareqa("xquad-r")
    if full:
        rows = np.arange(len(data.candidates))
    else:
        rows = np.sort(np.random.default_rng(seed).choice(len(data.candidates), n_candidates, replace=False))
    position = np.full(len(data.candidates), -1)
    position[rows] = np.arange(len(rows))
    questions = data.questions if full else data.questions[position[data.questions["candidate"]] >= 0]
    return (questions["text"].tolist(), data.candidates["text"].to_numpy()[rows].tolist(),
            position[questions["candidate"].to_numpy()])


def sentence_transformer(folder, max_length: int):
    """The same model as a SentenceTransformer: Transformer + mean Pooling + Normalize."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer

    transformer = Transformer(str(folder), max_seq_length=max_length)
    pooling = Pooling(transformer.get_embedding_dimension(), pooling_mode="mean")
    return SentenceTransformer(modules=[transformer, pooling, Normalize()], device="cpu")


def autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else torch.autocast("cpu", enabled=False)


def run_ours(encoder, texts: dict, precision: str, batch_size: int, max_batch_tokens="auto") -> dict:
    encoder.precision = precision
    return {kind: encoder.encode(items, kind, batch_size=batch_size, progress=False,
                                 max_batch_tokens=max_batch_tokens) for kind, items in texts.items()}


def run_ours_autocast_only(encoder, texts: dict, precision: str, batch_size: int) -> dict:
    """``encode`` as before its bf16 copy: the fp32 model under autocast, which casts every
    linear weight again in every batch (the same arithmetic, so the same embeddings)."""
    encoder._inference_model = lambda: encoder.model
    try:
        return run_ours(encoder, texts, precision, batch_size)
    finally:
        del encoder._inference_model


def run_st(model, texts: dict, prefixes: dict, precision: str, batch_size: int) -> dict:
    with torch.inference_mode(), autocast(precision):
        return {kind: np.asarray(model.encode([prefixes[kind] + t for t in items], batch_size=batch_size,
                                              convert_to_numpy=True), dtype=np.float32)
                for kind, items in texts.items()}


def timed(function, *args):
    """(wall seconds, CPU seconds of this process, result)."""
    start, cpu = time.perf_counter(), time.process_time()
    result = function(*args)
    return time.perf_counter() - start, time.process_time() - cpu, result


def nearest(embeddings: np.ndarray, k: int) -> np.ndarray:
    """Indices of each row's k nearest other rows, nearest first."""
    scores = embeddings @ embeddings.T
    np.fill_diagonal(scores, -np.inf)
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    return np.take_along_axis(top, np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1), axis=1)


def agreement(fp32: dict, bf16: dict, answers: np.ndarray, k: int = 10) -> dict:
    """How far bf16 embeddings are from fp32 ones, in what retrieval sees."""
    cosine = np.concatenate([(fp32[kind] * bf16[kind]).sum(1) for kind in fp32])
    out = {"cosine min": cosine.min(), "cosine mean": cosine.mean()}
    c32, c16 = fp32["passage"], bf16["passage"]
    top32, top16 = nearest(c32, k), nearest(c16, k)
    out["candidate NN@1 same"] = (top32[:, 0] == top16[:, 0]).mean()
    out[f"candidate NN@{k} overlap"] = np.mean([len(set(a) & set(b)) / k for a, b in zip(top32, top16)])
    ranks = []
    for emb in (fp32, bf16):
        scores = emb["query"] @ emb["passage"].T
        own = scores[np.arange(len(scores)), answers][:, None]
        ranks.append((scores >= own).sum(1))  # rank of the answer among all candidates
    out["question answer rank same"] = (ranks[0] == ranks[1]).mean()
    out["question answer |rank change| mean"] = np.abs(ranks[0] - ranks[1]).mean()
    out["question top-1 correct fp32 / bf16"] = f"{(ranks[0] == 1).mean():.4f} / {(ranks[1] == 1).mean():.4f}"
    return out


def map_check(embeddings: dict) -> None:
    """Macro mAP of fp32 and bf16 embeddings of all of XQuAD-R, and whether bf16 is within MAP_TOLERANCE."""
    data = load_lareqa("xquad-r")
    rows = {precision: summarize(evaluate_lareqa((emb["query"], emb["passage"]), data, model=precision,
                                                 progress=False)).iloc[0][list(MAP_COLUMNS)]
            for precision, emb in embeddings.items()}
    table = pd.DataFrame(rows).T
    worst = (table - table.loc["fp32"]).abs().max(axis=1)
    table["max |diff| vs fp32"] = worst
    table["within tolerance"] = worst <= MAP_TOLERANCE
    print(f"\nmacro mAP on all of XQuAD-R, each precision vs fp32 (tolerance {MAP_TOLERANCE}):")
    print(table.to_string(float_format=lambda v: f"{v:.5f}"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("candidates", nargs="?", type=int, default=2000, help="number of XQuAD-R candidates")
    parser.add_argument("--full", action="store_true", help="all 13,090 questions and 13,014 candidates")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--variants", action="store_true", help="also time two older ways of encoding")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (1 gives stable ratios on a busy machine)")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16"], default=None,
                        help="default: fp32 and bf16 on a CPU with native bf16, fp32 alone where bf16 is emulated")
    args = parser.parse_args()
    precisions = args.precisions or (["fp32", "bf16"] if cpu_has_fast_bf16() else ["fp32"])
    if "fp32" not in precisions:
        parser.error("--precisions needs fp32: every other precision is compared with it")
    if args.threads:
        torch.set_num_threads(args.threads)

    machine = describe_machine()
    print("machine:", "; ".join(f"{key} {value}" for key, value in machine.items()))
    questions, candidates, answers = xquad_texts(args.candidates, args.full)
    texts = {"query": questions, "passage": candidates}
    n = len(questions) + len(candidates)
    folder = build_default_model()
    ours = DualEncoder("default", device="cpu", max_length=args.max_length)
    st = sentence_transformer(folder, args.max_length)
    print(f"{len(questions)} questions + {len(candidates)} candidates = {n} texts; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {os.cpu_count()} CPUs, native bf16: {cpu_has_fast_bf16()}, "
          f"batch size {args.batch_size}")
    tokens = real_tokens(ours.tokenizer, [ours.prefixes[kind] + t for kind, items in texts.items() for t in items],
                         args.max_length)
    flops = tokens * linear_flops_per_token(ours.model)
    print(f"{tokens} real tokens, {flops / 1e12:.1f} TFLOP of linear layers")
    warm = {kind: items[:32] for kind, items in texts.items()}
    run_ours(ours, warm, "fp32", args.batch_size), run_st(st, warm, ours.prefixes, "fp32", args.batch_size)

    all_runners = {  # name -> function of the precision
        "ours": lambda precision: run_ours(ours, texts, precision, args.batch_size),
        "sentence-transformers": lambda precision: run_st(st, texts, ours.prefixes, precision, args.batch_size),
    }
    if args.variants:
        all_runners["ours, fixed batches"] = lambda precision: run_ours(ours, texts, precision, args.batch_size, None)
        all_runners["ours, autocast only"] = lambda precision: run_ours_autocast_only(ours, texts, precision,
                                                                                      args.batch_size)
    table, embeddings = [], {}
    for precision in precisions:
        runners = {name: run for name, run in all_runners.items()
                   if precision == "bf16" or name != "ours, autocast only"}  # the same as ours in fp32
        seconds, cpu_seconds, results = {name: [] for name in runners}, {name: [] for name in runners}, {}
        for repeat in range(args.repeats):
            names = list(runners) if repeat % 2 == 0 else list(runners)[::-1]  # alternate the order
            for name in names:
                took, cpu, results[name] = timed(runners[name], precision)
                seconds[name].append(took)
                cpu_seconds[name].append(cpu)
                print(f"  {precision} {name}: {took:.1f} s ({cpu:.1f} CPU s)", flush=True)
        embeddings[precision] = results["ours"]
        st_best = min(seconds["sentence-transformers"])
        for name, values in seconds.items():
            cosine = min((results[name][k] * results["ours"][k]).sum(1).min() for k in texts)
            gflops = flops / min(values) / 1e9
            table.append((precision, name, min(values), min(cpu_seconds[name]), n / min(values),
                          st_best / min(values), gflops, gflops / machine[f"{precision} peak GFLOP/s"], cosine))

    print(f"\nbest of {args.repeats} runs, alternating:")
    print(f"{'precision':<10}{'encoder':<24}{'seconds':>9}{'CPU s':>8}{'texts/s':>9}{'vs ST':>8}{'GFLOP/s':>9}"
          f"{'of peak':>9}{'min cos vs ours':>17}")
    for precision, name, wall, cpu, rate, ratio, gflops, of_peak, cosine in table:
        print(f"{precision:<10}{name:<24}{wall:>9.1f}{cpu:>8.1f}{rate:>9.0f}{ratio:>7.2f}x{gflops:>9.0f}"
              f"{of_peak:>9.0%}{cosine:>17.6f}")

    full = 13090 + 13014
    for precision, name, _, _, rate, *_ in table:
        if name == "ours":
            print(f"ours, {precision}: all of XQuAD-R ({full} texts) {'took' if args.full else 'would take'} "
                  f"{full / rate:.0f} s")

    if "bf16" not in embeddings:
        print("\nbf16 left out (emulated on this CPU; --precisions fp32 bf16 measures it anyway)")
        return
    print("\nbf16 vs fp32 embeddings of DualEncoder:")
    for key, value in agreement(embeddings["fp32"], embeddings["bf16"], answers).items():
        print(f"  {key:<38}{value if isinstance(value, str) else f'{value:.6f}'}")
    if args.full:
        map_check(embeddings)


if __name__ == "__main__":
    main()
