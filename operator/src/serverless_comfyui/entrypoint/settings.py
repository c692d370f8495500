"""Configuration of the ComfyUI pod entrypoint: environment variables, no prefix.

The operator sets `COMFYUI_PORT`, `HEALTH_PORT` and `WARMUP_WORKFLOW` on the pod; the image
sets nothing else, so every other value here is a default that suits a Flux pod on an H100.
"""

from __future__ import annotations

import glob
import shlex
from pathlib import Path
from string import Template
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

COMFYUI_HOME = "/opt/ComfyUI"
EXTRA_MODEL_PATHS = "/opt/serverless-comfyui/extra_model_paths.yaml"
DEFAULT_COMFYUI_COMMAND = (
    f"python {COMFYUI_HOME}/main.py --listen 0.0.0.0 --port ${{COMFYUI_PORT}}"
    f" --disable-auto-launch --extra-model-paths-config {EXTRA_MODEL_PATHS}"
    " --temp-directory /tmp"
)
"""ComfyUI 0.8.0's own flags (`comfy/cli_args.py`): listen on every IPv4 address (the kubelet
probes and the proxy reach the pod IP), never try to open a browser, read the model folder
layout of the mounted claim (kept outside ComfyUI's tree, which ComfyUI would otherwise load a
second time from `<ComfyUI>/extra_model_paths.yaml`), and keep temporary files on the pod's
`/tmp` emptyDir (ComfyUI uses `/tmp/temp`)."""


class EntrypointSettings(BaseSettings):
    """Environment of `python -m serverless_comfyui.entrypoint` (names as written, no prefix)."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    comfyui_port: int = Field(default=8188, ge=1, le=65535)
    comfyui_command: str = Field(
        default=DEFAULT_COMFYUI_COMMAND,
        description="ComfyUI's command line, shlex-split; `${COMFYUI_PORT}` is substituted",
    )
    comfyui_url: str | None = Field(
        default=None, description="where the entrypoint reaches ComfyUI; default 127.0.0.1:port"
    )
    health_host: str = "0.0.0.0"
    health_port: int = Field(default=8189, ge=0, le=65535)
    warmup_workflow: Path | None = Field(
        default=None,
        description="JSON file: a ComfyUI API-format graph run once before the pod is Ready",
    )
    warmup_timeout_seconds: float = Field(default=1800.0, gt=0)
    warmup_retry_seconds: float = Field(default=5.0, gt=0, description="first retry delay")
    warmup_retry_max_seconds: float = Field(default=60.0, gt=0, description="retry delay cap")
    startup_timeout_seconds: float = Field(default=1800.0, gt=0)
    drain_timeout_seconds: float = Field(default=590.0, ge=0)
    drain_poll_seconds: float = Field(default=0.5, gt=0)
    drain_outputs_seconds: float = Field(
        default=10.0,
        ge=0,
        description="after a drain that waited for prompts, ComfyUI keeps serving this long so"
        " their clients fetch the outputs (/history, /view) before the container stops",
    )
    child_stop_timeout_seconds: float = Field(
        default=10.0, ge=0, description="SIGTERM to SIGKILL, when the container is stopped"
    )
    comfyui_down_after_seconds: float = Field(
        default=10.0, gt=0, description="readyz says comfyui_down after this long unanswered"
    )
    liveness_stale_seconds: float = Field(
        default=30.0, gt=0, description="livez fails after ComfyUI is unanswered this long"
    )
    exit_linger_seconds: float = Field(
        default=1.0, ge=0, description="health server stays up this long after the child died"
    )
    comfyui_device: Literal["auto", "cpu", "gpu"] = Field(
        default="auto",
        description="auto: ComfyUI runs on CPU (`--cpu`) when no NVIDIA device is present",
    )
    nvidia_devices: str = Field(
        default="/dev/nvidia[0-9]*",
        description="glob of the device files the NVIDIA container toolkit adds to a GPU pod",
    )
    log_level: str = "info"

    @field_validator("warmup_workflow", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        if isinstance(value, str) and not value.strip():
            return None
        return value

    def command(self) -> list[str]:
        """`COMFYUI_COMMAND` with `$COMFYUI_PORT` / `$HEALTH_PORT` filled in, shlex-split."""
        text = Template(self.comfyui_command).safe_substitute(
            COMFYUI_PORT=str(self.comfyui_port), HEALTH_PORT=str(self.health_port)
        )
        argv = shlex.split(text)
        if not argv:
            raise ValueError("COMFYUI_COMMAND is empty")
        if self.runs_on_cpu() and "--cpu" not in argv:
            argv.append("--cpu")
        return argv

    def runs_on_cpu(self) -> bool:
        """ComfyUI without `--cpu` on a machine with no GPU exits at start (no CUDA device)."""
        if self.comfyui_device != "auto":
            return self.comfyui_device == "cpu"
        return not glob.glob(self.nvidia_devices)

    def base_url(self) -> str:
        return (self.comfyui_url or f"http://127.0.0.1:{self.comfyui_port}").rstrip("/")
