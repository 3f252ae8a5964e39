"""Garbage-collector settings for the long-running server processes (the operator).

CPython's cyclic collector runs a young-generation pass every 700 net container
allocations and, every 100 of those, a full pass over every tracked object. A busy
accountant allocates a few hundred containers per charge, so with the defaults it ran ~600
young passes and several full passes of ~80 ms each (the full heap: kopf, the kubernetes
client's models, pydantic schemas) per 6,000 charges; the full passes stalled every
caller queued behind them. Two changes (docs/design/0017-garbage-collector-settings.md):

- ``gc.freeze()`` once the modules are imported: what exists at startup lives for the
  process's life, so later full passes no longer walk it.
- A young generation of 10,000 allocations (``HUSH_GC_GEN0_THRESHOLD``): fewer, cheaper
  passes in total; short-lived request objects are mostly freed by reference counting
  anyway, the collector only finds cycles.
"""

from __future__ import annotations

import gc
from collections.abc import Mapping

GEN0_THRESHOLD = 10_000
GEN0_VARIABLE = "HUSH_GC_GEN0_THRESHOLD"
# CPython's default is 700; below it the collector would run more often than stock Python.
MIN_GEN0_THRESHOLD = 700


def gen0_threshold(environ: Mapping[str, str]) -> int:
    """The young-generation threshold: ``HUSH_GC_GEN0_THRESHOLD`` or the default."""
    text = environ.get(GEN0_VARIABLE, "").strip()
    if not text:
        return GEN0_THRESHOLD
    try:
        value = int(text)
    except ValueError:
        raise ValueError(f"{GEN0_VARIABLE} must be an integer, got {text!r}") from None
    if value < MIN_GEN0_THRESHOLD:
        raise ValueError(
            f"{GEN0_VARIABLE} must be at least {MIN_GEN0_THRESHOLD} (CPython's default), "
            f"got {value}"
        )
    return value


def tune(threshold: int) -> None:
    """Freeze what startup built and set the young generation's threshold (call once,
    after the imports, before serving)."""
    gc.collect()  # what startup already dropped is not frozen forever
    gc.freeze()
    _, middle, oldest = gc.get_threshold()
    gc.set_threshold(threshold, middle, oldest)
