"""aiohttp application keys of the fake ComfyUI."""

from __future__ import annotations

from aiohttp import web

from serverless_comfyui.emulator.state import EmulatorState

STATE = web.AppKey("comfyui_emulator_state", EmulatorState)


def state_of(request: web.Request) -> EmulatorState:
    return request.app[STATE]
