"""The machine a benchmark runs on: CPU class (native bf16 or not), cores and measured matrix-product peak.

Every benchmark prints ``describe_machine()`` first, so that its ratios can be read against the
machine's own limit (issue: speed on every CPU). The peak is the best of a few timings of a square
matrix product, the shape where BLAS comes closest to the hardware's limit.
"""
from __future__ import annotations

import os
import platform
import time

import torch

from hybridlib.models import cpu_has_fast_bf16

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


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            return next(line.split(":", 1)[1].strip() for line in handle if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown CPU"


def describe_machine() -> dict:
    """CPU name and class, cores, torch threads and the fp32 / bf16 matrix-product peaks (GFLOP/s)."""
    return {"cpu": _cpu_name(), "class": "native bf16 (AVX-512 BF16 / AMX)" if cpu_has_fast_bf16() else
            "no native bf16 (AVX2: bf16 emulated)", "cores": len(os.sched_getaffinity(0)),
            "torch threads": torch.get_num_threads(), "fp32 peak GFLOP/s": round(matmul_peak_gflops(torch.float32)),
            "bf16 peak GFLOP/s": round(matmul_peak_gflops(torch.bfloat16))}


if __name__ == "__main__":
    for key, value in describe_machine().items():
        print(f"{key}: {value}")
