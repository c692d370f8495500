"""What the benchmarks hand to the driver: table rows, medians over runs, detail lines."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from typing import Any

Row = tuple[str, float, float | None, str]
"""(metric, median value, median baseline or None, unit)"""

Result = dict[str, Any]


def median_of(results: list[Result], value: Callable[[Result], float]) -> float:
    """The median over runs of value(result); runs where it is missing or nan are left out."""
    values = []
    for result in results:
        try:
            v = float(value(result))
        except (KeyError, TypeError, IndexError):
            continue
        if not math.isnan(v):
            values.append(v)
    return statistics.median(values) if values else float("nan")


def fmt(value: float, digits: int = 2) -> str:
    return "-" if math.isnan(value) else f"{value:.{digits}f}"


def spread(results: list[Result], value: Callable[[Result], float], scale: float = 1.0) -> str:
    """`min-max` of value(result) over the runs (how noisy the runs were), or `-`."""
    values = []
    for result in results:
        try:
            v = float(value(result)) * scale
        except (KeyError, TypeError, IndexError):
            continue
        if not math.isnan(v):
            values.append(v)
    if not values:
        return "-"
    digits = 0 if max(abs(v) for v in values) >= 100 else 2
    return f"{min(values):.{digits}f}-{max(values):.{digits}f}"
