"""Thin kopf wiring: unpack kopf's kwargs, call a pure function, write status.

Importing this package registers every handler with kopf's default registry; ``hush
operator`` imports it and runs kopf. No decision is made here: see ``hush.reconcile``.
"""

from hush.handlers import accountant, dppolicy, privacybudget, startup, webhook

__all__ = ["accountant", "dppolicy", "privacybudget", "startup", "webhook"]
