"""What the benchmarks read of a process from Linux's /proc: its children and its CPU time."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def child_pids(pid: int) -> list[int]:
    """The direct children of `pid` (every thread's), [] once it has gone."""
    found: list[int] = []
    with contextlib.suppress(OSError):
        for children in Path(f"/proc/{pid}/task").glob("*/children"):
            found.extend(int(c) for c in children.read_text().split())
    return found


def cpu_seconds(pid: int) -> float:
    """CPU seconds (user + system) `pid` itself has used so far; 0.0 once it has gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and all its descendants."""
    return cpu_seconds(pid) + sum(tree_cpu_seconds(c) for c in child_pids(pid))
