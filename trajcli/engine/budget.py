"""The memory budget: parsing `--memory-budget` and a default that is safe on a laptop."""

from __future__ import annotations

import os
import re

from trajcli.errors import UsageError

MIB = 1024 * 1024
_UNITS = {"": 1, "b": 1, "k": 1000, "kb": 1000, "kib": 1024, "m": 1000**2, "mb": 1000**2, "mib": MIB,
          "g": 1000**3, "gb": 1000**3, "gib": 1024**3}
MIN_BUDGET = 16 * MIB


def available_memory_bytes() -> int | None:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def default_budget_bytes() -> int:
    """512 MiB, or a quarter of the memory available now when that is less."""
    available = available_memory_bytes()
    budget = 512 * MIB
    if available:
        budget = min(budget, available // 4)
    return max(MIN_BUDGET, budget)


def parse_budget(text: str | None) -> int:
    if text is None:
        return default_budget_bytes()
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not match or match.group(2).lower() not in _UNITS:
        raise UsageError(f"--memory-budget {text!r} is not a size", "e.g. --memory-budget 256MiB or 2GiB")
    value = int(float(match.group(1)) * _UNITS[match.group(2).lower()])
    if value < MIN_BUDGET:
        raise UsageError(f"--memory-budget {text!r} is below the minimum of 16MiB", "e.g. --memory-budget 256MiB")
    return value
