"""The sidecar's HTTP server: route matching, the release path, fail-closed errors.

For a request on a route of the baked policy, ``Sidecar`` runs the release path of the
architecture (charge before release, invariant 1):

    upstream answer -> parse -> plan the cost (``release.prepare``) -> reserve at the
    accountant -> noise, post-process, suppress, encode (``release.apply`` and ``render``,
    padded to the route's ``releaseDeadline`` by ``deadline``) -> commit -> answer

and caches the answer (``cache``) so an identical request within ``cacheTTL`` is answered
identically and not charged again (invariant 5).

Fail closed (invariant 3): a route the policy does not list gets 404 (pass-through paths,
meant for health checks, are the only exception); a covered route answers only the noisy
document, with headers the sidecar writes itself. Upstream errors, a body that is not JSON
or lacks a covered field, an unreachable accountant (503), an exhausted budget (429), a
stale policy (503, and ``/readyz`` turns not-ready for good; ``policy_watch`` also polls
for it) each give a JSON error with a stable ``error`` code and a ``message``, never any
part of the upstream answer.

The admin application (a separate port, so that no app route can shadow it) serves
``/healthz``, ``/readyz`` and ``/metrics``. The access log (structlog) carries request ids,
route patterns, outcomes and timings, never a path's parameters, a query or a value.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import json
import re
import time
import uuid
from collections.abc import Callable
from typing import Protocol

import aiohttp
import prometheus_client
import structlog
from aiohttp import web

from hush.api import dppolicy
from hush.privacy import accounting, amounts, mechanisms
from hush.sidecar import accountant_client, cache, config, deadline, policy_watch, release
from hush.sidecar import metrics as sidecar_metrics

logger = structlog.get_logger("hush.sidecar")

_HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "accept-encoding",
        "content-encoding",
    )
)


class Accountant(Protocol):
    """What the proxy needs from the accountant (``accountant_client.AccountantClient``)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def reserve(
        self,
        *,
        request_id: str,
        policy: str,
        route: str,
        policy_hash: str,
        release: accounting.Release,
    ) -> accountant_client.Grant: ...

    async def commit(self, *, request_id: str, policy: str) -> None: ...

    async def release(self, *, request_id: str, policy: str) -> None: ...

    async def policy_status(
        self, *, policy: str, policy_hash: str
    ) -> accountant_client.PolicyStatus: ...


class _RefusedError(Exception):
    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


def compile_pattern(pattern: str) -> re.Pattern[str]:
    """A policy path pattern as a regex: ``{name}`` matches exactly one path segment."""
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", pattern)
    regex = "".join(
        "[^/]+" if part.startswith("{") and part.endswith("}") else re.escape(part)
        for part in parts
    )
    return re.compile(f"^{regex}$")


# Threads that sleep out release deadlines; each is held for up to a route's releaseDeadline
# (5 ms by default), so 16 allow ~3,200 releases per second, far above the accountant's rate.
NOISE_WORKERS = 16


@dataclasses.dataclass(frozen=True)
class _CompiledRoute:
    route: dppolicy.Route
    regex: re.Pattern[str]
    ttl_seconds: float
    padding: deadline.ReleaseDeadline  # the route's releaseDeadline
    unsupported: release.ReleaseError | None  # known from the policy: refused up front


def _unsupported(route: dppolicy.Route) -> release.ReleaseError | None:
    try:
        release.check_route(route)
    except release.ReleaseError as error:
        return error
    return None


