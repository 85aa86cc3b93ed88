"""How many CPU threads torch should use: what the operating system lets this process run,
not the machine's core count (a container limited to 2 of 64 cores would otherwise start 64
threads that fight over 2 — measured 2.8× slower on a shared 2-core machine)."""

from __future__ import annotations

import math
import os
from pathlib import Path


def cpu_quota(cgroup: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs allowed by the cgroup (v2 ``cpu.max`` or v1 ``cfs_quota_us / cfs_period_us``), or None."""
    try:
        quota, period = (cgroup / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota = int((cgroup / "cpu" / "cpu.cfs_quota_us").read_text())
        period = int((cgroup / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def default_threads(env: dict | None = None, cgroup: Path = Path("/sys/fs/cgroup")) -> int:
    """CPUs this process may use (affinity, capped by the cgroup quota), shared among the
    processes a launcher started on this machine (``LOCAL_WORLD_SIZE``), at least 1."""
    env = os.environ if env is None else env
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    quota = cpu_quota(cgroup)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus // max(1, int(env.get("LOCAL_WORLD_SIZE", 1))))
