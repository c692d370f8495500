"""Configuration of the ComfyUI emulator (a fake ComfyUI 0.8.0 for tests and local runs).

`EmulatorSettings` is read once at start from `EMULATOR_*` environment variables and CLI flags.
`EmulatorControls` is the part that tests may change at runtime through `POST /_emulator/faults`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

# The Flux.1 model files the emulator "has" unless told otherwise (see architecture notes).
FLUX_DIFFUSION_MODELS = ["flux1-dev.safetensors", "flux1-schnell.safetensors"]
FLUX_TEXT_ENCODERS = [
    "clip_l.safetensors",
    "t5xxl_fp16.safetensors",
    "t5xxl_fp8_e4m3fn.safetensors",
]
FLUX_VAES = ["ae.safetensors"]

StrList = Annotated[list[str], NoDecode]


def _as_list(value: Any) -> Any:
    """Accept a JSON list or a comma-separated string (handy in env vars and pod annotations)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


class EmulatorSettings(BaseSettings):
    """Start-up configuration of the fake ComfyUI (env prefix `EMULATOR_`)."""

    model_config = SettingsConfigDict(env_prefix="EMULATOR_", extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=8188, ge=0, le=65535)
    data_dir: Path | None = Field(
        default=None, description="holds input/, output/, temp/; a temporary directory if unset"
    )
    models_dir: Path | None = Field(
        default=None,
        description="a ComfyUI-style models/ directory; when set, model lists come from it",
    )
    step_seconds: float = Field(default=0.05, ge=0)
    model_load_seconds: float = Field(default=0.0, ge=0)
    startup_delay_seconds: float = Field(default=0.0, ge=0)
    fail_next_prompts: int = Field(default=0, ge=0)
    crash_after_steps: int | None = Field(default=None, ge=1)
    http_500_paths: StrList = Field(default_factory=list)
    diffusion_models: StrList = Field(default_factory=lambda: list(FLUX_DIFFUSION_MODELS))
    text_encoders: StrList = Field(default_factory=lambda: list(FLUX_TEXT_ENCODERS))
    vae: StrList = Field(default_factory=lambda: list(FLUX_VAES))
    loras: StrList = Field(default_factory=list)
    checkpoints: StrList = Field(default_factory=list)
    max_image_side: int = Field(
        default=64, ge=1, description="images are scaled down so that no side exceeds this"
    )
    max_upload_size_mb: float = Field(default=100.0, gt=0)
    device_name: str = "cuda:0 NVIDIA H100 80GB HBM3 : cudaMallocAsync"
    vram_total_bytes: int = Field(default=85_029_158_912, ge=0)
    log_level: str = "info"

    @field_validator(
        "http_500_paths",
        "diffusion_models",
        "text_encoders",
        "vae",
        "loras",
        "checkpoints",
        mode="before",
    )
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _as_list(value)

    def controls(self) -> EmulatorControls:
        return EmulatorControls(
            step_seconds=self.step_seconds,
            model_load_seconds=self.model_load_seconds,
            fail_next_prompts=self.fail_next_prompts,
            crash_after_steps=self.crash_after_steps,
            http_500_paths=list(self.http_500_paths),
        )


class EmulatorControls(BaseModel):
    """Test-only knobs, changeable while running via `POST /_emulator/faults`."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    step_seconds: float = Field(default=0.05, ge=0)
    model_load_seconds: float = Field(default=0.0, ge=0)
    fail_next_prompts: int = Field(default=0, ge=0)
    crash_after_steps: int | None = Field(default=None, ge=1)
    http_500_paths: list[str] = Field(default_factory=list)

    @field_validator("http_500_paths", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        return _as_list(value)
