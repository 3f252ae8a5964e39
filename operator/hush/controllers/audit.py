"""The background audit inside the operator: a violation gauge, refreshed periodically.

Admission judges writes only; workloads that predate enforcement (or live in ``audit``
namespaces) are found by ``hush.admission.audit.scan`` and counted in
``hush_audit_violations{namespace, mode, rule}``. Every ``interval`` seconds the scan runs
in a worker thread (it is a handful of list calls per enforced namespace); series of
namespaces that are no longer enforced are removed, so the gauge never reports a stale
count. The same scan is ``hush audit`` on the command line.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from hush.admission import audit
from hush.kube import client
from hush.observability import metrics

logger = logging.getLogger(__name__)

DEFAULT_INTERVAL_SECONDS = 60.0


class AuditLoop:
    def __init__(
        self,
        *,
        hush_namespace: str,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        scan: Callable[[], audit.AuditReport] | None = None,
    ) -> None:
        self._interval = interval
        self._scan = scan or (
            lambda: audit.scan(list_objects=client.list_objects, hush_namespace=hush_namespace)
        )
        self._task: asyncio.Task[None] | None = None
        self._series: set[tuple[str, str, str]] = set()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def run_once(self) -> audit.AuditReport:
        report = await asyncio.to_thread(self._scan)
        counts = audit.count_violations(report)
        current: set[tuple[str, str, str]] = {
            (ns, str(mode), str(rule)) for ns, mode, rule in counts
        }
        for gone in self._series - current:
            metrics.AUDIT_VIOLATIONS.remove(*gone)
        for (namespace, mode, rule), count in counts.items():
            metrics.AUDIT_VIOLATIONS.labels(namespace, mode, rule).set(count)
        self._series = current
        return report

    async def _run(self) -> None:
        while True:
            try:
                report = await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("Background audit failed; retrying in %.0f s", self._interval)
            else:
                if report.findings:
                    logger.info(
                        "Audited %d enforced namespace(s): %d violation(s)",
                        len(report.namespaces),
                        len(report.findings),
                    )
            await asyncio.sleep(self._interval)


_loop: AuditLoop | None = None


def configure(loop: AuditLoop | None) -> None:
    """Called by ``hush operator`` before kopf starts (None: no background audit)."""
    global _loop
    _loop = loop


def current() -> AuditLoop | None:
    return _loop
