"""Per-CPU counters from /proc, for bench/load.py and bench/rps_check.py (machine-wide, not per namespace)."""

from __future__ import annotations

import os


def _cpu_lines() -> list[list[int]]:
    """/proc/stat's per-CPU lines (cpu0, cpu1, ...) as their numbers, in clock ticks."""
    with open("/proc/stat") as f:
        return [[int(x) for x in line.split()[1:]] for line in f if line.startswith("cpu") and line[3].isdigit()]


def softirq_ticks() -> list[int]:
    """Clock ticks each CPU spent in softirq so far (/proc/stat cpuN field 7). Softirq work done on the way out of a
    syscall is only counted here with IRQ time accounting; otherwise it is the calling process's stime."""
    return [v[6] for v in _cpu_lines()]


def softirq_seconds() -> list[float]:
    return [ticks / os.sysconf("SC_CLK_TCK") for ticks in softirq_ticks()]


def cpu_busy_seconds() -> list[float]:
    """Non-idle time of each CPU so far (/proc/stat: all fields but idle and iowait)."""
    return [(sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK") for v in _cpu_lines()]


def net_rx_softirqs() -> list[int]:
    """NET_RX softirqs handled per CPU so far (/proc/softirqs)."""
    with open("/proc/softirqs") as f:
        for line in f:
            if line.strip().startswith("NET_RX:"):
                return [int(x) for x in line.split()[1:]]
    return []
