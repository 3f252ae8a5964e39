"""Running the accountant inside the operator process: options, start, stop.

The operator's kopf handlers and the HTTPS server share one ``WriterRegistry``, so every
write to a PrivacyBudget's status, whether a charge or a spec change, goes through the
same per-budget queue and compare-and-swap.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from hush.accountant import server, writer
from hush.api import common
from hush.kube import client

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """How the operator serves the accountant (from ``hush operator`` flags)."""

    port: int | None = None  # None: do not serve (reconciliation only)
    host: str = "0.0.0.0"  # noqa: S104 - in a pod, the Service reaches it on the pod IP
    tls_cert: Path | None = None
    tls_key: Path | None = None
    audience: str = server.AUDIENCE


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


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Service:
    """The writer registry plus, when configured, the HTTPS server."""

    def __init__(self, options: Options) -> None:
        self.options = options
        self.writers = writer.WriterRegistry(writer.KubeBudgetStore(), clock=_utc_now)
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        if self.options.port is None:
            return
        accountant = server.Accountant(KubeCluster(), self.writers, audience=self.options.audience)
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

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.writers.stop()

    def _ssl_context(self) -> ssl.SSLContext:
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
