"""The sidecar's HTTP server: the request path of a covered route, pass-through, refusals.

For a request on a route of the baked policy, ``Sidecar`` runs the request path of
docs/design/0018-release-built-from-the-policy.md (release contract, sections 3 to 7), in
this order:

    match route -> method -> declared query parameters -> stale policy -> cache lookup
    -> charge at the accountant -> upstream -> build the released document (worker thread,
    padded to the route's releaseDeadline) -> cache -> answer

- Everything before the charge depends only on the request and the policy, never on the
  application's data: an undeclared query parameter (400), a method the route does not
  allow (405), a stale policy (503), a route the policy cannot release (501). Nothing is
  charged and the application is not called.
- The charge (``POST /v1/charge``) names the route; the accountant prices it from the
  policy. Exhausted (429) or unreachable (503): the application is never called. There is
  no refund anywhere after a grant.
- Once charged, every outcome is a release, cached like one: the document built from the
  policy (``release.release_document``; per-field problems are imputed there), or, when the
  whole answer fails (application unreachable, timeout, non-2xx, too large, not JSON), one
  generic 502 whose body (``release.failure_body``) and headers are the same for every
  cause and carry nothing from the application. That the application failed is the one bit
  its availability reveals (docs/sidecar.md).
- The released document is parsed, built, noised and encoded in a worker thread together
  with the release-deadline padding (``deadline``), so the event loop never samples: no
  concurrent request, ``/healthz`` on the admin port included, waits for a sampler.
- Noise comes from pre-drawn pools (``noise_pool``, docs/design/0022-pooled-noise.md):
  the routes' plans are made with pooled samplers, the pools are filled by a background
  thread from ``start`` and emptied at ``close``; the release step only pops and adds.
- The cache key (``cache.key``) covers what the application sees: method, raw path, raw
  query pairs, body, policy hash and every forwarded header; only ``Authorization``,
  ``Cookie``, the route's ``varyHeaders``, ``Accept`` and ``Content-Type`` are forwarded.

Pass-through paths (``spec.passThrough``, health checks) are matched exactly, GET/HEAD only,
without query string or body; their answer is capped at ``PASS_THROUGH_LIMIT`` bytes and
only its status, body and Content-Type are returned. Any other path is refused (404).

The admin application (a separate port, so that no app route can shadow it) serves
``/healthz``, ``/readyz`` and ``/metrics``. The access log (structlog) carries request ids,
route patterns, outcomes and timings, never a path's parameters, a query, a value, or
anything the application answered.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import functools
import json
import re
import time
import urllib.parse
import uuid
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import aiohttp
import multidict
import prometheus_client
import structlog
from aiohttp import web

from hush.api import dppolicy
from hush.privacy import accuracy, amounts, noise_pool, route_cost
from hush.sidecar import accountant_client, cache, config, deadline, policy_watch, release
from hush.sidecar import metrics as sidecar_metrics

logger = structlog.get_logger("hush.sidecar")

PASS_THROUGH_LIMIT = 4096
"""Bytes of a pass-through answer (a health check's); a longer one is refused (502)."""

RoutePlanner = Callable[[dppolicy.Route], route_cost.RoutePlan]
"""``route_cost.route_plan``: the route's samplers and charge, planned once at start."""

# Threads that build released documents and sleep out release deadlines; each is held for
# about a route's releaseDeadline (5 ms by default), so 16 allow ~3,200 releases per second,
# far above the accountant's rate.
RELEASE_WORKERS = 16

NOISE_POOL_MISSES = prometheus_client.Counter(
    "hush_sidecar_noise_pool_misses",
    "Noise samples drawn on the request path because their pool was empty (still the same "
    "mechanism; a steady rate means the pool is too small for the load).",
)

# Python's int() refuses more than 4,300 digits (a ValueError that would make the whole
# answer fail); such a number is read as a float (infinite), an invalid value that the
# release imputes like any other.
_MAX_INTEGER_DIGITS = 4000


class Accountant(Protocol):
    """What the proxy needs from the accountant (``accountant_client.AccountantClient``)."""

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def charge(
        self, *, request_id: str, policy: str, route: str, policy_hash: str
    ) -> accountant_client.Grant: ...

    async def policy_status(
        self, *, policy: str, policy_hash: str
    ) -> accountant_client.PolicyStatus: ...


class _RefusedError(Exception):
    """A refusal decided before anything was charged (or by the accountant): not cached."""

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


def query_problem(route: dppolicy.Route, pairs: cache.QueryPairs) -> str | None:
    """Why the query parameters are refused (a sentence naming the allowed ones), or None.

    A parameter the route does not declare, or a repeated one not declared ``repeated``, is
    refused: junk parameters would otherwise multiply charges (each spelling is a new cache
    key). Names are compared percent-decoded, as the application reads them.
    """
    declared = {parameter.name: parameter.repeated for parameter in route.query_parameters}
    allowed = ", ".join(sorted(declared)) or "none"
    seen: set[str] = set()
    for raw_name, _ in pairs:
        name = urllib.parse.unquote_plus(raw_name)
        if name not in declared:
            return (
                f"Route {route.path} does not declare the query parameter {name[:64]!r}; "
                f"allowed: {allowed}"
            )
        if name in seen and not declared[name]:
            return (
                f"Query parameter {name!r} of route {route.path} may appear only once "
                f"(declare it repeated: true to allow more); allowed: {allowed}"
            )
        seen.add(name)
    return None


@dataclasses.dataclass(frozen=True)
class _CompiledRoute:
    route: dppolicy.Route
    regex: re.Pattern[str]
    ttl_seconds: float
    padding: deadline.ReleaseDeadline  # the route's releaseDeadline
    plan: route_cost.RoutePlan | None  # None: the route cannot be released (``refusal``)
    refusal: str | None
    forwarded: tuple[str, ...]  # lower-case names of the headers forwarded (and keyed)
    headers: tuple[tuple[str, str], ...]  # the labels every release of the route carries
    accuracy: str | None  # X-DP-Accuracy: each field's 95 % half-width, from the plan


@dataclasses.dataclass(frozen=True)
class _Built:
    """What the worker thread made of the application's answer."""

    body: bytes
    suppressed: int | None  # None: the generic failure
    failure: str | None  # the cause's category, for the log only (never the answer)


def _parse_integer(digits: str) -> int | float:
    return int(digits) if len(digits) <= _MAX_INTEGER_DIGITS else float(digits)


def _parse(raw: bytes) -> Any:
    """The answer as JSON; ``ValueError`` when it is not (or nests too deep to read)."""
    try:
        return json.loads(raw, parse_int=_parse_integer)
    except RecursionError as error:
        raise ValueError("nested too deeply") from error


def build_answer(
    plan: route_cost.RoutePlan, route: dppolicy.Route, raw: bytes | None, failure: str | None
) -> _Built:
    """The body to send for the application's 2xx answer ``raw`` (None: it failed).

    Runs in a worker thread. Everything that reads the answer happens here, after the
    charge: parsing, building the document from the policy, noising, encoding. A whole
    answer that cannot be read becomes the generic failure.
    """
    if raw is None:
        return _Built(release.failure_body(), None, failure or "upstream")
    try:
        document = _parse(raw)
    except (ValueError, UnicodeDecodeError):
        return _Built(release.failure_body(), None, "not-json")
    try:
        released = release.release_document(document, plan, min_cohort=route.min_cohort)
        body = release.render(released)
    except Exception:  # charged already: never a traceback, never a refund
        # release_document imputes every data problem, so this is a bug or a sampler
        # failure; the answer is the generic failure, which is also charged.
        return _Built(release.failure_body(), None, "internal")
    return _Built(body, released.suppressed, None)


def _route_plan(
    planner: RoutePlanner, route: dppolicy.Route
) -> tuple[route_cost.RoutePlan | None, str | None]:
    try:
        return planner(route), None
    except (ValueError, ArithmeticError) as error:
        return None, str(error)


def accuracy_header(plan: route_cost.RoutePlan) -> str | None:
    """The route's ``X-DP-Accuracy`` value (``accuracy.accuracy_header`` at 95 %), or None.

    A function of the plan's scales only (data-independent, so free to send with every
    released answer); computed once per route at start. None when the plan's samplers do
    not say their scale usably (a route still releases; it just carries no accuracy).
    """
    try:
        return accuracy.accuracy_header(accuracy.route_accuracy(plan.route, plan=plan))
    except (ValueError, ArithmeticError, TypeError):
        return None


class Sidecar:
    """The proxy for one pod: its baked config, its cache, its accountant client."""

    def __init__(
        self,
        settings: config.SidecarConfig,
        *,
        accountant: Accountant,
        route_planner: RoutePlanner | None = None,
        clock: Callable[[], float] = time.monotonic,
        request_ids: Callable[[], str] = lambda: uuid.uuid4().hex,
        policy_check_interval: float | None = None,
        deadline_clock: Callable[[], float] = time.monotonic,
        deadline_sleep: Callable[[float], None] = time.sleep,
        noise_pool_size: int = noise_pool.DEFAULT_SIZE,
    ) -> None:
        """``policy_check_interval``: seconds between policy-status polls (None: never).

        ``route_planner`` plans each route once, here; tests inject stand-in samplers. The
        default plans with samplers pooled in ``noise_pool_size`` samples per distribution.
        ``deadline_clock`` and ``deadline_sleep`` pad the release step; tests inject fakes.
        """
        self._config = settings
        self._accountant = accountant
        self._request_ids = request_ids
        self._noise = noise_pool.NoisePools(size=noise_pool_size, on_miss=NOISE_POOL_MISSES.inc)
        if route_planner is None:
            planner = self._noise.plan
            route_planner = functools.partial(route_cost.route_plan, planner=planner)
        self._cache = cache.AnswerCache(max_entries=settings.cache_entries, clock=clock)
        self._routes = [
            self._compile(route, route_planner, deadline_clock, deadline_sleep)
            for route in settings.policy.routes
        ]
        self._pass_through = frozenset(settings.policy.pass_through)
        self._upstream_base = f"http://{settings.upstream_host}:{settings.upstream_port}"
        self._session: aiohttp.ClientSession | None = None
        self._release_pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=RELEASE_WORKERS, thread_name_prefix="hush-release"
        )
        self._policy = policy_watch.PolicyWatch(
            policy_name=settings.policy_name,
            policy_hash=settings.policy_hash,
            source=accountant,
            interval_seconds=policy_check_interval,
        )
        self._started = False

    def _compile(
        self,
        route: dppolicy.Route,
        planner: RoutePlanner,
        deadline_clock: Callable[[], float],
        deadline_sleep: Callable[[float], None],
    ) -> _CompiledRoute:
        plan, refusal = _route_plan(planner, route)
        if refusal is not None:
            logger.warning("Refusing a route of the policy", route=route.path, reason=refusal)
        return _CompiledRoute(
            route=route,
            regex=compile_pattern(route.path),
            ttl_seconds=config.duration_seconds(route.cache_ttl),
            padding=deadline.ReleaseDeadline(
                config.duration_seconds(route.release_deadline),
                clock=deadline_clock,
                sleep=deadline_sleep,
            ),
            plan=plan,
            refusal=refusal,
            forwarded=cache.forwarded_headers(route.vary_headers),
            accuracy=accuracy_header(plan) if plan is not None else None,
            headers=(
                ("Content-Type", "application/json"),
                ("X-DP-Epsilon", amounts.display(amounts.exact(route.epsilon))),
                ("X-DP-Delta", amounts.display(amounts.exact(route.delta))),
                ("X-DP-Mechanism", route.mechanism),
                ("X-DP-Policy-Hash", self._config.policy_hash),
            ),
        )

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        return self._started and self._policy.stale_reason is None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.upstream_timeout_seconds),
            auto_decompress=True,
        )
        self._noise.start()
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
        self._release_pool.shutdown(wait=True)
        self._noise.close()

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
        failure: str | None = None
        response: web.StreamResponse
        try:
            if compiled is not None:
                response, outcome, failure = await self._covered(request, compiled, request_id)
            elif request.rel_url.raw_path in self._pass_through:
                label = request.rel_url.raw_path  # a declared, exact path: bounded
                outcome = "pass-through"
                response = await self._pass(request)
            else:
                raise _RefusedError(
                    404,
                    "route-not-covered",
                    f"Path {request.path} is not a route of DPPolicy "
                    f"{self._config.policy_name}; the sidecar refuses unlisted routes",
                )
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
            failure=failure,
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
    ) -> tuple[web.Response, str, str | None]:
        """(response, outcome, failure category) of a request on a covered route."""
        route = compiled.route
        if request.method not in route.methods:
            raise _RefusedError(
                405,
                "method-not-allowed",
                f"Route {route.path} allows {', '.join(route.methods)}, not {request.method}",
            )
        pairs = cache.query_pairs(request.rel_url.raw_query_string)
        problem = query_problem(route, pairs)
        if problem is not None:
            raise _RefusedError(400, "query-parameter-refused", problem)
        stale_reason = self._policy.stale_reason
        if stale_reason is not None:
            raise _RefusedError(503, "stale-policy", stale_reason)
        if compiled.plan is None:
            raise _RefusedError(
                501,
                "route-unsupported",
                f"Route {route.path} of DPPolicy {self._config.policy_name} cannot be "
                f"released: {compiled.refusal}",
            )
        plan = compiled.plan
        body = await request.read()
        forwarded = cache.identity(
            lambda name: request.headers.getall(name, []), compiled.forwarded
        )
        cache_key = cache.key(
            method=request.method,
            path=request.rel_url.raw_path,
            query=pairs,
            body=body,
            policy_hash=self._config.policy_hash,
            headers=forwarded,
        )
        failures: list[str] = []

        async def compute() -> cache.CachedAnswer:
            answer, failure = await self._release(
                request, compiled, plan, body, forwarded, request_id
            )
            if failure is not None:
                failures.append(failure)
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
            outcome = "cache-hit"
        else:
            outcome = "release-failed" if failures else "released"
        return (
            web.Response(status=answer.status, body=answer.body, headers=headers),
            outcome,
            failures[0] if failures else None,
        )

    async def _release(
        self,
        request: web.Request,
        compiled: _CompiledRoute,
        plan: route_cost.RoutePlan,
        body: bytes,
        forwarded: cache.IdentityHeaders,
        request_id: str,
    ) -> tuple[cache.CachedAnswer, str | None]:
        """Charge, call the application, build the answer: every outcome here is charged."""
        route = compiled.route
        grant = await self._charge(route, request_id)
        sidecar_metrics.EPSILON_CHARGED.labels(route.path).inc(float(route.epsilon))
        raw, failure = await self._upstream(request, body, forwarded)
        loop = asyncio.get_running_loop()
        padded = await loop.run_in_executor(
            self._release_pool,
            compiled.padding.run,
            lambda: build_answer(plan, route, raw, failure),
        )
        if padded.overran:
            sidecar_metrics.DEADLINE_OVERRUNS.labels(route.path).inc()
            # The number of periods, never the step's own duration (the side channel).
            logger.warning(
                "Overran the release deadline",
                request_id=request_id,
                route=route.path,
                release_deadline=route.release_deadline,
                periods=padded.periods,
            )
        built = padded.value
        headers = [
            *compiled.headers,
            ("X-DP-Budget-Remaining", grant.epsilon_remaining or "unknown"),
        ]
        if built.suppressed is None:
            return cache.CachedAnswer(
                status=502, body=built.body, headers=tuple(headers), expires=0.0
            ), built.failure
        if built.suppressed:
            sidecar_metrics.SUPPRESSIONS.labels(route.path).inc(built.suppressed)
        headers.append(("X-DP-Suppressed", str(built.suppressed)))
        if compiled.accuracy is not None:
            headers.append(("X-DP-Accuracy", compiled.accuracy))
        return cache.CachedAnswer(
            status=200, body=built.body, headers=tuple(headers), expires=0.0
        ), None

    async def _charge(self, route: dppolicy.Route, request_id: str) -> accountant_client.Grant:
        try:
            return await self._accountant.charge(
                request_id=request_id,
                policy=self._config.policy_name,
                route=route.path,
                policy_hash=self._config.policy_hash,
            )
        except accountant_client.StalePolicyError as error:
            self._policy.mark_stale(str(error), request_id=request_id)
            raise _RefusedError(503, error.reason, str(error)) from error
        except accountant_client.AccountantError as error:
            raise _RefusedError(error.status, error.reason, str(error)) from error

    async def _upstream(
        self, request: web.Request, body: bytes, forwarded: cache.IdentityHeaders
    ) -> tuple[bytes | None, str | None]:
        """(the application's 2xx body, None) or (None, the failure's category).

        Whatever went wrong, only a category for the log comes back: never the status,
        body or headers the application sent.
        """
        if self._session is None:
            return None, "not-started"
        headers = multidict.CIMultiDict[str]()
        for name, values in forwarded:
            for value in values:
                headers.add(name, value)
        method = "GET" if request.method == "HEAD" else request.method
        limit = self._config.max_body_bytes
        try:
            async with self._session.request(
                method,
                self._upstream_base + request.rel_url.raw_path_qs,
                headers=headers,
                data=body or None,
                allow_redirects=False,
            ) as reply:
                if not 200 <= reply.status < 300:
                    return None, "status"
                raw = await reply.content.read(limit + 1)
                if len(raw) > limit:
                    return None, "too-large"
                return raw, None
        except TimeoutError:
            return None, "timeout"
        except (aiohttp.ClientError, OSError, ValueError):
            return None, "unreachable"

    async def _pass(self, request: web.Request) -> web.Response:
        """A pass-through path (a health check): no query, no body, a small plain answer."""
        if request.method not in ("GET", "HEAD"):
            raise _RefusedError(
                405, "method-not-allowed", "Pass-through paths allow GET and HEAD only"
            )
        if request.rel_url.raw_query_string or "?" in request.raw_path:
            raise _RefusedError(400, "query-refused", "Pass-through paths take no query string")
        if request.body_exists:
            raise _RefusedError(400, "body-refused", "Pass-through paths take no request body")
        if self._session is None:
            raise _RefusedError(503, "not-started", "The sidecar is not started")
        try:
            async with self._session.request(
                request.method,
                self._upstream_base + request.rel_url.raw_path,
                allow_redirects=False,
            ) as reply:
                raw = await reply.content.read(PASS_THROUGH_LIMIT + 1)
                content_type = reply.headers.get("Content-Type")
                status = reply.status
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as error:
            raise _RefusedError(
                502,
                "upstream-unreachable",
                f"The application did not answer ({type(error).__name__})",
            ) from error
        if len(raw) > PASS_THROUGH_LIMIT:
            raise _RefusedError(
                502,
                "pass-through-too-large",
                f"A pass-through answer is limited to {PASS_THROUGH_LIMIT} bytes",
            )
        headers: Mapping[str, str] = {"Content-Type": content_type} if content_type else {}
        return web.Response(status=status, body=raw, headers=headers)
