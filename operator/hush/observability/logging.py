"""Structured logs: every line a JSON object (or a readable line for humans at a terminal).

Both Hush's own loggers and kopf's go through structlog's ``ProcessorFormatter``, so a log
pipeline sees one format. Log calls pass identifiers (budget, team, request id, sequence,
head hash), never a query answer or a covered field's value.
"""

from __future__ import annotations

import logging
from typing import Literal

import structlog

LogFormat = Literal["json", "text"]


# kopf attaches these to every record as `extra`; they are noise (or huge) in a log line.
_KOPF_NOISE = ("settings", "k8s_skip")


def _drop_kopf_noise(
    _: object, __: str, event: structlog.types.EventDict
) -> structlog.types.EventDict:
    for key in _KOPF_NOISE:
        event.pop(key, None)
    reference = event.pop("k8s_ref", None)
    if isinstance(reference, dict):
        event["object"] = (
            f"{reference.get('kind')}/{reference.get('namespace', '')}/{reference.get('name')}"
        )
    return event


def configure(*, level: int = logging.INFO, log_format: LogFormat = "json") -> None:
    shared: list[structlog.types.Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(),
        _drop_kopf_noise,
    ]
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer()
        if log_format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
