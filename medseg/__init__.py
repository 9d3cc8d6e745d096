"""medseg: segment CT/MR volumes and quantify what is found.

Importing ``medseg`` is cheap: torch and MONAI load only when a model is used.
"""

from __future__ import annotations

import os

# Tensors of 2 MB and more on transparent huge pages. PyTorch's CPU allocator reads this variable once, at its first
# allocation, so it is set here, before medseg imports torch. Without it every large activation is a fresh mmap that
# faults in 4 KB pages: a full-width nnU-Net window (bf16, 48x128x160) took 0.49-0.56 s a pass without and
# 0.40-0.42 s with it on a 2-core CPU, nnU-Net's own float32 pass 2.37 s and 1.85 s
# (benchmarks/results/2026-12-01_huge_pages_and_export.txt). A value the user set (0 turns it off) is kept.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

__version__ = "0.2.0"

from medseg.errors import (  # noqa: E402
    CheckpointError,
    ConfigError,
    GeometryError,
    InputError,
    MedsegError,
    UnknownComponentError,
)

__all__ = [
    "__version__",
    "MedsegError",
    "InputError",
    "GeometryError",
    "ConfigError",
    "UnknownComponentError",
    "CheckpointError",
]
