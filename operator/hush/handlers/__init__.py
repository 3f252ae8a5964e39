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

# The watch-event handlers (``kopf.on.event``): they run for every event of every watched
# object, so ``hush operator`` keeps kopf's per-event success lines for them out of the log.
WATCH_EVENT_HANDLERS = (
    "privacybudget_changed",
    "dppolicy_forget_cached",
    "rollout_policy",
    "rollout_deployment",
    "rollout_statefulset",
    "rollout_daemonset",
    "rollout_pod",
    "webhook_policy_cache",
)

__all__ = [
    "WATCH_EVENT_HANDLERS",
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
