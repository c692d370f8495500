"""Metrics of the generation API, in the proxy's Prometheus registry (served at /metrics)."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from serverless_comfyui.proxy.metrics import REGISTRY

TASKS_ACCEPTED = Counter(
    "scui_api_tasks_accepted",
    "Generation tasks accepted, by model and kind (generate, comfyui)",
    ["model", "kind"],
    registry=REGISTRY,
)
TASKS_FINISHED = Counter(
    "scui_api_tasks_finished",
    "Generation tasks finished, by model and final status",
    ["model", "status"],
    registry=REGISTRY,
)
TASK_SECONDS = Histogram(
    "scui_api_task_seconds",
    "From acceptance to the final state, by model and final status",
    ["model", "status"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600),
    registry=REGISTRY,
)
INVALID_REQUESTS = Counter(
    "scui_api_invalid_requests",
    "Requests refused with 422, by endpoint",
    ["endpoint"],
    registry=REGISTRY,
)
RESULTS_SWEPT = Counter(
    "scui_api_results_swept", "Result folders deleted past their retention", registry=REGISTRY
)
