"""Thin kopf wiring: unpack kopf's kwargs, call a pure function, write status.

Importing this package registers every handler with kopf's default registry; ``hush
operator`` imports it and runs kopf. No decision is made here: see ``hush.reconcile``.
"""

# ``certificates`` before ``webhook``: kopf runs startup handlers in registration order, and
# the webhook server listens with the certificate that the keeper loads first.
from hush.handlers import (
    accountant,
    accountant_ca,
    audit,
    certificates,
    dppolicy,
    privacybudget,
    rollout,
    startup,
    webhook,
)

__all__ = [
    "accountant",
    "accountant_ca",
    "audit",
    "certificates",
    "dppolicy",
    "privacybudget",
    "rollout",
    "startup",
    "webhook",
]
