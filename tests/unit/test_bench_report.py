"""Pure helpers of the benchmarks: medians over runs, percentiles, request bodies, metric and
log parsing, and the rows the driver prints (no timing is measured here)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from serverless_comfyui.bench import proxy_overhead, report, routing, wake_sleep
from serverless_comfyui.bench.stats import percentile, summary


def test_percentile_is_a_rank_of_the_values() -> None:
    values = [float(v) for v in range(1, 1001)]
    assert percentile(values, 50) == 500
    assert percentile(values, 99) == 990
    assert percentile(values, 100) == 1000
    assert percentile([float(v) for v in range(5)], 99) == 4  # a few samples: p99 is the max
    assert percentile([3.0, 1.0, 2.0], 0) == 1
    assert math.isnan(percentile([], 50))
    assert summary([1.0, 2.0, 3.0])["mean"] == 2


def test_median_of_skips_runs_without_the_value() -> None:
    runs: list[dict[str, Any]] = [{"a": 1.0}, {"a": 5.0}, {"a": 3.0}, {}, {"a": float("nan")}]
    assert report.median_of(runs, lambda r: r["a"]) == 3.0
    assert math.isnan(report.median_of([{}], lambda r: r["a"]))
    assert report.fmt(float("nan")) == "-"
    assert report.spread(runs, lambda r: r["a"]) == "1.00-5.00"
    assert report.spread(runs, lambda r: r["a"], 1000) == "1000-5000"
    assert report.spread([{}], lambda r: r["a"]) == "-"
    assert report.fmt(1.234, 1) == "1.2"


def test_prompt_body_is_about_20_kb_and_names_its_own_output_folder() -> None:
    template = proxy_overhead.prompt_template()
    assert 19_500 <= len(template) <= 20_500
    target = proxy_overhead.Target("http://127.0.0.1:1", template, {}, "direct")
    method, url, body = target.request("prompt", 7)
    assert (method, url) == ("POST", "http://127.0.0.1:1/api/prompt")
    assert body is not None
    graph = json.loads(body)["prompt"]
    prefixes = [
        n["inputs"]["filename_prefix"] for n in graph.values() if "filename_prefix" in n["inputs"]
    ]
    assert prefixes == ["direct-7/image"]
    assert target.request("queue", 0) == ("GET", "http://127.0.0.1:1/api/queue", None)
    assert target.request("stats", 0) == ("GET", "http://127.0.0.1:1/api/system_stats", None)
    assert target.request("view", 0)[1].endswith(
        f"/api/view?filename={proxy_overhead.VIEW_FILE}&type=output"
    )


def test_view_file_is_an_incompressible_png_of_about_1_5_mb(tmp_path: Path) -> None:
    size = proxy_overhead.write_png(tmp_path / "x.png")
    assert 1_450_000 <= size <= 1_600_000
    assert (tmp_path / "x.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_routing_graph_sets_steps_and_seed_without_touching_the_template() -> None:
    graph = routing.graph(28, 5)
    kinds = {n["class_type"]: n["inputs"] for n in graph.values()}
    assert kinds["BasicScheduler"]["steps"] == 28
    assert kinds["RandomNoise"]["noise_seed"] == 5
    assert routing.graph(4, 6) != graph
    assert routing.graph(28, 5) == graph


def test_routing_outcome_matches_jobs_to_arrivals() -> None:
    ids = {0: ("a", 10.0), 1: ("b", 11.0), 2: ("lost", 12.0)}
    done = {"a": (10.5, 11.5, 1), "b": (11.0, 12.0, 0)}
    out = routing.outcome(ids, done, 2)
    assert out["waits"] == {0: 0.5, 1: 0.0}
    assert out["services"] == {0: 1.0, 1: 1.0}
    assert out["per_pod"] == [1, 1]


def test_wake_metric_and_log_parsing(tmp_path: Path) -> None:
    page = "\n".join(
        [
            "# HELP scui_proxy_cold_start_seconds ...",
            'scui_proxy_cold_start_seconds_sum{model="other"} 9.0',
            'scui_proxy_cold_start_seconds_sum{model="wake"} 2.5',
        ]
    )
    assert wake_sleep.metric(page, "scui_proxy_cold_start_seconds_sum") == 2.5
    assert wake_sleep.metric(page, "scui_proxy_cold_start_seconds_count") == 0.0
    log = tmp_path / "proxy.log"
    log.write_text(
        "\n".join(
            [
                "not json",
                json.dumps(
                    {"event": "woke", "model": "wake", "timestamp": "2026-01-01T00:00:01.250000Z"}
                ),
                json.dumps(
                    {"event": "woke", "model": "other", "timestamp": "2026-01-01T00:00:02Z"}
                ),
                json.dumps(
                    {
                        "event": "scaled",
                        "model": "wake",
                        "direction": "down",
                        "timestamp": "2026-01-01T00:00:09Z",
                    }
                ),
            ]
        )
    )
    woke = wake_sleep.log_times(log, "woke", model="wake")
    assert len(woke) == 1
    down = wake_sleep.log_times(log, "scaled", model="wake", direction="down")
    assert down[0] - woke[0] == pytest.approx(7.75)
    runner = tmp_path / "pod-runner.log"
    runner.write_text(
        "2026-01-01 00:00:01,000 pod-runner started emulator for bench-wake/wake-a\n"
        "2026-01-01 00:00:03,125 pod-runner bench-wake/wake-a Ready=True \n"
        "2026-01-01 00:00:04,000 pod-runner bench-wake/wake-b Ready=True \n"
    )
    ready = wake_sleep.ready_written(runner, "bench-wake/wake-a")
    started = wake_sleep.ready_written(runner, "bench-wake/wake-b")
    assert ready is not None and started is not None
    assert started - ready == pytest.approx(0.875)
    assert wake_sleep.ready_written(runner, "bench-wake/wake-c") is None
    assert wake_sleep.first_after([1.0, 5.0, 3.0], 2.0) == 3.0
    assert wake_sleep.first_after([1.0], 2.0) is None


def _summary(value: float) -> dict[str, float]:
    return {"n": 3, "p50": value, "p95": value, "p99": value, "mean": value}


def test_rows_take_medians_over_runs() -> None:
    runs = [
        {
            "proxy": _summary(v),
            "round_robin": _summary(2 * v),
            "ideal": _summary(0.5 * v),
            "least_outstanding_model": _summary(v),
            "round_robin_model": _summary(2 * v),
            "proxy_response_mean": v,
            "ideal_response_mean": v,
            "trace": {
                "seconds": 40,
                "pods": 6,
                "prompts": 200,
                "utilization": 0.6,
                "mean_measured_seconds": 0.7,
                "mean_nominal_seconds": 0.64,
            },
            "per_pod": {"proxy": [1], "round_robin": [1]},
        }
        for v in (0.1, 0.3, 0.2)
    ]
    rows = routing.rows(runs)
    assert rows[0][:3] == (
        "routing: mean queue wait, proxy",
        pytest.approx(200),
        pytest.approx(100),
    )
    assert "round-robin" in routing.details(runs)


def _phase(p50: float, per_second: float) -> dict[str, float]:
    return {
        **_summary(p50),
        "per_second": per_second,
        "seconds": 1.0,
        "sent_with_warmups": per_second,
        "client_cpu_seconds": 0.3,
        "proxy_cpu_seconds": 0.5,
        "emulator_cpu_seconds": 0.2,
    }


def _overhead_run(added: float) -> dict[str, Any]:
    pair = {"direct": _phase(0.001, 1000.0), "proxied": _phase(0.001 + added, 500.0)}
    return {
        "closed": {
            kind: {str(c): pair for c in proxy_overhead.CONCURRENCY}
            for kind in proxy_overhead.KINDS
        },
        "relayed_small_get": pair,
        "open_loop": {
            "direct": {**_summary(0.001), "achieved_per_second": 500.0},
            "proxied": {**_summary(0.001 + added), "achieved_per_second": 500.0},
        },
        "small_gets_per_proxy_cpu_second": 2000.0,
        "relayed_gets_per_proxy_cpu_second": 2500.0,
        "cpu_share_queue_c32_proxied": {"proxy": 0.9, "emulator": 0.3, "client": 0.4},
        "proxy_memory_mib": {"idle_rss": 57.0, "loaded_rss": 70.0, "peak": 74.0},
    }


def test_proxy_overhead_rows_report_added_latency_and_ratios() -> None:
    runs = [_overhead_run(a) for a in (0.0005, 0.002, 0.001)]
    rows = {metric: (value, baseline) for metric, value, baseline, _ in proxy_overhead.rows(runs)}
    assert rows["proxy: added p50, GET queue open loop 500/s"] == (pytest.approx(1.0), None)
    assert rows["proxy: GET /api/queue c=32 throughput"] == (500.0, 1000.0)
    assert rows["proxy: small GETs per proxy CPU-second, stats"] == (2500.0, None)
    text = proxy_overhead.details(runs)
    assert "0.50-2.00" in text  # the spread of the added p50 over the runs


def test_wake_sleep_rows_and_details() -> None:
    sample = {
        "pod": "p",
        "pods_created": ["p"],
        "arrival_to_scale_written": 0.01,
        "ready_to_forwarded": 0.005,
        "arrival_to_answer": 2.3,
        "arrival_to_ready": 2.29,
        "finished_to_zero_written": 5.2,
    }
    summary_of = {k: _summary(v) for k, v in sample.items() if isinstance(v, float)}
    runs = [{"samples": [sample], "summary": summary_of}]
    rows = {metric: (value, baseline) for metric, value, baseline, _ in wake_sleep.rows(runs)}
    assert rows["wake: arrival -> scale written p99"] == (pytest.approx(10.0), None)
    assert rows["sleep: last work finished -> zero p50"] == (pytest.approx(5.2), 3.0)
    assert "KubeAI" in wake_sleep.details(runs)
