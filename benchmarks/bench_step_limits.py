"""Where a training step's time goes, and what the levers left would buy (run by hand; prints
tables, asserts nothing).

The speed issue asks for a training step at >= 50% of the machine's matrix-product peak in the
precision it trains in. This benchmark measures how far the step is from that and why:

1. **Split** (torch's profiler over ``--steps`` steps): the self time of the matrix products
   (``mm``, ``addmm``, ``bmm``) against everything else, and the fraction of the peak the step
   would reach if everything else took no time at all (its ceiling without new kernels).
2. **Levers**, each alternating with our step on the same batches (ratios count on a shared host):
   - ``compiled feed-forward``: ``torch.compile`` (inductor, dynamic shapes, eager random numbers
     so the dropout masks stay torch's) over each layer's block after the attention
     (``packed._feed_forward``: output projection, dropout, residual, LayerNorm, feed-forward);
   - ``bf16 weights``: the whole model cast to bf16, no autocast (no casts and half the memory
     traffic of every element-wise operation; not a valid way to train, an upper bound of what
     dropping autocast's casts could give).

    python benchmarks/bench_step_limits.py                 # bf16 on a native-bf16 CPU, else fp32
    python benchmarks/bench_step_limits.py --precision fp32 --steps 6
"""
from __future__ import annotations

import argparse
import statistics
import time

import pandas as pd
import torch
from bench_train import OurStep, batch_tokens, benchmark_batches
from machine import describe_machine, linear_flops_per_token

from hybridlib.models import cpu_has_fast_bf16, packed, resolve_model

MATRIX_PRODUCTS = ("aten::mm", "aten::addmm", "aten::bmm")


def split(step: OurStep, batches: list) -> dict:
    """Seconds per step: wall time unprofiled, then the profiler's self time of the matrix
    products and of every other operation."""
    from torch.profiler import ProfilerActivity, profile

    start = time.perf_counter()
    for texts in batches:
        step(texts)
    wall = (time.perf_counter() - start) / len(batches)
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for texts in batches:
            step(texts)
    events = profiler.key_averages()
    products = sum(e.self_cpu_time_total for e in events if e.key in MATRIX_PRODUCTS) / 1e6 / len(batches)
    profiled = sum(e.self_cpu_time_total for e in events) / 1e6 / len(batches)
    return {"wall": wall, "products": products, "other": profiled - products}


def compiled_feed_forward() -> None:
    """Swap ``packed._feed_forward`` for its ``torch.compile`` (inductor, dynamic token count)."""
    import torch._inductor.config as inductor

    inductor.fallback_random = True  # FastDropout's masks from torch's generator, as in eager
    packed._feed_forward = torch.compile(packed._feed_forward, dynamic=True)


def alternate(ours: OurStep, lever: OurStep, batches: list, before=None, after=None) -> pd.Series:
    """Median seconds of each step, alternating on the same batches (``before`` / ``after``: called
    around the lever's step)."""
    times = {"ours": [], "lever": []}
    for texts in batches:
        for name, step in (("ours", ours), ("lever", lever)):
            if name == "lever" and before:
                before()
            start = time.perf_counter()
            step(texts)
            times[name].append(time.perf_counter() - start)
            if name == "lever" and after:
                after()
    return pd.Series({name: statistics.median(values) for name, values in times.items()})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16" if cpu_has_fast_bf16() else "fp32")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=8, help="timed steps per side (after warm-up)")
    args = parser.parse_args()
    machine = describe_machine()
    print(machine)
    path = resolve_model("default")
    torch.manual_seed(0)
    batches = benchmark_batches(args.batch_size, args.steps + 2)
    warm, timed = batches[:2], batches[2:]
    ours = OurStep(path, args.precision)
    flops = statistics.mean(3 * linear_flops_per_token(ours.encoder.model) * batch_tokens(ours.encoder, t)
                            for t in timed)
    peak = machine[f"{args.precision} peak GFLOP/s"] * 1e9
    for texts in warm:
        ours(texts)
    parts = split(ours, timed)
    print(f"\n## Where a {args.precision} step goes ({args.batch_size} pairs + {args.batch_size} hard negatives, "
          f"{args.steps} steps, {flops / 1e12:.2f} TFLOP of linear layers)")
    print(f"wall time {parts['wall']:.3f} s: {flops / parts['wall'] / peak:.0%} of the peak")
    rest = parts["wall"] - parts["products"]
    print(f"matrix products {parts['products']:.3f} s ({parts['products'] / parts['wall']:.0%} of the step, "
          f"{flops / parts['products'] / peak:.0%} of the peak while they run), everything else {rest:.3f} s: "
          f"the other operations' self time {parts['other']:.3f} s in the profiler, which adds its own to each")
    goal = flops / (0.5 * peak)
    if parts["wall"] <= goal:
        print(f"at or above 50% of the peak (a step of {goal:.3f} s or less)")
    else:
        print(f"50% of the peak needs a step of {goal:.3f} s: everything else cut to {goal - parts['products']:.3f} "
              f"s ({1 - (goal - parts['products']) / rest:.0%} less); were it free, the step would reach "
              f"{flops / parts['products'] / peak:.0%}")

    rows = []
    original = packed._feed_forward
    compiled_feed_forward()
    compiled, packed._feed_forward = packed._feed_forward, original

    def use_compiled():
        packed._feed_forward = compiled

    def use_original():
        packed._feed_forward = original

    lever = OurStep(path, args.precision)
    use_compiled()
    start = time.perf_counter()
    lever(warm[0])  # compiles
    compile_seconds = time.perf_counter() - start
    lever(warm[1])
    use_original()
    medians = alternate(ours, lever, timed, before=use_compiled, after=use_original)
    rows.append({"lever": "compiled feed-forward", "ours s": medians["ours"], "lever s": medians["lever"],
                 "speed-up": medians["ours"] / medians["lever"], "first step s": compile_seconds})
    if args.precision == "bf16":
        lever = OurStep(path, "fp32")
        lever.encoder.model.to(torch.bfloat16)
        lever(warm[0])
        medians = alternate(ours, lever, timed)
        rows.append({"lever": "bf16 weights (upper bound)", "ours s": medians["ours"], "lever s": medians["lever"],
                     "speed-up": medians["ours"] / medians["lever"], "first step s": float("nan")})
    print(f"\n## Levers, alternating with our {args.precision} step (medians over {args.steps} steps)")
    print(pd.DataFrame(rows).set_index("lever").round(3).to_string(formatters={"speed-up": "{:.2f}x".format}))


if __name__ == "__main__":
    main()
