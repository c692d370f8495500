"""Run the ComfyUI emulator (a fake ComfyUI 0.8.0 API) as its own process.

    python -m serverless_comfyui.emulator --host 127.0.0.1 --port 8188 --data-dir DIR \
        [--step-seconds 0.05] [--model-load-seconds 0] [--models-dir DIR]

Every setting can also come from an `EMULATOR_<NAME>` environment variable; flags win.
SIGTERM and SIGINT stop it cleanly (exit 0).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import structlog

from serverless_comfyui.emulator.app import run_emulator
from serverless_comfyui.emulator.settings import EmulatorSettings
from serverless_comfyui.logs import configure_logging


def parse_args(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        prog="python -m serverless_comfyui.emulator",
        description="A fake ComfyUI 0.8.0 (HTTP + WebSocket API) for tests and local runs.",
    )
    parser.add_argument("--host", "--listen", dest="host")
    parser.add_argument("--port", type=int)
    parser.add_argument("--data-dir", dest="data_dir")
    parser.add_argument("--models-dir", dest="models_dir")
    parser.add_argument("--step-seconds", dest="step_seconds", type=float)
    parser.add_argument("--model-load-seconds", dest="model_load_seconds", type=float)
    parser.add_argument("--startup-delay-seconds", dest="startup_delay_seconds", type=float)
    parser.add_argument("--fail-next-prompts", dest="fail_next_prompts", type=int)
    parser.add_argument("--crash-after-steps", dest="crash_after_steps", type=int)
    parser.add_argument("--max-image-side", dest="max_image_side", type=int)
    parser.add_argument("--log-level", dest="log_level")
    # ComfyUI's own flag (the entrypoint adds it where there is no NVIDIA device): no effect.
    parser.add_argument("--cpu", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    del args.cpu
    return {key: value for key, value in vars(args).items() if value is not None}


async def _serve(settings: EmulatorSettings) -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, task.cancel)
    try:
        await run_emulator(settings)
    except asyncio.CancelledError:
        structlog.get_logger("comfyui-emulator").info("signal received, shutting down")


def main(argv: list[str] | None = None) -> int:
    settings = EmulatorSettings(**parse_args(argv))
    configure_logging(settings.log_level)
    asyncio.run(_serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