class Sidecar:
    """The proxy for one pod: its baked config, its cache, its accountant client."""

    def __init__(
        self,
        settings: config.SidecarConfig,
        *,
        accountant: Accountant,
        planner: release.Planner = mechanisms.plan,
        clock: Callable[[], float] = time.monotonic,
        request_ids: Callable[[], str] = lambda: uuid.uuid4().hex,
        policy_check_interval: float | None = None,
        deadline_clock: Callable[[], float] = time.monotonic,
        deadline_sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        """``policy_check_interval``: seconds between policy-status polls (None: never).

        ``deadline_clock`` and ``deadline_sleep`` pad the noising step; tests inject fakes.
        """
        self._config = settings
        self._accountant = accountant
        self._planner = planner
        self._request_ids = request_ids
        self._cache = cache.AnswerCache(max_entries=settings.cache_entries, clock=clock)
        self._routes = [
            _CompiledRoute(
                route=route,
                regex=compile_pattern(route.path),
                ttl_seconds=config.duration_seconds(route.cache_ttl),
                padding=deadline.ReleaseDeadline(
                    config.duration_seconds(route.release_deadline),
                    clock=deadline_clock,
                    sleep=deadline_sleep,
                ),
                unsupported=_unsupported(route),
            )
            for route in settings.policy.routes
        ]
        self._pass_through = [compile_pattern(path) for path in settings.policy.pass_through]
        self._upstream_base = f"http://{settings.upstream_host}:{settings.upstream_port}"
        self._session: aiohttp.ClientSession | None = None
        self._noise_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=NOISE_WORKERS, thread_name_prefix="hush-noise"
        )
        self._policy = policy_watch.PolicyWatch(
            policy_name=settings.policy_name,
            policy_hash=settings.policy_hash,
            source=accountant,
            interval_seconds=policy_check_interval,
        )
        self._started = False

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and self._policy.stale_reason is None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.upstream_timeout_seconds),
            auto_decompress=True,
        )
        await self._accountant.start()
        self._started = True
        self._policy.start()

    async def close(self) -> None:
        self._started = False
        await self._policy.stop()
        if self._session is not None:
            await self._session.close()
            self._session = None
        await self._accountant.close()
        self._noise_pool.shutdown(wait=True)

    async def check_policy(self) -> None:
        """Poll the policy status once (the background task does this every interval)."""
        await self._policy.check()

    def application(self) -> web.Application:
        """The proxy itself (the pod's public port)."""
        app = web.Application(client_max_size=self._config.max_body_bytes)
        app.router.add_route("*", "/{tail:.*}", self._handle)

        async def on_startup(_: web.Application) -> None:
            await self.start()

        async def on_cleanup(_: web.Application) -> None:
            await self.close()

        app.on_startup.append(on_startup)
        app.on_cleanup.append(on_cleanup)
        return app

    def admin_application(self) -> web.Application:
        """``/healthz``, ``/readyz`` and ``/metrics`` (the admin port)."""
        app = web.Application()
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/metrics", self._metrics)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        stale_reason = self._policy.stale_reason
        if stale_reason is not None:
            return web.json_response(
                {"status": "stale-policy", "message": stale_reason}, status=503
            )
        if not self._started:
            return web.json_response({"status": "starting"}, status=503)
        return web.json_response({"status": "ready", "policyHash": self._config.policy_hash})

    async def _metrics(self, _: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    # -- requests -------------------------------------------------------------------------

    def _match(self, path: str) -> _CompiledRoute | None:
        for compiled in self._routes:
            if compiled.regex.match(path):
                return compiled
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        request_id = self._request_ids()
        compiled = self._match(request.path)
        label = compiled.route.path if compiled is not None else "-"
        outcome = "error"
        response: web.StreamResponse
        try:
            if compiled is None:
                if any(regex.match(request.path) for regex in self._pass_through):
                    outcome = "pass-through"
                    response = await self._forward_raw(request)
                else:
                    raise _RefusedError(
                        404,
                        "route-not-covered",
                        f"Path {request.path} is not a route of DPPolicy "
                        f"{self._config.policy_name}; the sidecar refuses unlisted routes",
                    )
            else:
                response, outcome = await self._covered(request, compiled, request_id)
        except _RefusedError as refusal:
            outcome = refusal.reason
            response = self._error(refusal.status, refusal.reason, str(refusal), request_id)
        elapsed = time.perf_counter() - started
        sidecar_metrics.REQUESTS.labels(label, outcome).inc()
        sidecar_metrics.LATENCY.labels(label).observe(elapsed)
        logger.info(
            "Answered request",
            request_id=request_id,
            method=request.method,
            route=label,
            status=response.status,
            outcome=outcome,
            duration_ms=round(elapsed * 1000, 3),
        )
        return response

    def _error(self, status: int, reason: str, message: str, request_id: str) -> web.Response:
        return web.json_response(
            {"error": reason, "message": message, "requestId": request_id},
            status=status,
            headers={"X-DP-Policy-Hash": self._config.policy_hash, "X-Request-Id": request_id},
        )

    async def _covered(
        self, request: web.Request, compiled: _CompiledRoute, request_id: str
    ) -> tuple[web.Response, str]:
        route = compiled.route
        if request.method not in route.methods:
            raise _RefusedError(
                405,
                "method-not-allowed",
                f"Route {route.path} allows {', '.join(route.methods)}, not {request.method}",
            )
        stale_reason = self._policy.stale_reason
        if stale_reason is not None:
            raise _RefusedError(503, "stale-policy", stale_reason)
        if compiled.unsupported is not None:
            error = compiled.unsupported
            raise _RefusedError(error.status, error.reason, str(error))
        body = await request.read()
        cache_key = cache.key(
            method=request.method,
            path=request.path,
            query=request.query_string,
            body=body,
            policy_hash=self._config.policy_hash,
        )

        async def compute() -> cache.CachedAnswer | None:
            answer = await self._release(request, compiled, body, request_id)
            self._cache.put(
                cache_key,
                status=answer.status,
                body=answer.body,
                headers=answer.headers,
                ttl_seconds=compiled.ttl_seconds,
            )
            return answer

        answer, hit = await self._cache.single_flight(cache_key, compute)
        if answer is None:  # pragma: no cover - compute always answers or raises
            raise _RefusedError(500, "internal-error", "No answer was produced")
        headers = dict(answer.headers)
        headers["X-Request-Id"] = request_id
        if hit:
            headers["X-DP-Cache"] = "hit"
            sidecar_metrics.CACHE_HITS.labels(route.path).inc()
        return (
            web.Response(status=answer.status, body=answer.body, headers=headers),
            "cache-hit" if hit else "released",
        )

    async def _release(
        self, request: web.Request, compiled: _CompiledRoute, body: bytes, request_id: str
    ) -> cache.CachedAnswer:
        route = compiled.route
        status, raw = await self._upstream(request, body)
        if status != 200:
            raise _RefusedError(
                502, "upstream-error", f"The application answered {status} on route {route.path}"
            )
        try:
            document = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as error:
            raise _RefusedError(
                502, "upstream-not-json", f"The application's answer on {route.path} is not JSON"
            ) from error
        try:
            prepared = release.prepare(document, route, planner=self._planner)
        except release.ReleaseError as error:
            raise _RefusedError(error.status, error.reason, str(error)) from error
        remaining = "unknown"
        if prepared.charge is not None:
            grant = await self._reserve(route, prepared.charge, request_id)
            remaining = grant.epsilon_remaining or "unknown"
        try:
            released, body = await self._noise(compiled, prepared, request_id)
        except release.ReleaseError as error:
            if prepared.charge is not None:
                await self._refund(request_id)
            raise _RefusedError(error.status, error.reason, str(error)) from error
        if prepared.charge is not None:
            sidecar_metrics.EPSILON_CHARGED.labels(route.path).inc(float(route.epsilon))
            try:
                await self._accountant.commit(
                    request_id=request_id, policy=self._config.policy_name
                )
            except accountant_client.AccountantError as error:
                # The reservation is durable and counts as spent until released, so the
                # answer may still go out: a missed commit can only over-count.
                logger.warning(
                    "Could not commit a reservation", request_id=request_id, reason=error.reason
                )
        if released.suppressed:
            sidecar_metrics.SUPPRESSIONS.labels(route.path).inc(len(released.suppressed))
        headers: list[tuple[str, str]] = [
            ("Content-Type", "application/json"),
            ("X-DP-Epsilon", amounts.display(amounts.exact(route.epsilon))),
            ("X-DP-Delta", amounts.display(amounts.exact(route.delta))),
            ("X-DP-Mechanism", route.mechanism),
            ("X-DP-Budget-Remaining", remaining),
            ("X-DP-Policy-Hash", self._config.policy_hash),
        ]
        if released.suppressed:
            headers.append(("X-DP-Suppressed", str(len(released.suppressed))))
        return cache.CachedAnswer(status=200, body=body, headers=tuple(headers), expires=0.0)

    async def _noise(
        self, compiled: _CompiledRoute, prepared: release.Prepared, request_id: str
    ) -> tuple[release.Released, bytes]:
        """Everything whose duration can depend on the noise, padded to the route's deadline.

        The step runs here, on the event loop; the padding sleeps in a worker thread, where
        it is precise and the loop keeps serving (``hush.sidecar.deadline``).
        """
        route = compiled.route
        padding = compiled.padding
        started = padding.begin()
        try:
            released = release.apply(prepared, min_cohort=route.min_cohort)
            body = release.render(released, route)
        finally:
            periods, until = padding.end(started)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(self._noise_pool, padding.wait, until)
            if periods > 1:
                sidecar_metrics.DEADLINE_OVERRUNS.labels(route.path).inc()
                # The number of periods, never the step's own duration (the side channel).
                logger.warning(
                    "Overran the release deadline",
                    request_id=request_id,
                    route=route.path,
                    release_deadline=route.release_deadline,
                    periods=periods,
                )
        return released, body

    async def _reserve(
        self, route: dppolicy.Route, charge: accounting.Release, request_id: str
    ) -> accountant_client.Grant:
        try:
            return await self._accountant.reserve(
                request_id=request_id,
                policy=self._config.policy_name,
                route=route.path,
                policy_hash=self._config.policy_hash,
                release=charge,
            )
        except accountant_client.StalePolicyError as error:
            self._policy.mark_stale(str(error), request_id=request_id)
            raise _RefusedError(503, error.reason, str(error)) from error
        except accountant_client.AccountantError as error:
            raise _RefusedError(error.status, error.reason, str(error)) from error

    async def _refund(self, request_id: str) -> None:
        try:
            await self._accountant.release(request_id=request_id, policy=self._config.policy_name)
        except accountant_client.AccountantError as error:
            logger.warning(
                "Could not release a reservation", request_id=request_id, reason=error.reason
            )

    def _forward_headers(self, request: web.Request) -> dict[str, str]:
        return {
            name: value
            for name, value in request.headers.items()
            if name.lower() not in _HOP_BY_HOP
        }

    async def _upstream(self, request: web.Request, body: bytes) -> tuple[int, bytes]:
        if self._session is None:
            raise _RefusedError(503, "not-started", "The sidecar is not started")
        method = "GET" if request.method == "HEAD" else request.method
        limit = self._config.max_body_bytes
        try:
            async with self._session.request(
                method,
                self._upstream_base + request.rel_url.raw_path_qs,
                headers=self._forward_headers(request),
                data=body or None,
                allow_redirects=False,
            ) as reply:
                raw = await reply.content.read(limit + 1)
                if len(raw) > limit:
                    raise _RefusedError(
                        502, "upstream-too-large", f"The application's answer exceeds {limit} bytes"
                    )
                return reply.status, raw
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _RefusedError(
                502,
                "upstream-unreachable",
                f"The application on port {self._config.upstream_port} did not answer "
                f"({type(error).__name__})",
            ) from error

    async def _forward_raw(self, request: web.Request) -> web.Response:
        """A pass-through path (health checks): forwarded as is, never noised."""
        if self._session is None:
            raise _RefusedError(503, "not-started", "The sidecar is not started")
        body = await request.read()
        try:
            async with self._session.request(
                request.method,
                self._upstream_base + request.rel_url.raw_path_qs,
                headers=self._forward_headers(request),
                data=body or None,
                allow_redirects=False,
            ) as reply:
                raw = await reply.content.read(self._config.max_body_bytes)
                headers = {
                    name: value
                    for name, value in reply.headers.items()
                    if name.lower() not in _HOP_BY_HOP
                }
                return web.Response(status=reply.status, body=raw, headers=headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise _RefusedError(
                502,
                "upstream-unreachable",
                f"The application did not answer ({type(error).__name__})",
            ) from error
