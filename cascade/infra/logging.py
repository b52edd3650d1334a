"""structlog set-up shared by the worker, the webhooks service and the CLI.

Standard-library records (Temporal's `workflow.logger` and `activity.logger`, uvicorn)
go through the same processors, so every line has one format and carries the bound
workflow id, customer id and channel.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SHARED_PROCESSORS: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.stdlib.ExtraAdder(),
]


def configure_logging(level: str = "INFO", fmt: str = "auto") -> None:
    """Route structlog and stdlib logging to stderr, JSON or pretty by `fmt`."""
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer() if use_json else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        # filter_by_level first: a line below the level is dropped before the other
        # processors (time stamp, context merge) run; without it every `log.info` of the
        # event path paid for them at WARNING too (9 % of a 500-event batch's CPU).
        processors=[
            structlog.stdlib.filter_by_level,
            *_SHARED_PROCESSORS,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED_PROCESSORS,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # The SDK's own chatter about pollers is noise at INFO.
    logging.getLogger("temporalio.worker._worker").setLevel(logging.WARNING)
    # Alembic announces its SQL dialect at INFO on every start; in JSON logs (collected by
    # machines) those lines only open every log with noise. Its warnings still come through.
    if use_json:
        logging.getLogger("alembic").setLevel(max(logging.WARNING, root.level))


def get_logger(name: str | None = None, **bound: Any) -> structlog.stdlib.BoundLogger:
    """A structlog logger with `bound` key/values on every line it writes."""
    logger: structlog.stdlib.BoundLogger = structlog.get_logger(name)
    return logger.bind(**bound) if bound else logger
