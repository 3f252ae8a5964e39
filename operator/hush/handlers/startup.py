"""Operator-wide kopf settings, applied once at startup.

Each setting names why it is not kopf's default.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from hush.handlers import diffbase

ANNOTATION_PREFIX = "operator.hush.dev"


@kopf.on.startup(id="operator_configure")
def operator_configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    # kopf's default progress storage also writes status.kopf, which our structural CRD
    # schemas prune; the resulting never-settling writes loop. Annotations only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=ANNOTATION_PREFIX
    )
    # kopf's own class, except that it does not deep-copy the status (the ledger) of every
    # watch event only to drop it (hush.handlers.diffbase).
    settings.persistence.diffbase_storage = diffbase.StatuslessDiffBaseStorage(
        prefix=ANNOTATION_PREFIX, key="last-handled-configuration"
    )
    # Events for every handler success are noise in `kubectl describe`; keep warnings.
    settings.posting.level = logging.WARNING
    # Long watches silently stall behind some load balancers; bound them so that kopf
    # reconnects (nolar/kopf#232, #585).
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    settings.watching.connect_timeout = 30
    # Spread the API load a little on restart without delaying first reconciliation.
    settings.queueing.worker_limit = 20
    # Watch only injected pods, filtered by the apiserver: the rollout handler's label filter
    # alone is client-side, so without this the operator would deserialise every pod event
    # of the cluster (measured: 1.6x pod-creation latency on a busy 2-core host,
    # docs/benchmarks.md "Admission").
    settings.watching.label_selectors["pods"] = "hush.dev/policy"
