"""Devices and precisions: what ``auto`` means on the machine at hand, and when a choice will crawl.

``resolve_device`` and ``resolve_precision`` turn the names a user writes (``auto``, ``cpu``,
``cuda:1``; ``auto``, ``fp32``, ``bf16``, ``fp16``) into what torch uses. ``precision_warning``
gives one line when the precision asked for is emulated on this CPU (bf16 without AVX-512-BF16
or AMX, fp16 without AVX-512-FP16 or AMX-FP16), saying how much slower it measured.
"""
from __future__ import annotations

import functools
import os
import platform
import time
from typing import Optional, Union

import torch

from ..constants import PRECISIONS
from ..errors import ModelError

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
# The probe of precision_warning: 384 tokens through the default encoder's feed-forward output
# projection (1536 -> 384): 2 * 384 * 1536 * 384 = 0.45 GFLOP per product.
_PROBE_SHAPE = (384, 1536, 384)
_PROBE_PAIRS = 5  # timings of each precision, in alternation, at most ...
_PROBE_BUDGET_S = 0.8  # ... until this is spent: an emulated product takes ~0.45 s at ~1 GFLOP/s


def resolve_device(device: str = "auto") -> torch.device:
    """The torch device a name means: ``auto`` -> cuda if available, else mps, else cpu.

    Other names (``cpu``, ``cuda``, ``cuda:N``, ``mps``) are checked and returned; ``ModelError``
    for an unknown name or for CUDA on a machine without it.
    """
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


# The two classes of CPU the study meets: with native bf16 matrix products, or with bf16 emulated.
CPU_CLASSES = {True: "native bf16 (AVX-512 BF16 / AMX)", False: "bf16 emulated (no AVX-512 BF16 / AMX)"}


# oneDNN's instruction sets in its order (its ONEDNN_MAX_CPU_ISA names): bf16 products are native
# from AVX512_CORE_BF16 on, fp16 from AVX10_1_512 (alias AVX512_CORE_FP16) on.
_ONEDNN_ISAS = ("SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI",
                "AVX512_CORE_BF16", "AVX10_1_512", "AVX10_1_512_AMX", "AVX10_1_512_AMX_FP16")
_ISA_ALIASES = {"AVX512_CORE_FP16": "AVX10_1_512", "AVX512_CORE_AMX": "AVX10_1_512_AMX",
                "AVX512_CORE_AMX_FP16": "AVX10_1_512_AMX_FP16"}


def _isa_cap() -> int:
    """Position in ``_ONEDNN_ISAS`` of the ISA ``ONEDNN_MAX_CPU_ISA`` holds torch's kernels to
    (unset, DEFAULT or a newer name: no cap)."""
    name = os.environ.get("ONEDNN_MAX_CPU_ISA", "").strip().upper()
    name = _ISA_ALIASES.get(name, name)
    return _ONEDNN_ISAS.index(name) if name in _ONEDNN_ISAS else len(_ONEDNN_ISAS)


