"""Running the webhook server inside the operator process: options, start, stop.

Every replica serves webhooks (there is no leader for admission: decisions are pure
functions of the request and a lookup), so a rolling restart of the operator never leaves
the apiserver without an answer while another replica is Ready.

The TLS context is created by the caller (from files, or the certificate keeper that
renews the serving certificate in place); this module only serves with it.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import copy
import dataclasses
import functools
import logging
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from aiohttp import web

from hush.admission import mutation
from hush.api import common
from hush.kube import client
from hush.webhook import server

logger = logging.getLogger(__name__)
_T = TypeVar("_T")


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    port: int | None = None  # None: do not serve webhooks
    host: str = "0.0.0.0"  # noqa: S104 - in a pod, the Service reaches it on the pod IP
    ssl_context: Callable[[], ssl.SSLContext] | None = None
    injection: mutation.Settings | None = None
    validate: server.Validate | None = None


class PolicyCache:
    """The DPPolicies the operator's watch has delivered, for the injector's lookups.

    An annotated pod's policy is read from here, not with a GET per pod: the watch that the
    operator keeps anyway (kopf) feeds it, as an informer's cache would. A policy the watch
    has not delivered yet (the operator just started, or the policy was created a moment
    ago) is read from the apiserver. The cache can be behind the apiserver by the watch's
    delay, milliseconds: a pod admitted in that window gets the previous version of a
    policy that just changed, exactly as a pod admitted just before the change, and the
    rollout of the change replaces it (``hush.rollout``).
    """

    def __init__(self) -> None:
        self._policies: dict[tuple[str, str], dict[str, Any]] = {}

    def observe(self, event_type: str | None, body: Mapping[str, Any]) -> None:
        metadata = body.get("metadata") or {}
        key = (str(metadata.get("namespace") or ""), str(metadata.get("name") or ""))
        if event_type == "DELETED" or metadata.get("deletionTimestamp"):
            self._policies.pop(key, None)
        else:
            self._policies[key] = copy.deepcopy(dict(body))

    def get(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return self._policies.get((namespace, name))


class KubeCluster:
    """``server.Cluster`` over the real API, every call bounded by the lookup timeout.

    Lookups run on their own small thread pool: on the shared default executor they would
    queue behind the accountant's and kopf's blocking work and miss the webhook's deadline
    on a busy operator (seen right after start on a loaded host).
    """

    def __init__(self, policies: PolicyCache | None = None) -> None:
        self._policies = policies or PolicyCache()
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=8, thread_name_prefix="hush-webhook-lookup"
        )

    async def _call(self, function: Callable[..., _T], *arguments: Any, **keywords: Any) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._pool, functools.partial(function, *arguments, **keywords)
        )

    def warm_up(self) -> None:
        """Load the client configuration now, not inside the first admission request."""
        client.api_client()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        cached = self._policies.get(namespace, name)
        if cached is not None:
            return cached
        return await self._call(
            client.read_custom_with_timeout,
            group=common.API_GROUP,
            version=common.API_VERSION,
            plural="dppolicies",
            namespace=namespace,
            name=name,
            timeout=server.LOOKUP_TIMEOUT_SECONDS,
        )

    async def read_namespace_labels(self, name: str) -> Mapping[str, str] | None:
        return await self._call(
            client.read_namespace_labels, name, timeout=server.LOOKUP_TIMEOUT_SECONDS
        )

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return await self._call(client.read_pod, namespace, name)

    async def record_event(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        await self._call(
            client.create_event,
            involved={"apiVersion": "v1", "kind": "Pod", "metadata": pod["metadata"]},
            reason=reason,
            message=message,
        )


class Service:
    """The webhook server on its own thread and event loop.

    The operator's main event loop also runs kopf, which handles a watch event for every
    injected pod, every rollout and every budget status write; an AdmissionReview queued
    behind those waited 17 ms on average at 100 injected pods/s (docs/benchmarks.md,
    "Admission"). On its own loop a review waits at most for the interpreter lock, not for
    kopf's queue. What the handlers share with the main loop is safe across threads: the
    policy cache is replaced entry by entry (one dict assignment), metrics and logging are
    thread-safe, and the TLS context is reloaded in place by the certificate keeper.
    """

    def __init__(self, options: Options) -> None:
        self.options = options
        self._cluster: KubeCluster | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self.policies = PolicyCache()

    async def start(self) -> None:
        if self.options.port is None:
            return
        if self.options.ssl_context is None:
            raise ValueError("The webhook server needs TLS: give --webhook-tls-cert/-key")
        cluster = self._cluster = KubeCluster(self.policies)
        await asyncio.get_running_loop().run_in_executor(None, cluster.warm_up)
        webhook_server = server.WebhookServer(
            cluster, injection=self.options.injection, validate=self.options.validate
        )
        ssl_context = self.options.ssl_context()
        started: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._thread = threading.Thread(
            target=self._serve,
            args=(webhook_server.application(), ssl_context, started),
            name="hush-webhooks",
            daemon=True,
        )
        self._thread.start()
        await asyncio.wrap_future(started)  # raises if the port cannot be bound
        logger.info("Started webhooks on %s:%s", self.options.host, self.options.port)

    def _serve(
        self,
        app: web.Application,
        ssl_context: ssl.SSLContext,
        started: concurrent.futures.Future[None],
    ) -> None:
        async def serve() -> None:
            self._loop = asyncio.get_running_loop()
            self._stopping = asyncio.Event()
            runner = web.AppRunner(app, access_log=None)
            try:
                await runner.setup()
                site = web.TCPSite(
                    runner, self.options.host, self.options.port, ssl_context=ssl_context
                )
                await site.start()
            except BaseException as error:
                started.set_exception(error)
                await runner.cleanup()
                return
            started.set_result(None)
            try:
                await self._stopping.wait()
            finally:
                await runner.cleanup()

        asyncio.run(serve())

    async def stop(self) -> None:
        if self._thread is not None:
            loop, stopping = self._loop, self._stopping
            if loop is not None and stopping is not None and not loop.is_closed():
                loop.call_soon_threadsafe(stopping.set)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10)
            self._thread = None
        if self._cluster is not None:
            self._cluster.close()
            self._cluster = None


def ssl_context_from_files(cert: str, key: str) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert, key)
    return context


_service: Service | None = None


def configure(options: Options) -> None:
    global _service
    _service = Service(options)


def current() -> Service:
    global _service
    if _service is None:
        _service = Service(Options())
    return _service
