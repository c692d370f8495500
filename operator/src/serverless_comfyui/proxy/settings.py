"""Proxy settings (environment variables with the SERVERLESS_COMFYUI_PROXY_ prefix)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class ProxySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVERLESS_COMFYUI_PROXY_")

    host: str = "0.0.0.0"
    """Listen address (all interfaces in a pod; 127.0.0.1 for local runs)."""
    port: int = 8080
    namespaces: list[str] = []
    """Namespaces whose FluxWorkflows the proxy serves; empty: all it can see."""
    static_backends: dict[str, list[str]] = {}
    """Static mode, without Kubernetes: {model: [ComfyUI base URLs]} (e.g. for local use)."""

    hold_timeout_seconds: float = Field(600.0, gt=0)
    """How long a request waits for a warm pod (Flux weights are ~34 GB) before 503."""
    max_held_per_model: int = Field(100, ge=1)
    """Requests held per model at most; past it new ones get 503 at once."""
    max_body_bytes: int = Field(100 * 1024 * 1024, ge=1024)
    """Largest request body accepted (uploads included)."""
    upstream_timeout_seconds: float = Field(300.0, gt=0)
    """Timeout of one forwarded HTTP request to ComfyUI."""

    api_keys_file: Path | None = None
    """File with one API key per line (a mounted Secret); unset or empty: no authentication."""
    rate_limit_per_minute: int = Field(0, ge=0)
    """Requests per minute per API key (or client address without keys); 0: unlimited."""

    autoscale_interval_seconds: float = Field(1.0, gt=0)
    """How often the autoscaler recomputes desired replicas."""
    lease_name: str = "serverless-comfyui-proxy-autoscaler"
    """Lease electing the one proxy replica that writes scale decisions."""
    lease_namespace: str = "default"
    pod_name: str = ""
    """This replica's identity (the Downward API's metadata.name); default: the hostname."""
    log_level: str = "info"
