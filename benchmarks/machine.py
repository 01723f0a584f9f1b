"""The machine a benchmark runs on: CPU class (native bf16 or not), cores and measured matrix-product peak.

Every benchmark prints ``describe_machine()`` first, so that its ratios can be read against the
machine's own limit (issue: speed on every CPU). The peak is the best of a few timings of a square
matrix product, the shape where BLAS comes closest to the hardware's limit.
"""
from __future__ import annotations

import os
import time

import torch

from hybridlib.models import cpu_class, cpu_name

PEAK_SIZE = 1536  # square matrices: 2 * n^3 FLOPs, large enough for BLAS to reach its peak


def matmul_peak_gflops(dtype: torch.dtype, size: int = PEAK_SIZE, seconds: float = 1.0) -> float:
    """The best GFLOP/s of ``size x size`` matrix products in ``dtype`` over about ``seconds``."""
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    a @ b  # warm-up
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size ** 3 / best / 1e9


def describe_machine() -> dict:
    """CPU name and class, cores, torch threads and the fp32 / bf16 matrix-product peaks (GFLOP/s).

    Under ``benchmarks/avx2-proxy`` the class says so: its numbers stand in for an AVX2-only machine."""
    proxy = " (AVX2 proxy: benchmarks/avx2-proxy)" if os.environ.get("HYBRIDLIB_AVX2_PROXY") == "1" else ""
    return {"cpu": cpu_name(), "class": cpu_class() + proxy, "cores": len(os.sched_getaffinity(0)),
            "torch threads": torch.get_num_threads(), "fp32 peak GFLOP/s": round(matmul_peak_gflops(torch.float32)),
            "bf16 peak GFLOP/s": round(matmul_peak_gflops(torch.bfloat16))}


def linear_flops_per_token(model: torch.nn.Module) -> int:
    """Forward FLOPs per token of a transformer's linear layers: 2 x their weights' size (the
    embedding table and the attention's score products left out; ~42.5 M for the default encoder).
    A training step costs about 3x this per token (forward, and backward for inputs and weights)."""
    return 2 * sum(module.weight.numel() for module in model.modules() if isinstance(module, torch.nn.Linear))


def real_tokens(tokenizer, texts: list, max_length: int) -> int:
    """Non-padding tokens of ``texts`` (prefixes included) as the encoder sees them, truncated at ``max_length``."""
    encoded = tokenizer(texts, truncation=True, max_length=max_length)["input_ids"]
    return sum(len(ids) for ids in encoded)


if __name__ == "__main__":
    for key, value in describe_machine().items():
        print(f"{key}: {value}")
