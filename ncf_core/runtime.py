"""Process-level tuning that training and serving depend on for speed.

Subnormal floats (non-zero, below ~1.2e-38) cost some x86 processors ~100x per operation. Weights that
decay towards zero pass through them: an ML-20M epoch once ran 6x slower that way. ``flush_denormals``
makes every thread torch computes on flush them to zero; it must run before torch's intra-op thread pool
starts (a thread takes the floating-point mode of the thread that creates it), so the programs call it
first thing, and the trainer and the recommender call it again and check it.
It is processor state: from then on the process's own floats (Python's, numpy's) flush too on those
threads, which nothing here needs subnormals for.

glibc serves allocations above its mmap threshold (128 KiB, adapting up to 32 MiB) with fresh ``mmap``
pages and returns them on free, so every large per-batch tensor pays page faults and kernel zeroing again.
On 2 cores that made element-wise ops (ReLU, add) 4-10x slower than the arithmetic needs. Raising the
threshold and the trim threshold keeps freed batch buffers in the heap for reuse.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

log = logging.getLogger("ncf_core.runtime")

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 * 1024 * 1024  # glibc's ceiling on 64-bit
_done = False
_flushing: bool | None = None


def tune_allocator() -> bool:
    """Keep large freed buffers in the heap (glibc only; a no-op elsewhere). Returns True if applied."""
    global _done
    if _done or not sys.platform.startswith("linux"):
        return _done
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    _done = ok
    log.debug("glibc allocator tuned: %s", ok)
    return ok


def subnormals_survive() -> bool:
    """Whether a product that underflows still comes out subnormal on any of torch's threads.

    The tensor is large enough to be split over every intra-op thread, so one thread that does not flush
    shows.
    """
    import torch

    n = max(1, torch.get_num_threads()) * 65_536
    tiny = torch.full((n,), 1e-30, dtype=torch.float32)
    return bool((tiny * 1e-10).ne(0).any())


def flush_denormals() -> bool:
    """Flush subnormal floats to zero on every thread torch computes on; True if checked in effect.

    Where the processor has no such mode (torch says so) or torch's thread pool started before this call
    (its threads keep the mode they were created with), it logs one WARNING and returns False.
    """
    global _flushing
    if _flushing is not None:
        return _flushing
    import torch

    supported = torch.set_flush_denormal(True)
    _flushing = supported and not subnormals_survive()
    if not supported:
        log.warning("this processor cannot flush subnormal floats to zero: weights near zero may run slowly")
    elif not _flushing:
        log.warning(
            "subnormal floats are flushed on this thread but not on all of torch's threads (their pool "
            "started before ncf_core.runtime.flush_denormals was called): call it first in the program"
        )
    return _flushing


def pick_device(name: str = "auto") -> torch.device:
    """The torch device for ``name`` (``auto``: CUDA when a GPU is visible; training's and serving's)."""
    import torch

    from .errors import ConfigError

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    return torch.device(name)


# CPU features with bf16 matrix arithmetic (Intel AMX, AVX512-BF16 on Intel and AMD Zen 4 and later).
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool:
    """Whether this CPU computes bf16 in hardware (Linux's ``flags``; False where they cannot be read).

    Without these instructions torch emulates bf16 through fp32 and autocast only adds casts.
    """
    try:
        with open(cpuinfo, encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return not BF16_CPU_FLAGS.isdisjoint(line.split(":", 1)[1].split())
    except OSError:
        pass
    return False
