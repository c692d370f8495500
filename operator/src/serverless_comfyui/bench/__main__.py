"""`python -m serverless_comfyui.bench [--runs N] [--only NAME]`: run the benchmarks, print one
table of medians over N runs with ratios against the baseline measured in the same run, and
write everything as JSON under bench/results/. Benchmarks report; they never fail the build."""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serverless_comfyui.bench import operator_bench
from serverless_comfyui.bench.stats import load_average

# name -> (run(state_dir) -> raw result, rows(raw results of every run) -> table rows)
Row = tuple[str, float, float | None, str]
"""(metric, median value, median baseline or None, unit)"""


def _median(results: list[dict[str, Any]], *path: str) -> float:
    values = []
    for result in results:
        value: Any = result
        for key in path:
            value = value[key]
        values.append(float(value))
    return statistics.median(values)


def operator_rows(results: list[dict[str, Any]]) -> list[Row]:
    def m(*path: str) -> float:
        return _median(results, *path)

    return [
        (
            "operator: apply -> Deployment p50",
            m("apply_to_deployment_seconds", "p50") * 1000,
            m("direct_create_seconds", "p50") * 1000,
            "ms",
        ),
        (
            "operator: apply -> Deployment p95",
            m("apply_to_deployment_seconds", "p95") * 1000,
            m("direct_create_seconds", "p95") * 1000,
            "ms",
        ),
        (
            "operator: 200 FluxWorkflows reconciled",
            m("bulk", "operator_per_second"),
            m("bulk", "direct_per_second"),
            "objects/s",
        ),
        ("operator: resident memory with 200", m("operator_rss_mib"), None, "MiB"),
    ]


BENCHMARKS: dict[str, tuple[Callable[[Path], dict[str, Any]], Callable[..., list[Row]]]] = {
    "operator": (operator_bench.run, operator_rows),
}


def _table(rows: list[Row]) -> str:
    lines = [f"{'metric':44} {'value':>12} {'baseline':>12} {'ratio':>8}  unit"]
    for metric, value, baseline, unit in rows:
        base = f"{baseline:12.2f}" if baseline is not None else f"{'-':>12}"
        ratio = f"{value / baseline:8.2f}" if baseline else f"{'-':>8}"
        lines.append(f"{metric:44} {value:12.2f} {base} {ratio}  {unit}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless_comfyui.bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    args = parser.parse_args()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": load_average(),
        "runs": args.runs,
        "benchmarks": {},
    }
    rows: list[Row] = []
    for name in args.only or list(BENCHMARKS):
        run, to_rows = BENCHMARKS[name]
        results = []
        for i in range(args.runs):
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                results.append(run(Path(tmp)))
            print(
                f"[bench] {name} run {i + 1}/{args.runs}: {time.monotonic() - started:.0f}s",
                file=sys.stderr,
            )
        report["benchmarks"][name] = results
        rows += to_rows(results)
    report["load_average_after"] = load_average()
    report["table"] = [
        dict(zip(("metric", "value", "baseline", "unit"), r, strict=True)) for r in rows
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"bench-{report['started'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(_table(rows))
    print(
        f"\nmedians of {args.runs} runs; load average {report['load_average_before']:.2f} before, "
        f"{report['load_average_after']:.2f} after (2 cores; client and servers share them)\n"
        f"raw results: {out}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
