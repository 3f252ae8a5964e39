"""kopf's per-event success lines for watch-event handlers stay out of the operator's log."""

from __future__ import annotations

import logging

import kopf

from hush import handlers
from hush.observability import logging as structured_logging


def _record(name: str, level: int, message: str) -> logging.LogRecord:
    return logging.LogRecord(name, level, __file__, 1, message, None, None)


def test_only_the_listed_handlers_success_lines_are_dropped() -> None:
    quiet = structured_logging.QuietWatchHandlers(["rollout_pod"])
    assert not quiet.filter(
        _record("kopf.objects", logging.INFO, "Handler 'rollout_pod' succeeded.")
    )
    # Another handler's success, a failure of the quiet one, another logger: all kept.
    for record in (
        _record("kopf.objects", logging.INFO, "Handler 'privacybudget_reconcile' succeeded."),
        _record("kopf.objects", logging.ERROR, "Handler 'rollout_pod' failed with an exception."),
        _record("hush.rollout", logging.INFO, "Handler 'rollout_pod' succeeded."),
    ):
        assert quiet.filter(record)


def test_the_list_is_every_watch_event_handler_and_nothing_else() -> None:
    registry = kopf.get_default_registry()
    watching = {handler.id for handler in registry._watching.get_all_handlers()}
    assert set(handlers.WATCH_EVENT_HANDLERS) == watching
