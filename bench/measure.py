"""What the benchmarks read of the machine."""

from __future__ import annotations

import os
from pathlib import Path

TICKS = os.sysconf("SC_CLK_TCK")


def machine_cpu_seconds() -> float:
    """CPU time every processor spent not idle so far (``/proc/stat``): the kernel's work
    for loopback TCP is counted to whichever process it interrupts, so only the whole
    machine's time compares what a benchmark runs fairly. (Guest time is in user's.)"""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / TICKS
