"""Structured logs for every process of ours (proxy, entrypoint, emulator): one JSON object a
line on stderr. Standard-library loggers (aiohttp, kubernetes) only show warnings and errors."""

from __future__ import annotations

import logging
import sys

import structlog


def configure_logging(level_name: str = "info") -> None:
    level = logging.getLevelName(level_name.upper())
    level = level if isinstance(level, int) else logging.INFO
    logging.basicConfig(stream=sys.stderr, level=max(level, logging.WARNING))
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
