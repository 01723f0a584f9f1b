"""How far training and encoding are from the machine's matrix-product peak, why, and what the
levers left would buy (run by hand; prints tables, asserts nothing).

The speed issue asks for a training step at >= 50% of the peak in the precision it trains in, and
encoding at >= 75%. For each, torch's profiler splits the time into the matrix products
(``mm``, ``addmm``, ``bmm``: the linear layers, and the attention's in training) and everything
else, and the benchmark prints what the goal would need of everything else and the fraction of
the peak the work would reach were everything else free (its ceiling without new kernels).

1. **Training step** (``--parts step``): ``--steps`` default steps, then the levers, each
   alternating with our step on the same batches (ratios count on a shared host):
   - ``compiled feed-forward``: ``torch.compile`` (inductor, dynamic shapes, eager random numbers
     so the dropout masks stay torch's) over each layer's block after the attention
     (``packed._feed_forward``: output projection, dropout, residual, LayerNorm, feed-forward);
   - ``bf16 weights``: the whole model cast to bf16, no autocast (no casts and half the memory
     traffic of every element-wise operation; not a valid way to train, an upper bound of what
     dropping autocast's casts could give).
2. **Encoding** (``--parts encode``): ``DualEncoder.encode`` of ``--candidates`` random XQuAD-R
   candidates and their questions (torch's fused attention counts as everything else).

    python benchmarks/bench_limits.py                 # bf16 on a native-bf16 CPU, else fp32
    python benchmarks/bench_limits.py --precision fp32 --steps 6 --parts step
"""
from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
from bench_encode import xquad_texts
from bench_train import OurStep, alternate, batch_tokens, benchmark_batches
from machine import describe_machine, linear_flops_per_token, real_tokens

from hybridlib.models import DualEncoder, cpu_has_fast_bf16, packed, resolve_model

MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm")