def _cpu_capabilities() -> dict:
    """torch's view of the CPU's instruction sets, less the bf16 / fp16 ones that
    ``ONEDNN_MAX_CPU_ISA`` forbids its kernels (they then emulate those precisions)."""
    capabilities = dict(torch.cpu.get_capabilities()) if hasattr(torch.cpu, "get_capabilities") else {}
    cap = _isa_cap()
    if cap < _ONEDNN_ISAS.index("AVX512_CORE_BF16"):
        capabilities.update(avx512_bf16=False, amx_bf16=False)
    if cap < _ONEDNN_ISAS.index("AVX10_1_512"):
        capabilities.update(avx512_fp16=False, amx_fp16=False)
    return capabilities


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The CPU's model name with its family and model numbers (``cpuinfo``), else what ``platform``
    knows. Virtual machines often name only the vendor ("AMD EPYC"); the numbers tell generations
    apart (AMD family 25 is Zen 3/4, 26 is Zen 5), whose speeds differ within one CPU class."""
    try:
        with open(cpuinfo, encoding="utf-8") as handle:
            fields = {}
            for line in handle:
                if not line.strip():
                    break  # the first processor's block is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        fields = {}
    if "model name" not in fields:
        return platform.processor() or "unknown CPU"
    numbers = [f"{key} {fields[key]}" for key in ("cpu family", "model") if key in fields]
    return fields["model name"] + (f" ({', '.join(numbers)})" if numbers else "")


def cpu_class() -> str:
    """The CPU's class in the study's two words: native bf16 or bf16 emulated (``cpu_has_fast_bf16``)."""
    return CPU_CLASSES[cpu_has_fast_bf16()]


def cpu_has_fast_bf16() -> bool:
    """True if the CPU computes bf16 natively (AVX-512 BF16 or AMX), where bf16 autocast pays off."""
    capabilities = _cpu_capabilities()
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def _cpu_has_fast_fp16() -> bool:
    """True if the CPU computes fp16 natively (AVX-512 FP16 or AMX-FP16)."""
    capabilities = _cpu_capabilities()
    return bool(capabilities.get("avx512_fp16") or capabilities.get("amx_fp16"))


def resolve_precision(precision: str = "auto", device: Union[str, torch.device] = "cpu") -> str:
    """``fp32``, ``bf16`` or ``fp16``: the autocast precision a name means on ``device``.

    ``auto`` -> bf16 on CUDA GPUs that support it and on CPUs with native bf16 (AVX-512 BF16 /
    AMX), else fp32. Explicit names are returned as given (see ``precision_warning`` for the
    ones a CPU emulates). The weights stay fp32; the precision is used as an autocast dtype.
    """
    device = torch.device(device)
    if precision not in PRECISIONS:
        raise ModelError(f"precision {precision!r}: unknown (use {', '.join(PRECISIONS)})")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_has_fast_bf16() else "fp32"
    return "fp32"


def precision_warning(precision: str, device: Union[str, torch.device] = "cpu") -> Optional[str]:
    """One line warning that ``precision`` is emulated on this CPU, or ``None`` where it is not.

    bf16 without AVX-512-BF16/AMX and fp16 without AVX-512-FP16/AMX-FP16 run through slow
    conversion paths (~1 GFLOP/s for bf16 on an AVX2 CPU against ~100 in fp32). The line gives
    the slowdown measured on this machine (``emulated_slowdown``) and what ``auto`` would pick.
    ``DualEncoder`` logs it at start; ``hybridlib check`` shows it.
    """
    device = torch.device(device)
    if device.type != "cpu" or precision not in _DTYPES:
        return None
    native = cpu_has_fast_bf16() if precision == "bf16" else _cpu_has_fast_fp16()
    if native:
        return None
    m, k, n = _PROBE_SHAPE
    cpu = _cpu_capabilities().get("cpu_name", "this CPU")
    return (f"precision {precision} is emulated on this CPU ({cpu}, no native {precision}): it measured "
            f"{_times(emulated_slowdown(precision))} slower than fp32 (a {m}x{k} @ {k}x{n} matrix product), "
            f"and training and encoding slow down about as much; precision auto would pick "
            f"{resolve_precision('auto', device)}")


def _times(ratio: float) -> str:
    return f"{ratio:.0f}x" if ratio >= 10 else f"{ratio:.1f}x"


@functools.lru_cache(maxsize=None)
def emulated_slowdown(precision: str) -> float:
    """How many times slower a ``_PROBE_SHAPE`` matrix product is in ``precision`` than in fp32
    on this CPU, measured once per process (~1 s where the precision is emulated).

    Measured rather than stated as a constant because emulation costs differ by CPU and by
    format: ~100x for bf16 on an AVX2-only CPU, 10x or more for fp16 on an AVX-512-BF16 CPU.
    fp32 and ``precision`` are timed in alternation and the fastest of each kept, so that other
    processes on a shared machine slow both alike.
    """
    m, k, n = _PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(m, k, generator=generator), torch.randn(k, n, generator=generator)
    low_a, low_b = a.to(_DTYPES[precision]), b.to(_DTYPES[precision])
    a @ b  # warm-up: thread pool, kernel dispatch
    low_a[:8] @ low_b[:, :8]  # warm-up without paying for a whole emulated product
    fp32, low = [], []
    start = time.perf_counter()
    for _ in range(_PROBE_PAIRS):
        fp32.append(_seconds(a, b))
        low.append(_seconds(low_a, low_b))
        if time.perf_counter() - start > _PROBE_BUDGET_S:
            break
    return min(low) / min(fp32)


def _seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    start = time.perf_counter()
    a @ b
    return time.perf_counter() - start


def limit_threads_to_cpus() -> None:
    """Use at most the CPUs this process may run on (containers often report the host's).

    Never overrides a choice the user made through ``OMP_NUM_THREADS``.
    """
    if os.environ.get("OMP_NUM_THREADS") or not hasattr(os, "sched_getaffinity"):
        return
    available = len(os.sched_getaffinity(0))
    if torch.get_num_threads() > available:
        torch.set_num_threads(available)
