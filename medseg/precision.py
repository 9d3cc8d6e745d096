"""The one mixed-precision policy: which autocast dtype ``amp`` means on a device, for inference and training.

- ``off``: full precision.
- ``bf16``: bfloat16. ``fp16``: float16 on CUDA; on a CPU bfloat16 (CPU autocast has no fast float16).
- ``auto``: CUDA inference float16 (window scores tolerate it; measured in benchmarks/bench_inference.py);
  CUDA training bfloat16 where the GPU supports it (no loss scaling needed), else full precision;
  CPUs bfloat16 only with native bf16 instructions (AVX512-BF16/AMX), else full precision.
"""

from __future__ import annotations


def cpu_has_native_bf16() -> bool:
    try:
        with open("/proc/cpuinfo") as fh:
            flags = fh.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast_dtype(amp: str, device, *, training: bool = False):
    """The autocast dtype for ``amp`` on ``device`` (None: full precision)."""
    import torch

    if amp == "off":
        return None
    if amp == "bf16":
        return torch.bfloat16
    if amp == "fp16":
        return torch.float16 if device.type == "cuda" else torch.bfloat16
    if device.type == "cuda":
        if training:
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
        return torch.float16
    return torch.bfloat16 if cpu_has_native_bf16() else None
