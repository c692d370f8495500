"""ComfyUI emulator: a fake ComfyUI 0.8.0 for tests and local runs (no GPU, no models).

It speaks ComfyUI's HTTP and WebSocket API on the paths the proxy and clients use (bare and
under `/api`): validation errors, queue, history, jobs, `/view`, uploads, interrupts and every
WebSocket message match recordings of a real ComfyUI 0.8.0 (tests/fixtures/comfyui-0.8.0).
Rendering is faked: time passes per sampler step and SaveImage writes small real PNGs.
Test-only fault injection lives under `/_emulator/`.

    settings = EmulatorSettings(data_dir=Path("/tmp/comfy"), step_seconds=0.01)
    app = create_app(settings)           # an aiohttp Application
    await run_emulator(settings)         # or serve until cancelled
"""

from serverless_comfyui.emulator.app import create_app, run_emulator
from serverless_comfyui.emulator.settings import EmulatorControls, EmulatorSettings

__all__ = ["EmulatorControls", "EmulatorSettings", "create_app", "run_emulator"]
