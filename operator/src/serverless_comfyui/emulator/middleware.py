"""Middlewares of the fake ComfyUI: ComfyUI's Origin check and the injected-500 fault."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import urllib.parse

import structlog
from aiohttp import web
from aiohttp.typedefs import Handler

from serverless_comfyui.emulator.keys import state_of

log = structlog.get_logger("comfyui-emulator")
CONTROL_PREFIX = "/_emulator/"
INTERNAL_ERROR_TEXT = "500 Internal Server Error\n\nServer got itself in trouble"


async def is_loopback(host: str | None) -> bool:
    """`server.is_loopback`: an IP literal, or a name that resolves only to loopback."""
    if host is None:
        return False
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    loop = asyncio.get_running_loop()
    loopback = False
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            infos = await loop.getaddrinfo(host, None, family=family, type=socket.SOCK_STREAM)
        except socket.gaierror:
            continue
        for info in infos:
            if not ipaddress.ip_address(str(info[4][0]).split("%")[0]).is_loopback:
                return loopback
            loopback = True
    return loopback


@web.middleware
async def origin_only_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """`create_origin_only_middleware`: 403 when Origin and Host differ on a loopback host."""
    if "Host" in request.headers and "Origin" in request.headers:
        host_domain: str | None = request.headers["Host"].lower()
        parsed = urllib.parse.urlparse(request.headers["Origin"])
        origin_domain: str | None = parsed.netloc.lower()
        host_parsed = urllib.parse.urlsplit("//" + str(host_domain))
        loopback = await is_loopback(host_parsed.hostname)
        if parsed.port is None:  # origin without a port: compare host names only
            host_domain = host_parsed.hostname
        if host_parsed.port is None:
            origin_domain = parsed.hostname
        if loopback and host_domain and origin_domain and host_domain != origin_domain:
            log.warning(
                "request with non matching host and origin, returning 403",
                host=host_domain,
                origin=origin_domain,
            )
            return web.Response(status=403)
    if request.method == "OPTIONS":
        return web.Response()
    return await handler(request)


def _matches(path: str, patterns: list[str]) -> bool:
    for pattern in patterns:
        for candidate in (pattern, "/api" + pattern):
            if candidate.endswith("*") and path.startswith(candidate[:-1]):
                return True
            if path == candidate:
                return True
    return False


@web.middleware
async def fault_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """The `http_500_paths` fault: answer ComfyUI's bare 500 on the listed paths.

    A listed path also matches its `/api` twin; a trailing `*` matches a prefix. The emulator's
    own `/_emulator/` control routes are never affected.
    """
    paths = state_of(request).controls.http_500_paths
    if not request.path.startswith(CONTROL_PREFIX) and _matches(request.path, paths):
        return web.Response(status=500, text=INTERNAL_ERROR_TEXT)
    return await handler(request)
