"""Run the ComfyUI pod entrypoint, or ask a running one to drain.

    python -m serverless_comfyui.entrypoint        # supervise ComfyUI (the image's ENTRYPOINT)
    python -m serverless_comfyui.entrypoint drain [--url http://127.0.0.1:8189] [--timeout S]

Configuration comes from the environment: see `EntrypointSettings` and images/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import sys

from pydantic import ValidationError

from serverless_comfyui.entrypoint import drain
from serverless_comfyui.entrypoint.app import Entrypoint
from serverless_comfyui.entrypoint.logs import get_logger
from serverless_comfyui.entrypoint.settings import EntrypointSettings
from serverless_comfyui.logs import configure_logging


def parse_args(argv: list[str] | None, prog: str | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=prog or "python -m serverless_comfyui.entrypoint",
        description="Supervise ComfyUI: ready only once warm, drain before stop.",
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("run", help="start and supervise ComfyUI (the default)")
    drain_parser = sub.add_parser("drain", help="ask the running entrypoint to drain (preStop)")
    drain_parser.add_argument(
        "--url", default=None, help="the health server (default http://127.0.0.1:$HEALTH_PORT)"
    )
    drain_parser.add_argument(
        "--timeout", type=float, default=None, help="give up after S seconds (default: never)"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = parse_args(argv, prog)
    if args.command == "drain":
        return drain.main(args.url, args.timeout)
    try:
        settings = EntrypointSettings()
        settings.command()
    except (ValidationError, ValueError) as exc:
        configure_logging()
        get_logger().error("invalid configuration", error=str(exc))
        return 2
    configure_logging(settings.log_level)
    return asyncio.run(Entrypoint(settings).run())


if __name__ == "__main__":
    sys.exit(main())
