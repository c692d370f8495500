"""The proxy's Prometheus metrics (served at /metrics). One registry, defined in one place."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "scui_proxy_requests",
    "Requests answered, by route kind, model and HTTP status",
    ["route", "model", "status"],
    registry=REGISTRY,
)
HELD = Gauge(
    "scui_proxy_held_requests", "Requests waiting for a ready pod", ["model"], registry=REGISTRY
)
HOLD_SECONDS = Histogram(
    "scui_proxy_hold_seconds",
    "Time a request waited for a ready pod",
    ["model"],
    buckets=(0.01, 0.1, 0.5, 1, 5, 15, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
OUTSTANDING = Gauge(
    "scui_proxy_outstanding_prompts",
    "Prompts queued or running on the model's pods, plus held requests",
    ["model"],
    registry=REGISTRY,
)
OPEN_SESSIONS = Gauge(
    "scui_proxy_open_sessions", "Open WebSocket and UI sessions", ["model"], registry=REGISTRY
)
SERVING_PODS = Gauge(
    "scui_proxy_serving_pods",
    "Pods this proxy replica sends new work to (Ready, not draining)",
    ["model"],
    registry=REGISTRY,
)
SCALE_EVENTS = Counter(
    "scui_proxy_scale_events",
    "Replica changes written to a FluxWorkflow's scale subresource",
    ["model", "direction"],
    registry=REGISTRY,
)
COLD_START_SECONDS = Histogram(
    "scui_proxy_cold_start_seconds",
    "From the first held request of a scaled-to-zero model to its first forwarded request",
    ["model"],
    buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1200),
    registry=REGISTRY,
)
