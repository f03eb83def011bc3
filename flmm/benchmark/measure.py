"""Timing and peak memory of a piece of work, on CUDA or on the CPU.

CUDA: the allocator's peak (`max_memory_allocated`) during the work. CPU: the process's peak resident set
(VmHWM), reset before the work through `/proc/self/clear_refs` (Linux), after returning the allocator's
free pages to the system (glibc `malloc_trim`; otherwise the warm-up call's freed activations stay
resident and hide the peak), so each measurement is its own peak and not the process's so far.
`extra_bytes` is the peak above what was in use when the work started (activations, workspaces),
`peak_bytes` the peak itself (weights included).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

_STATUS = Path("/proc/self/status")
_LIBC = ctypes.CDLL(ctypes.util.find_library("c"))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rss_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+) kB", _STATUS.read_text()).group(1))


@dataclass
class Measurement:
    """Mean seconds per call over `repeats` (after one warm-up call) and the memory of those calls."""

    seconds: float
    peak_bytes: int
    extra_bytes: int


def measure(work: Callable[[], object], device: torch.device, repeats: int = 3) -> Measurement:
    """Run `work` once to warm up, then `repeats` times; its mean time and peak memory."""
    work()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        _LIBC.malloc_trim(0)
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current resident set
        before = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    for _ in range(repeats):
        work()
    sync(device)
    seconds = (time.perf_counter() - start) / repeats
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else _rss_kib("VmHWM") * 1024
    return Measurement(seconds, int(peak), int(max(0, peak - before)))
