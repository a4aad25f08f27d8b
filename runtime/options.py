"""Argument values every command parses the same way: sizes, thread counts.

These raise DDRNetError (one line, exit 2 in the CLI) and are called before any work starts.
"""
from __future__ import annotations

import os
import re
from typing import Optional, Tuple

from ddrnet.runtime.errors import DDRNetError

_HW = re.compile(r"\s*(\d+)\s*[xX,]\s*(\d+)\s*")


def parse_hw(text: str, option: str = "--size") -> Tuple[int, int]:
    """(height, width) from "HxW" (the suite's form, e.g. 512x1024); "H,W" is accepted too."""
    match = _HW.fullmatch(text or "")
    if not match or int(match.group(1)) <= 0 or int(match.group(2)) <= 0:
        raise DDRNetError("{} {!r}: expected HEIGHTxWIDTH, e.g. 512x1024".format(option, text))
    return int(match.group(1)), int(match.group(2))


def cpu_count() -> int:
    """Cores this process may use (the affinity mask, not the machine's total)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_threads(threads: Optional[int], option: str = "--threads") -> Optional[int]:
    """None: the backend's default (all cores). Otherwise 1..cores; more would only oversubscribe."""
    if threads is None:
        return None
    cores = cpu_count()
    if threads < 1:
        raise DDRNetError("{} {}: must be at least 1 (leave it out for all {} cores)".format(option, threads, cores))
    if threads > cores:
        raise DDRNetError("{} {}: this machine gives the process {} cores".format(option, threads, cores))
    return threads
