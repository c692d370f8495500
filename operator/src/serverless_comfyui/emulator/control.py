"""Test-only control API of the fake ComfyUI, under `/_emulator/` (no real ComfyUI has it).

POST /_emulator/faults   JSON subset of EmulatorControls; answers the new state
GET  /_emulator/state    controls, queue, loaded models, counters
"""

from __future__ import annotations

import os
from typing import Any

import structlog
from aiohttp import web
from pydantic import ValidationError

from serverless_comfyui.emulator.keys import state_of
from serverless_comfyui.emulator.settings import EmulatorControls
from serverless_comfyui.emulator.state import EmulatorState

log = structlog.get_logger("comfyui-emulator")
routes = web.RouteTableDef()


def describe(state: EmulatorState) -> dict[str, Any]:
    running, pending = state.queue.current()
    return {
        "emulator": True,
        "controls": state.controls.model_dump(),
        "steps_until_crash": state.steps_until_crash,
        "queue_running": [item[1] for item in running],
        "queue_pending": [item[1] for item in pending],
        "history_size": len(state.queue.history),
        "next_number": state.number,
        "loaded_models": sorted(state.loaded_models),
        "interrupt_requested": state.interrupt_requested,
        "prompts_executed": state.prompts_executed,
        "steps_executed": state.steps_executed,
        "sockets": sorted(state.hub.sockets),
        "data_dir": os.path.dirname(state.dirs.input),
    }


@routes.get("/_emulator/state")
async def get_state(request: web.Request) -> web.Response:
    return web.json_response(describe(state_of(request)))


@routes.post("/_emulator/faults")
async def post_faults(request: web.Request) -> web.Response:
    state = state_of(request)
    try:
        body = await request.json()
    except ValueError:
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    if not isinstance(body, dict):
        return web.json_response({"error": "body must be a JSON object"}, status=400)
    try:
        controls = EmulatorControls.model_validate({**state.controls.model_dump(), **body})
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_context=False, include_input=False)
        return web.json_response({"error": "invalid faults", "details": errors}, status=400)
    state.controls = controls
    if "crash_after_steps" in body:
        state.arm_crash(controls.crash_after_steps)
    log.info("faults updated", changes=body)
    return web.json_response(describe(state))
