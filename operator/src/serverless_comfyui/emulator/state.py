"""Shared state of one fake ComfyUI instance (what `PromptServer` and its queue hold)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from serverless_comfyui.emulator.files import DataDirs
from serverless_comfyui.emulator.hub import SocketHub
from serverless_comfyui.emulator.prompt_queue import PromptQueue
from serverless_comfyui.emulator.schema import (
    ModelCatalog,
    NodeSchema,
    list_input_images,
    load_recorded_object_info,
)
from serverless_comfyui.emulator.settings import EmulatorControls, EmulatorSettings

# Sizes of the Flux.1 files (architecture notes), used to fake VRAM use in /system_stats.
MODEL_BYTES = {
    "flux1-dev.safetensors": 23_800_000_000,
    "flux1-schnell.safetensors": 23_800_000_000,
    "t5xxl_fp8_e4m3fn.safetensors": 4_900_000_000,
    "t5xxl_fp16.safetensors": 9_800_000_000,
    "clip_l.safetensors": 246_000_000,
    "ae.safetensors": 335_000_000,
}
DEFAULT_MODEL_BYTES = 1_000_000_000


@dataclass
class EmulatorState:
    settings: EmulatorSettings
    controls: EmulatorControls
    dirs: DataDirs
    schema: NodeSchema
    hub: SocketHub
    queue: PromptQueue
    number: int = 0  # PromptServer.number: the next prompt number
    interrupt_requested: bool = False  # nodes.interrupt_processing()
    loaded_models: set[str] = field(default_factory=set)
    steps_until_crash: int | None = None
    steps_executed: int = 0
    prompts_executed: int = 0
    tmpdir: tempfile.TemporaryDirectory[str] | None = None

    def queue_info(self) -> dict[str, Any]:
        return {"exec_info": {"queue_remaining": self.queue.tasks_remaining()}}

    def queue_updated(self) -> None:
        self.hub.send_sync("status", {"status": self.queue_info()})

    def vram_used(self) -> int:
        return sum(MODEL_BYTES.get(name, DEFAULT_MODEL_BYTES) for name in self.loaded_models)

    def arm_crash(self, steps: int | None) -> None:
        self.steps_until_crash = steps


def build_state(settings: EmulatorSettings) -> EmulatorState:
    tmpdir = None
    root = settings.data_dir
    if root is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="comfyui-emulator-")
        root = Path(tmpdir.name)
    dirs = DataDirs.under(root)
    schema = NodeSchema(
        load_recorded_object_info(), ModelCatalog(settings), lambda: list_input_images(dirs.input)
    )
    hub = SocketHub()
    state = EmulatorState(
        settings=settings,
        controls=settings.controls(),
        dirs=dirs,
        schema=schema,
        hub=hub,
        queue=PromptQueue(lambda: None),
        tmpdir=tmpdir,
    )
    state.queue.on_update = state.queue_updated
    state.arm_crash(settings.crash_after_steps)
    return state
