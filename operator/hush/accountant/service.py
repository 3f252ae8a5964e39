"""Running the accountant inside the operator process: options, start, stop.

The operator's kopf handlers and the HTTPS server share one ``WriterRegistry``, so every
write to a PrivacyBudget's status, whether a charge or a spec change, goes through the
same per-budget queue and compare-and-swap.

With leader election (``Options.leader_election``), the ``leadership.Elector`` is the one
source of truth for "may this replica spend": the server asks it on every request (503
"standby" and a 503 ``/readyz`` otherwise) and the writers ask it before every batch; when
leadership is lost, queued spends are failed at once. Reconciliation (refreshes) runs in
every replica regardless: see docs/design/0008-leader-election.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web

from hush.accountant import alerts, leadership, server, writer
from hush.api import common
from hush.kube import client

logger = logging.getLogger(__name__)


class TlsKeeper(Protocol):
    """What keeps the accountant's serving certificate current (``hush.webhook.certificates
    .Keeper``, built by ``hush operator``): ``start`` loads the first certificate into
    ``ssl_context`` and reloads it in place when it is renewed, so new TLS connections get
    the new leaf while open ones (and the charges on them) keep theirs."""

    @property
    def ssl_context(self) -> ssl.SSLContext: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """How the operator serves the accountant (from ``hush operator`` flags)."""

    port: int | None = None  # None: do not serve (reconciliation only)
    host: str = "0.0.0.0"  # noqa: S104 - in a pod, the Service reaches it on the pod IP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    # Preferred over tls_cert/tls_key (which are loaded once): the context it keeps.
    tls_keeper: TlsKeeper | None = None
    audience: str = server.AUDIENCE
    leader_election: leadership.Settings | None = None  # None: always the active accountant


class KubeCluster:
    """``server.Cluster`` over the real API."""

    async def review_token(self, token: str, audiences: list[str]) -> Mapping[str, Any]:
        return await asyncio.to_thread(client.review_token, token, audiences)

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await asyncio.to_thread(client.read_pod, namespace, name)

    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await asyncio.to_thread(
            client.read_custom,
            group=common.API_GROUP,
            version=common.API_VERSION,
            plural="dppolicies",
            namespace=namespace,
            name=name,
        )


async def _post_alerts(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Warning Events when a budget crosses an alert threshold or is exhausted."""
    for alert in alerts.alerts(before.get("status") or {}, after.get("status") or {}):
        try:
            await asyncio.to_thread(
                client.create_event, involved=after, reason=alert.reason, message=alert.message
            )
        except Exception:  # an Event is best effort; the charge is already durable
            logger.exception("Failed to post Event %s", alert.reason)
        else:
            logger.warning(
                "Posted %s Event for PrivacyBudget %s", alert.reason, after["metadata"]["name"]
            )


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


STANDBY_REFUSAL = "This replica is not the active accountant (standby); retry"


class Service:
    """The writer registry plus, when configured, the leader elector and the HTTPS server."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.writers = writer.WriterRegistry(
            writer.KubeBudgetStore(),
            clock=_utc_now,
            on_written=_post_alerts,
            spending_refusal=self._spending_refusal,
        )
        self.elector: leadership.Elector | None = None
        if options.leader_election is not None:
            timeout = options.leader_election.timing.request_timeout
            self.elector = leadership.Elector(
                leadership.KubeLeaseStore(timeout=timeout),
                options.leader_election,
                pods=leadership.KubePodStore(timeout=timeout),
                on_started_leading=self.writers.forget_cached,
                on_stopped_leading=lambda: self.writers.fail_queued_spends(STANDBY_REFUSAL),
            )
        self._runner: web.AppRunner | None = None
        self._accountant: server.Accountant | None = None

    def is_leader(self) -> bool:
        return self.elector is None or self.elector.is_leader()

    def _spending_refusal(self) -> str | None:
        return None if self.is_leader() else STANDBY_REFUSAL

    async def start(self) -> None:
        if self.elector is not None:
            self.elector.start()
        if self.options.port is None:
            return
        if self.options.tls_keeper is not None:
            # The first certificate before listening; an error here fails the startup
            # handler and kopf retries it.
            await self.options.tls_keeper.start()
        accountant = self._accountant = server.Accountant(
            KubeCluster(), self.writers, audience=self.options.audience, is_leader=self.is_leader
        )
        self._runner = web.AppRunner(accountant.application(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(
            self._runner,
            self.options.host,
            self.options.port,
            ssl_context=self._ssl_context(),
        )
        await site.start()
        logger.info("Started accountant on %s:%s", self.options.host, self.options.port)

    def forget_policy(self, namespace: str, name: str) -> None:
        """Called on every DPPolicy watch event so that no charge sees a stale policy."""
        if self._accountant is not None:
            self._accountant.forget_policy(namespace, name)

    async def stop(self) -> None:
        # Stop answering, then stop writing, then hand the lease over: a standby takes over
        # at its next look instead of after the lease expires.
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.writers.stop()
        if self.elector is not None:
            await self.elector.stop()
        if self.options.tls_keeper is not None:
            await self.options.tls_keeper.stop()

    def _ssl_context(self) -> ssl.SSLContext:
        if self.options.tls_keeper is not None:
            return self.options.tls_keeper.ssl_context
        if self.options.tls_cert is None or self.options.tls_key is None:
            raise ValueError("The accountant needs --accountant-tls-cert and --accountant-tls-key")
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.options.tls_cert, self.options.tls_key)
        return context


_service: Service | None = None


def configure(options: Options) -> None:
    """Called by ``hush operator`` before kopf starts."""
    global _service
    _service = Service(options)


def current() -> Service:
    """The process's service (configured with defaults if ``configure`` was not called)."""
    global _service
    if _service is None:
        _service = Service(Options())
    return _service
