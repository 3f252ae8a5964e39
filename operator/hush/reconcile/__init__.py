"""Pure reconciliation: from a resource (and what it refers to) to the status it should have.

Nothing here talks to the API or reads a clock: callers pass ``now`` and lookups in, so
every decision is a unit-testable function. kopf wiring lives in ``hush.handlers``.
"""
