"""Operator settings (environment variables with the SERVERLESS_COMFYUI_ prefix)."""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings, SettingsConfigDict

from serverless_comfyui.controller.profiles import ResourceProfile, load_profiles


class OperatorSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SERVERLESS_COMFYUI_")

    namespaces: list[str] = []
    """Namespaces to watch; empty: the whole cluster."""
    profiles_file: Path | None = None
    """YAML file of resource profiles (the chart mounts one); unset: built-in defaults."""
    downloader_image: str = "ghcr.io/serverless-comfyui/devpod:0.1.0"
    """Image of the model-download Job (it runs `python -m serverless_comfyui.downloader`)."""
    downloader_node_selector: dict[str, str] = {}
    """Node selector of the model-download Job's pod (JSON); empty: any node."""
    downloader_tolerations: list[dict[str, Any]] = []
    """Tolerations of the model-download Job's pod (JSON)."""
    download_token_hosts: list[str] = []
    """Hosts besides huggingface.co / hf.co that may receive the Hugging Face token."""
    proxy_url: str = "http://serverless-comfyui-proxy:8080"
    """Base URL of the proxy, reported in each FluxWorkflow's status.endpoint."""
    resync_seconds: float = 60.0
    """Full reconcile of every FluxWorkflow this often, on top of the event-driven ones."""
    liveness_endpoint: str | None = "http://0.0.0.0:8081/healthz"
    """Where kopf serves its liveness probe; empty: none."""
    health_port: int = 8189
    """Port of the ComfyUI image's entrypoint: readiness after warm-up, liveness, drain."""

    @cached_property
    def profiles(self) -> dict[str, ResourceProfile]:
        return load_profiles(self.profiles_file)
