"""`python -m serverless_comfyui.bench [--runs N] [--only NAME] [--quick]`: run the benchmarks,
print one table of medians over N runs with ratios against the baseline measured in the same
run (and each benchmark's details below it), and write everything as JSON under bench/results/.
`--quick` runs every benchmark with reduced sizes (a smoke run, not a measurement). Benchmarks
report; they never fail the build. See bench/README.md."""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from serverless_comfyui.bench import (
    harness,
    operator_bench,
    proxy_overhead,
    routing,
    wake_sleep,
)
from serverless_comfyui.bench.report import Row
from serverless_comfyui.bench.stats import load_average


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


# name -> (run(state_dir) -> raw result, rows(raw results of every run) -> table rows)
BENCHMARKS: dict[str, tuple[Callable[[Path], dict[str, Any]], Callable[..., list[Row]]]] = {
    "operator": (
        lambda state_dir: operator_bench.run(state_dir, samples=5 if harness.quick() else 30),
        operator_rows,
    ),
    "proxy_overhead": (proxy_overhead.run, proxy_overhead.rows),
    "wake_sleep": (wake_sleep.run, wake_sleep.rows),
    "routing": (routing.run, routing.rows),
}
# name -> details(raw results of every run) -> lines printed below the table
DETAILS: dict[str, Callable[[list[dict[str, Any]]], str]] = {
    "proxy_overhead": proxy_overhead.details,
    "wake_sleep": wake_sleep.details,
    "routing": routing.details,
}


def _table(rows: list[Row]) -> str:
    lines = [f"{'metric':46} {'value':>10} {'baseline':>10} {'ratio':>7}  unit"]
    for metric, value, baseline, unit in rows:
        base = f"{baseline:10.2f}" if baseline is not None else f"{'-':>10}"
        ratio = f"{value / baseline:7.2f}" if baseline else f"{'-':>7}"
        lines.append(f"{metric:46} {value:10.2f} {base} {ratio}  {unit}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m serverless_comfyui.bench")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=sorted(BENCHMARKS), action="append")
    parser.add_argument("--results", type=Path, default=Path("bench/results"))
    parser.add_argument("--quick", action="store_true", help="reduced sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        os.environ[harness.QUICK_ENV] = "1"
    begun = time.monotonic()
    report: dict[str, Any] = {
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "load_average_before": load_average(),
        "runs": args.runs,
        "quick": args.quick,
        "cpus": os.cpu_count(),
        "benchmarks": {},
    }
    rows: list[Row] = []
    measured: dict[str, list[dict[str, Any]]] = {}
    failures: list[str] = []
    for name in args.only or list(BENCHMARKS):
        run, to_rows = BENCHMARKS[name]
        results = []
        for i in range(args.runs):
            started = time.monotonic()
            with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
                try:
                    results.append(run(Path(tmp)))
                except Exception as exc:  # the other benchmarks still run; reported below
                    traceback.print_exc()
                    failures.append(f"{name} run {i + 1}: {exc!r}")
                    results.append({"error": repr(exc)})
            print(
                f"[bench] {name} run {i + 1}/{args.runs}: {time.monotonic() - started:.0f}s",
                file=sys.stderr,
            )
        report["benchmarks"][name] = results
        measured[name] = [r for r in results if "error" not in r]
        if measured[name]:
            rows += to_rows(measured[name])
    report["load_average_after"] = load_average()
    report["seconds"] = round(time.monotonic() - begun, 1)
    report["table"] = [
        dict(zip(("metric", "value", "baseline", "unit"), r, strict=True)) for r in rows
    ]
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"bench-{report['started'].replace(':', '')}.json"
    out.write_text(json.dumps(report, indent=2))
    print(_table(rows))
    for name, results in measured.items():
        if name in DETAILS and results:
            print("\n" + DETAILS[name](results))
    print(
        f"\nmedians of {args.runs} runs{' (--quick: reduced sizes)' if args.quick else ''}; "
        f"load average {report['load_average_before']:.2f} before, "
        f"{report['load_average_after']:.2f} after; {os.cpu_count()} cores, shared by the load "
        "generator, the proxy, the emulators and the control plane; "
        f"{report['seconds']:.0f} s in all\n"
        f"raw results: {out}"
    )
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
