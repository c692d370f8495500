"""Run the proxy: `python -m serverless_comfyui.proxy`.

Settings come from `SERVERLESS_COMFYUI_PROXY_*` environment variables (settings.py). With
`SERVERLESS_COMFYUI_PROXY_STATIC_BACKENDS='{"flux": ["http://127.0.0.1:8188"]}'` it serves fixed
backends without Kubernetes; otherwise it discovers FluxWorkflows and their pods. SIGTERM and
SIGINT stop it gracefully: it stops accepting connections, closes WebSockets and gives in-flight
requests up to SHUTDOWN_SECONDS to finish.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import structlog
from aiohttp import web

from serverless_comfyui.logs import configure_logging
from serverless_comfyui.proxy.app import create_app
from serverless_comfyui.proxy.control import Control
from serverless_comfyui.proxy.registry import Registry
from serverless_comfyui.proxy.settings import ProxySettings

SHUTDOWN_SECONDS = 20.0


def make_control(settings: ProxySettings, registry: Registry) -> Control:
    if settings.static_backends:
        from serverless_comfyui.proxy.static import StaticControl

        return StaticControl(settings, registry)
    from serverless_comfyui.proxy.kube import KubeControl

    control: Control = KubeControl(settings, registry)
    return control


async def serve(settings: ProxySettings) -> None:
    log = structlog.get_logger("proxy")
    registry = Registry()
    app = create_app(settings, registry, make_control(settings, registry))
    runner = web.AppRunner(
        app,
        access_log=None,
        handle_signals=False,
        handler_cancellation=True,
        shutdown_timeout=SHUTDOWN_SECONDS,
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, settings.host, settings.port)
        await site.start()
        log.info("proxy listening", address=[str(a) for a in runner.addresses])
        await stop.wait()
        log.info("signal received, shutting down")
    finally:
        await runner.cleanup()
        log.info("proxy stopped")


def main() -> int:
    settings = ProxySettings()
    configure_logging(settings.log_level)
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
