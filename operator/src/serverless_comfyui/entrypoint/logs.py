"""Structured logs of the entrypoint: one JSON object a line on stderr (ComfyUI's own output,
inherited by the child, is interleaved as plain text)."""

from __future__ import annotations

import structlog

LOGGER_NAME = "entrypoint"


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger(LOGGER_NAME)
    return logger