def split(work, rounds: int) -> dict:
    """Seconds per call of ``work()``: wall time unprofiled, then the profiler's self time of the
    matrix products and of every other operation (``rounds`` calls each)."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    for _ in range(rounds):
        work()
    wall = (time.perf_counter() - start) / rounds
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(rounds):
            work()
    events = profiler.key_averages()
    products = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_PRODUCTS) / 1e6 / rounds
    profiled = sum(e.self_cpu_time_total for e in events) / 1e6 / rounds
    return {"wall": wall, "products": products, "other": profiled - products}


def print_split(title: str, parts: dict, flops: float, peak: float, goal_fraction: float) -> None:
    """The split, the fraction of the peak, and what ``goal_fraction`` of the peak would need."""
    rest = parts["wall"] - parts["products"]
    print(f"\n## {title}, {flops / 1e12:.2f} TFLOP of linear layers")
    print(f"wall time {parts['wall']:.3f} s: {flops / parts['wall'] / peak:.0%} of the peak")
    print(f"matrix products {parts['products']:.3f} s ({parts['products'] / parts['wall']:.0%} of the time, "
          f"{flops / parts['products'] / peak:.0%} of the peak while they run), everything else {rest:.3f} s: "
          f"the other operations' self time {parts['other']:.3f} s in the profiler, which adds its own to each")
    goal = flops / (goal_fraction * peak)
    if parts["wall"] <= goal:
        print(f"at or above {goal_fraction:.0%} of the peak ({goal:.3f} s or less)")
    else:
        print(f"{goal_fraction:.0%} of the peak needs {goal:.3f} s: everything else cut to "
              f"{max(goal - parts['products'], 0):.3f} s ({1 - max(goal - parts['products'], 0) / rest:.0%} "
              f"less); were it free, {flops / parts['products'] / peak:.0%}")


def compiled_feed_forward():
    """``torch.compile`` of ``packed._feed_forward`` (inductor, dynamic token count)."""
    import torch._inductor.config as inductor

    inductor.fallback_random = True  # FastDropout's masks from torch's generator, as in eager
    return torch.compile(packed._feed_forward, dynamic=True)


def medians(ours: OurStep, lever, warm: list, timed: list) -> pd.Series:
    """Median seconds of our step and the lever's, alternating on the same batches
    (``bench_train.alternate``, whose first batch is a warm-up)."""
    times = alternate({"ours": ours, "lever": lever}, warm[-1:] + timed)
    return times.groupby("impl")["seconds"].median()


def part_step(path: str, precision: str, batch_size: int, steps: int, peak: float) -> None:
    torch.manual_seed(0)
    batches = benchmark_batches(batch_size, steps + 2)
    warm, timed = batches[:2], batches[2:]
    ours = OurStep(path, precision)
    flops = statistics.mean(3 * linear_flops_per_token(ours.encoder.model) * batch_tokens(ours.encoder, t)
                            for t in timed)
    for texts in warm:
        ours(texts)
    batch = iter(timed * 2)
    parts = split(lambda: ours(next(batch)), len(timed))
    print_split(f"Training step, {precision}, {batch_size} pairs + {batch_size} hard negatives, {steps} steps",
                parts, flops, peak, 0.5)
    print_levers(path, precision, ours, warm, timed)


def print_levers(path: str, precision: str, ours: OurStep, warm: list, timed: list) -> None:
    original, compiled = packed._feed_forward, compiled_feed_forward()
    compiled_step = OurStep(path, precision)

    def with_compiled(texts):
        packed._feed_forward = compiled
        try:
            return compiled_step(texts)
        finally:
            packed._feed_forward = original

    start = time.perf_counter()
    with_compiled(warm[0])  # compiles
    compile_seconds = time.perf_counter() - start
    levers = {"compiled feed-forward": with_compiled}
    if precision == "bf16":
        levers["bf16 weights (upper bound)"] = OurStep(path, "fp32")
        levers["bf16 weights (upper bound)"].encoder.model.to(torch.bfloat16)
    rows = []
    for name, lever in levers.items():
        seconds = medians(ours, lever, warm, timed)
        rows.append({"lever": name, "ours s": seconds["ours"], "lever s": seconds["lever"],
                     "speed-up": seconds["ours"] / seconds["lever"],
                     "first step s": compile_seconds if lever is with_compiled else float("nan")})
    print(f"\n## Levers, alternating with our {precision} step (medians over {len(timed)} steps)")
    print(pd.DataFrame(rows).set_index("lever").round(3).to_string(formatters={"speed-up": "{:.2f}x".format}))


def part_encode(path: str, precision: str, candidates: int, peak: float) -> None:
    questions, passages, _ = xquad_texts(candidates, full=False)
    encoder = DualEncoder(path, device="cpu", precision=precision)
    texts = {"query": questions, "passage": passages}
    tokens = real_tokens(encoder.tokenizer, [encoder.prefixes[kind] + t for kind, items in texts.items()
                                             for t in items], encoder.max_length)
    flops = tokens * linear_flops_per_token(encoder.model)

    def encode_all():
        for kind, items in texts.items():
            encoder.encode(items, kind, progress=False)

    encode_all()  # warm-up
    parts = split(encode_all, 1)
    print_split(f"Encoding, {precision}, {len(questions)} XQuAD-R questions + {len(passages)} candidates "
                f"({tokens} real tokens)", parts, flops, peak, 0.75)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_fast_bf16() else "fp32")
    parser.add_argument("--parts", nargs="+", default=["step", "encode"], choices=["step", "encode"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side (after two warm-up steps)")
    parser.add_argument("--candidates", type=int, default=2000, help="XQuAD-R candidates to encode (+ questions)")
    args = parser.parse_args()
    machine = describe_machine()
    print(machine)
    path = resolve_model("default")
    peak = machine[f"{args.precision} peak GFLOP/s"] * 1e9
    if "step" in args.parts:
        part_step(path, args.precision, args.batch_size, args.steps, peak)
    if "encode" in args.parts:
        part_encode(path, args.precision, args.candidates, peak)


if __name__ == "__main__":
    main()
