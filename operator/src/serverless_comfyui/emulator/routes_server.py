"""WebSocket, system and node-info routes of the fake ComfyUI (ComfyUI 0.8.0 `server.py`)."""

from __future__ import annotations

import json
import os
import sys
import uuid
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from serverless_comfyui.emulator.keys import state_of
from serverless_comfyui.emulator.schema import MODEL_FOLDERS
from serverless_comfyui.emulator.state import EmulatorState

log = structlog.get_logger("comfyui-emulator")
routes = web.RouteTableDef()

COMFYUI_VERSION = "0.8.0"
# Versions ComfyUI 0.8.0 reported in the recording (tests/fixtures/comfyui-0.8.0/system_stats.json).
FRONTEND_VERSION = "1.35.9"
TEMPLATES_VERSION = "0.7.67"
PYTORCH_VERSION = "2.14.1+cu130"
# folder_paths.folder_names_and_paths keys (what GET /models lists).
FOLDER_NAMES = [
    "checkpoints",
    "configs",
    "loras",
    "vae",
    "text_encoders",
    "diffusion_models",
    "clip_vision",
    "style_models",
    "embeddings",
    "diffusers",
    "vae_approx",
    "controlnet",
    "gligen",
    "upscale_models",
    "latent_upscale_models",
    "custom_nodes",
    "hypernetworks",
    "photomaker",
    "classifiers",
    "model_patches",
    "audio_encoders",
]
INDEX_HTML = (
    "<!doctype html><html><head><title>ComfyUI</title></head>"
    "<body><p>ComfyUI emulator (a fake ComfyUI 0.8.0 API for tests).</p></body></html>"
)


def server_features(state: EmulatorState) -> dict[str, Any]:
    """`comfy_api.feature_flags.get_server_features()` as recorded in features.json."""
    return {
        "supports_preview_metadata": True,
        "max_upload_size": round(state.settings.max_upload_size_mb * 1024 * 1024),
        "extension": {"manager": {"supports_v4": True}},
    }


@routes.get("/ws")
async def websocket_handler(request: web.Request) -> web.WebSocketResponse:
    state = state_of(request)
    hub = state.hub
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    sid = request.rel_url.query.get("clientId", "") or uuid.uuid4().hex
    hub.attach(sid, ws)
    try:
        await ws.send_json({"type": "status", "data": {"status": state.queue_info(), "sid": sid}})
        if hub.client_id == sid and hub.last_node_id is not None:
            await ws.send_json({"type": "executing", "data": {"node": hub.last_node_id}})
        first_message = True
        async for msg in ws:
            if msg.type == aiohttp.WSMsgType.ERROR:
                log.warning("ws connection closed with exception", error=str(ws.exception()))
            elif msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                    is_dict = isinstance(data, dict)
                    if first_message and is_dict and data.get("type") == "feature_flags":
                        await hub.send("feature_flags", server_features(state), sid)
                    first_message = False
                except json.JSONDecodeError:
                    log.warning("invalid JSON received from client", sid=sid)
    finally:
        hub.detach(sid, ws)
    return ws


@routes.get("/")
async def get_root(request: web.Request) -> web.Response:
    headers = {"Cache-Control": "no-cache", "Pragma": "no-cache", "Expires": "0"}
    return web.Response(text=INDEX_HTML, content_type="text/html", headers=headers)


def _memory() -> tuple[int, int]:
    try:
        page = os.sysconf("SC_PAGE_SIZE")
        return page * os.sysconf("SC_PHYS_PAGES"), page * os.sysconf("SC_AVPHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0, 0


def emulator_argv(state: EmulatorState) -> list[str]:
    settings = state.settings
    return [
        "serverless_comfyui.emulator",
        "--host",
        settings.host,
        "--port",
        str(settings.port),
        "--data-dir",
        os.path.dirname(state.dirs.input),
    ]


@routes.get("/system_stats")
async def system_stats(request: web.Request) -> web.Response:
    state = state_of(request)
    ram_total, ram_free = _memory()
    used = state.vram_used()
    vram_total = state.settings.vram_total_bytes
    stats = {
        "system": {
            "os": sys.platform,
            "ram_total": ram_total,
            "ram_free": ram_free,
            "comfyui_version": COMFYUI_VERSION,
            "required_frontend_version": FRONTEND_VERSION,
            "installed_templates_version": TEMPLATES_VERSION,
            "required_templates_version": TEMPLATES_VERSION,
            "python_version": sys.version,
            "pytorch_version": PYTORCH_VERSION,
            "embedded_python": False,
            "argv": emulator_argv(state),
        },
        "devices": [
            {
                "name": state.settings.device_name,
                "type": "cuda",
                "index": 0,
                "vram_total": vram_total,
                "vram_free": max(0, vram_total - used),
                "torch_vram_total": used,
                "torch_vram_free": 0,
            }
        ],
    }
    return web.json_response(stats)


@routes.get("/features")
async def get_features(request: web.Request) -> web.Response:
    return web.json_response(server_features(state_of(request)))


@routes.get("/object_info")
async def get_object_info(request: web.Request) -> web.Response:
    return web.json_response(state_of(request).schema.object_info())


@routes.get("/object_info/{node_class}")
async def get_object_info_node(request: web.Request) -> web.Response:
    schema = state_of(request).schema
    node_class = request.match_info["node_class"]
    out = {node_class: schema.info(node_class)} if schema.has_class(node_class) else {}
    return web.json_response(out)


@routes.get("/embeddings")
async def get_embeddings(request: web.Request) -> web.Response:
    return web.json_response([])


@routes.get("/models")
async def list_model_types(request: web.Request) -> web.Response:
    return web.json_response(FOLDER_NAMES)


@routes.get("/models/{folder}")
async def get_models(request: web.Request) -> web.Response:
    folder = request.match_info["folder"]
    if folder not in FOLDER_NAMES:
        return web.Response(status=404)
    files = state_of(request).schema.catalog.files(folder) if folder in MODEL_FOLDERS else []
    return web.json_response(files)
