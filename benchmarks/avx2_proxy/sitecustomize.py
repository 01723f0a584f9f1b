"""Loaded by every Python process that ``benchmarks/avx2-proxy`` starts (it puts this folder first
on ``PYTHONPATH``): hides the CPU's AVX-512 and AMX capabilities from ``torch.cpu.get_capabilities``,
which hybridlib reads to tell the two CPU classes apart, so that ``precision: auto`` picks fp32 and
``hybridlib check`` warns about bf16 as on an AVX2-only machine. The kernels themselves are held to
AVX2 by the environment variables the wrapper sets. Does nothing outside the wrapper.
"""
import os

if os.environ.get("HYBRIDLIB_AVX2_PROXY") == "1":
    import torch.cpu

    _capabilities = torch.cpu.get_capabilities

    def _without_avx512():
        return {key: False if key.startswith(("avx512", "amx")) else value
                for key, value in _capabilities().items()}

    torch.cpu.get_capabilities = _without_avx512
