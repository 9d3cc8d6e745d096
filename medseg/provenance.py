"""What every output records about how it was made, computed in one place: file hashes, peak memory, plain values."""

from __future__ import annotations

import functools
import hashlib
import os


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """SHA-256 of a file's bytes, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def reset_peak_rss() -> None:
    """Start a new peak-memory window for this process (Linux: /proc/self/clear_refs; elsewhere a no-op)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        pass


def release_freed_memory() -> None:
    """Hand the memory that earlier work freed back to the OS (glibc ``malloc_trim``; elsewhere a no-op).

    glibc keeps freed heap pages for reuse, so a second case in one process starts several hundred MB higher
    than the first and peaks that much higher (full-width nnU-Net, 513x513x200 CT: 2448 MB against 1787 MB;
    with this between the cases 2120 MB, benchmarks/results/2026-12-01_nnunet_memory.txt)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim`` from the symbols already loaded into this process, looked up once; None elsewhere."""
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), "malloc_trim", None)
    except OSError:
        return None


def peak_rss_mb() -> float:
    """Peak resident memory (MB) since the last ``reset_peak_rss`` (Linux VmHWM), else since the process started."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except OSError:
        pass
    import resource

    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0, 1)


def to_plain(obj, *, keep_tensors: bool = False):
    """Plain Python data (dict/list/str/int/float/bool/None) from numpy values and arrays.

    ``keep_tensors``: torch tensors stay as they are (a checkpoint payload that
    ``torch.load(weights_only=True)`` accepts); other unknown objects become strings.
    Without it (JSON), unknown objects are returned unchanged for the JSON encoder to judge.
    """
    import numpy as np

    if keep_tensors:
        import torch

        if isinstance(obj, torch.Tensor):
            return obj
    if isinstance(obj, dict):
        return {str(k): to_plain(v, keep_tensors=keep_tensors) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v, keep_tensors=keep_tensors) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist(), keep_tensors=keep_tensors)
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bool) or obj is None:
        return obj
    for kind in (int, float, str):  # subclasses (enums, path-like strings) become the plain type
        if isinstance(obj, kind):
            return kind(obj)
    if keep_tensors:
        return obj.item() if hasattr(obj, "item") else str(obj)
    return obj
