"""The accountant's HTTPS endpoint (aiohttp): authenticate, authorise, price, queue, answer.

Routes (JSON bodies, see ``protocol``):
- ``POST /v1/charge``  charge one release of a route: ``{requestId, policy, route,
  policyHash}``. The cost is the route's, computed here from the DPPolicy (``pricing``);
  the sidecar sends no numbers. The answer is sent only once the charge is durable, and the
  sidecar calls its upstream only after it. There is no reserve, commit or release (refund)
  on the wire: once the upstream may have been consulted, nothing can give the cost back
  (docs/design/0018, "Wire").
- ``POST /v1/leases``  grant a lease: ``{leaseId, policy, route, policyHash, releases,
  seconds}``; the lease is durable (recorded as spent in full) before the answer.
- ``POST /v1/leases/{id}/report``  record releases made under the lease, ``{policy,
  policyHash, batch, releases: [{route, requestId, time}], renew, seconds}``; with
  ``renew`` the lease is topped up and extended. ``deferrable: true`` (the sidecar still
  holds units) lets the writer hold the report up to 250 ms to share a status write.
- ``POST /v1/leases/{id}/settle``  the same body without ``renew``: record the last
  releases, close the lease and return its unspent units. Leases are docs/design/0021; their
  models and outcome codes are ``hush.api.spending``. Same authentication, authorisation and
  policy-hash check as a charge; every route is priced here, from the policy.
- ``GET /v1/policy-status?policy=<name>&policyHash=<baked>``  is the caller's baked policy
  hash still the DPPolicy's? (read-only, so standby replicas answer it too; sidecars poll it
  and turn not-ready when stale, before any charge is refused)
- ``GET /healthz``, ``GET /readyz``

Status codes: 200 charged (or a retry of a charged request id); 400 malformed request
(including a body that carries a cost); 401 bad token; 403 not allowed for this caller (or
a route the policy does not declare); 404 unknown policy or budget; 409 stale policy hash, a
route that cannot be priced, a route with partition selection charged to a zCDP or RDP
budget (the threshold's delta would go uncounted), or a request id that was refunded under
the old protocol; 429 budget exhausted; 503 budget unavailable or standby replica (retry).
Every refusal has a JSON body whose ``message`` says what is wrong. The caller's token is
never logged.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import re
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol, TypeVar

import pydantic
from aiohttp import web

from hush.accountant import authorization, pricing, protocol, writer
from hush.api import ledger as wire
from hush.api import spending
from hush.ledger import book
from hush.observability import metrics
from hush.privacy import amounts

logger = logging.getLogger(__name__)

AUDIENCE = "hush-accountant"
IDENTITY_CACHE_SECONDS = 30.0
# A policy read is an API call; under a burst every charge would make one. The operator
# forgets a cached policy on every watch event of it (``forget_policy``), and a request whose
# baked hash differs from the cached policy's forces a fresh read, so the cache never makes a
# stale pod look current; the TTL is only a backstop should an event be missed.
POLICY_CACHE_SECONDS = 30.0


class Cluster(Protocol):
    """The reads the accountant needs for authorisation (``hush.kube`` in production)."""

    async def review_token(self, token: str, audiences: list[str]) -> Mapping[str, Any]: ...

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...


_OUTCOME_STATUS: dict[book.OutcomeCode, int] = {
    "granted": 200,
    "duplicate": 200,
    "already-released": 409,
    "exhausted": 429,
    "no-quota": 403,
    "under-noised": 422,
    "unaccountable": 409,
    "leased": 200,
    "reported": 200,
    "settled": 200,
    "swept": 200,
    "beyond-lease": 409,
    "out-of-order": 409,
    "unknown-lease": 404,
    "not-your-lease": 403,
    "expired": 410,
    "too-many-leases": 429,
}


def _answer(status: int, answer: protocol.Answer) -> web.Response:
    # pydantic's own serialiser: a third of the cost of model_dump plus json.dumps.
    return web.Response(
        text=answer.model_dump_json(by_alias=True, exclude_none=True),
        status=status,
        content_type="application/json",
    )


@functools.lru_cache(maxsize=4096)
def _consumer(namespace: str, pod: str, policy: str, team: str) -> wire.Consumer:
    # Every charge of a pod names the same consumer; the model is frozen, so one instance
    # serves them all (validated once, not per charge).
    return wire.Consumer(namespace=namespace, pod=pod, policy=policy, team=team)


def _refusal(status: int, outcome: str, message: str) -> web.Response:
    return _answer(status, protocol.Answer(outcome=outcome, message=message))


class Accountant:
    """Request handling; identity and policy lookups cached briefly, charges never."""

    def __init__(
        self,
        cluster: Cluster,
        writers: writer.WriterRegistry,
        *,
        audience: str = AUDIENCE,
        clock: Callable[[], float] = time.monotonic,
        is_leader: Callable[[], bool] = lambda: True,
    ) -> None:
        self._cluster = cluster
        self._writers = writers
        self._audience = audience
        self._clock = clock
        self._is_leader = is_leader
        self._identities: dict[bytes, tuple[float, authorization.Caller, str]] = {}
        self._policies: dict[tuple[str, str], tuple[float, Mapping[str, Any] | None]] = {}
        self._prices = pricing.Prices()

    def application(self) -> web.Application:
        # A lease report carries a batch of releases (~70 bytes each): a second or two of a
        # busy pod's traffic fits in 1 MiB; a charge is a few hundred bytes.
        app = web.Application(client_max_size=1024 * 1024)
        app.add_routes(
            [
                web.post("/v1/charge", self._charge),
                web.post("/v1/leases", self._lease_grant),
                web.post("/v1/leases/{lease}/report", self._lease_report),
                web.post("/v1/leases/{lease}/settle", self._lease_settle),
                web.get("/v1/policy-status", self._policy_status),
                web.get("/healthz", self._healthz),
                web.get("/readyz", self._readyz),
            ]
        )
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, _: web.Request) -> web.Response:
        if not self._is_leader():
            return web.json_response({"status": "standby"}, status=503)
        return web.json_response({"status": "ready"})

    async def _caller(self, request: web.Request) -> tuple[authorization.Caller, str]:
        header = request.headers.get("Authorization", "")
        if not header.startswith("Bearer "):
            raise authorization.DeniedError("Missing bearer token", status=401)
        token = header.removeprefix("Bearer ").strip()
        key = hashlib.sha256(token.encode()).digest()
        cached = self._identities.get(key)
        now = self._clock()
        if cached is not None and cached[0] > now:
            return cached[1], cached[2]
        review = await self._cluster.review_token(token, [self._audience])
        caller = authorization.caller_from_review(review)
        pod_policy = authorization.policy_of_pod(
            caller, await self._cluster.read_pod(caller.namespace, caller.pod)
        )
        if len(self._identities) > 4096:
            self._identities.clear()
        self._identities[key] = (now + IDENTITY_CACHE_SECONDS, caller, pod_policy)
        return caller, pod_policy

    def forget_policy(self, namespace: str, name: str) -> None:
        """The policy changed (a watch event): the next charge reads it again."""
        self._policies.pop((namespace, name), None)

    async def _grant(
        self, request: web.Request, policy_name: str, baked_hash: str | None = None
    ) -> tuple[authorization.Grant, Mapping[str, Any]]:
        caller, pod_policy = await self._caller(request)
        authorization.authorise_policy(caller, pod_policy, policy_name)
        policy = await self._policy(caller.namespace, policy_name, baked_hash)
        return authorization.grant_for(caller, policy_name, policy), policy or {}

    async def _policy(
        self, namespace: str, name: str, baked_hash: str | None = None
    ) -> Mapping[str, Any] | None:
        key = (namespace, name)
        now = self._clock()
        cached = self._policies.get(key)
        if cached is not None and cached[0] > now:
            current_hash = ((cached[1] or {}).get("status") or {}).get("policyHash")
            if baked_hash is None or current_hash == baked_hash:
                return cached[1]
        policy = await self._cluster.read_policy(namespace, name)
        if len(self._policies) > 4096:
            self._policies.clear()
        self._policies[key] = (now + POLICY_CACHE_SECONDS, policy)
        return policy

    async def _policy_status(self, request: web.Request) -> web.Response:
        """The caller's policy's current hash, authenticated like a charge; never a write."""
        name = request.query.get("policy", "")
        baked_hash = request.query.get("policyHash") or None
        if not 1 <= len(name) <= 253 or (baked_hash is not None and len(baked_hash) > 80):
            return _refusal(400, "bad-request", "Give ?policy=<name> and ?policyHash=<hash>")
        try:
            caller, pod_policy = await self._caller(request)
            authorization.authorise_policy(caller, pod_policy, name)
            policy = await self._policy(caller.namespace, name, baked_hash)
            if policy is None:
                raise authorization.DeniedError(
                    f"DPPolicy {caller.namespace}/{name} does not exist", status=404
                )
        except _REFUSED as error:
            return _refusal_for(error)
        stale = authorization.stale_policy_message(policy, baked_hash)
        answer = protocol.PolicyStatus(
            policy=name,
            policy_hash=authorization.current_policy_hash(policy),
            stale=stale is not None,
            message=stale or "The policy hash is current",
        )
        return web.json_response(answer.model_dump(mode="json", by_alias=True))

    async def _charge(self, request: web.Request) -> web.Response:
        if not self._is_leader():
            return _refusal(503, "standby", "This replica is not the active accountant")
        try:
            body = _parse(await request.read())
            grant, policy = await self._grant(request, body.policy, body.policy_hash)
            # Staleness first: a pod whose route changed with the policy must learn that it
            # is stale (409, and it stops releasing), not that its route is gone.
            authorization.check_policy_hash(policy, body.policy_hash)
            route = authorization.check_route(body.policy, policy, body.route)
            price = self._prices.price(grant.namespace, body.policy, policy, route)
        except _REFUSED as error:
            return _refusal_for(error)
        release = price.release
        charge = book.ChargeRequest(
            request_id=body.request_id,
            consumer=_consumer(grant.namespace, grant.pod, grant.policy, grant.team),
            release=release,
            policy_hash=body.policy_hash,
        )

        def operation(working: book.Book, now: Any) -> book.Outcome:
            if price.selection_delta and working.mode != "pure":
                # zCDP and RDP convert the noise's loss only; the threshold's delta would go
                # uncounted (hush.privacy.route_cost, "Partition selection").
                return book.Outcome(
                    code="unaccountable",
                    ok=False,
                    message=f"Policy {body.policy} route {body.route} selects keys by partition "
                    f"selection, whose delta {working.mode} accounting does not count: charge "
                    "it to a budget with pure accounting",
                )
            return working.charge(charge, now)

        labels = (grant.namespace, grant.budget, grant.team, "charge")
        started = time.perf_counter()
        try:
            outcome = await self._writers.writer(grant.namespace, grant.budget).submit(operation)
        except writer.BudgetUnavailableError as error:
            metrics.CHARGES.labels(*labels, "unavailable").inc()
            return _refusal(error.status, "unavailable", str(error))
        finally:
            metrics.CHARGE_LATENCY.labels("charge").observe(time.perf_counter() - started)
        metrics.CHARGES.labels(*labels, outcome.code).inc()
        if outcome.code == "granted":  # a retry ("duplicate") was counted the first time
            metrics.EPSILON_CHARGED.labels(grant.namespace, grant.budget, grant.team).inc(
                float(release.epsilon)
            )
        remaining = outcome.team_epsilon_remaining
        return _answer(
            _OUTCOME_STATUS[outcome.code],
            protocol.Answer(
                outcome=outcome.code,
                message=outcome.message,
                sequence=outcome.sequence,
                budget=grant.budget,
                team=grant.team,
                epsilon_remaining=amounts.display(remaining) if remaining is not None else None,
                over_budget=outcome.over_budget,
            ),
        )

    # -- leases (docs/design/0021-leases.md) ------------------------------------------------

    async def _lease_grant(self, request: web.Request) -> web.Response:
        if not self._is_leader():
            return _lease_refusal(503, "standby", "This replica is not the active accountant")
        try:
            body = _parse_model(spending.LeaseGrantRequest, await request.read())
            grant, policy = await self._grant(request, body.policy, body.policy_hash)
            authorization.check_policy_hash(policy, body.policy_hash)
            route = authorization.check_route(body.policy, policy, body.route)
            price = self._prices.price(grant.namespace, body.policy, policy, route)
        except _REFUSED as error:
            return _lease_refusal_for(error)
        lease = book.LeaseRequest(
            lease_id=body.lease_id,
            consumer=_consumer(grant.namespace, grant.pod, grant.policy, grant.team),
            route=body.route,
            release=price.release,
            releases=body.releases,
            seconds=body.seconds,
            policy_hash=body.policy_hash,
        )

        def operation(working: book.Book, now: Any) -> book.Outcome:
            refusal = _unaccountable(working, body.policy, {body.route: price})
            return refusal or working.grant_lease(lease, now)

        return await self._lease_submit(grant, "lease", operation)

    async def _lease_report(self, request: web.Request) -> web.Response:
        return await self._lease_report_or_settle(request, settle=False)

    async def _lease_settle(self, request: web.Request) -> web.Response:
        return await self._lease_report_or_settle(request, settle=True)

    async def _lease_report_or_settle(self, request: web.Request, *, settle: bool) -> web.Response:
        if not self._is_leader():
            return _lease_refusal(503, "standby", "This replica is not the active accountant")
        lease_id = request.match_info["lease"]
        try:
            if _LEASE_ID.fullmatch(lease_id) is None:
                raise _BadRequestError(f"Not a lease id: {lease_id[:64]!r}")
            body = _parse_model(spending.LeaseReportRequest, await request.read())
            if settle and body.renew is not None:
                raise _BadRequestError("A settlement cannot renew the lease")
            grant, policy = await self._grant(request, body.policy, body.policy_hash)
            authorization.check_policy_hash(policy, body.policy_hash)
            prices = self._route_prices(grant.namespace, body.policy, policy)
            # Each distinct route is checked and priced once per report, not per release.
            used = {
                route: _reported_price(body.policy, policy, prices, route)
                for route in {item.route for item in body.releases}
            }
            reported = tuple(
                book.ReportedRelease(
                    request_id=item.request_id,
                    route=item.route,
                    time=item.time,
                    release=used[item.route].release,
                )
                for item in body.releases
            )
        except _REFUSED as error:
            return _lease_refusal_for(error)
        report = book.LeaseReport(
            lease_id=lease_id,
            consumer=_consumer(grant.namespace, grant.pod, grant.policy, grant.team),
            batch=body.batch,
            releases=reported,
            renew=body.renew,
            prices={route: price.release for route, price in prices.items()},
            seconds=body.seconds,
            policy_hash=body.policy_hash,
        )

        def operation(working: book.Book, now: Any) -> book.Outcome:
            refusal = _unaccountable(working, body.policy, used)
            return refusal or working.report_lease(report, now, settle=settle)

        return await self._lease_submit(
            grant,
            "settle" if settle else "report",
            operation,
            deferrable=body.deferrable and not settle,
            released_epsilon=float(sum(item.release.epsilon for item in reported)),
        )

    def _route_prices(
        self, namespace: str, policy_name: str, policy: Mapping[str, Any]
    ) -> dict[str, pricing.Price]:
        """Every route of the policy that can be priced, by path (cached per generation)."""
        prices: dict[str, pricing.Price] = {}
        for route in (policy.get("spec") or {}).get("routes") or []:
            if not isinstance(route, Mapping) or not isinstance(route.get("path"), str):
                continue
            try:
                prices[route["path"]] = self._prices.price(namespace, policy_name, policy, route)
            except authorization.DeniedError:
                continue  # refused when reported; a lease on it was never granted
        return prices

    async def _lease_submit(
        self,
        grant: authorization.Grant,
        action: str,
        operation: Callable[[book.Book, Any], book.Outcome],
        *,
        deferrable: bool = False,
        released_epsilon: float = 0.0,
    ) -> web.Response:
        labels = (grant.namespace, grant.budget, grant.team, action)
        started = time.perf_counter()
        try:
            budget = self._writers.writer(grant.namespace, grant.budget)
            outcome = await budget.submit(operation, deferrable=deferrable)
        except writer.BudgetUnavailableError as error:
            metrics.CHARGES.labels(*labels, "unavailable").inc()
            return _lease_refusal(error.status, "unavailable", str(error))
        finally:
            metrics.CHARGE_LATENCY.labels(action).observe(time.perf_counter() - started)
        metrics.CHARGES.labels(*labels, outcome.code).inc()
        if released_epsilon and outcome.code in ("reported", "settled"):
            # The declared epsilon of the releases made, once (a retry is "duplicate"), so
            # that the metric follows releases as it does for charges; the lease itself
            # is in the ledger.
            metrics.EPSILON_CHARGED.labels(grant.namespace, grant.budget, grant.team).inc(
                released_epsilon
            )
        lease = outcome.lease
        remaining = outcome.team_epsilon_remaining
        answer = spending.LeaseAnswer(
            outcome=outcome.code,  # the book's lease codes are a subset of spending.Outcome
            message=outcome.message,
            lease_id=lease.lease_id if lease is not None else None,
            sequence=outcome.sequence,
            budget=grant.budget,
            team=grant.team,
            route=lease.route if lease is not None else None,
            granted=list(lease.granted) if lease is not None else None,
            used=list(lease.used) if lease is not None else None,
            added=list(outcome.added) if outcome.added else None,
            returned=list(outcome.returned) if outcome.returned else None,
            releases_left=outcome.releases_left if lease is not None else None,
            reports=lease.reports if lease is not None else None,
            expires=lease.expires if lease is not None else None,
            epsilon_remaining=amounts.display(remaining) if remaining is not None else None,
            over_budget=outcome.over_budget,
        )
        return web.Response(
            text=answer.model_dump_json(by_alias=True, exclude_none=True),
            status=_OUTCOME_STATUS[outcome.code],
            content_type="application/json",
        )


_LEASE_ID = re.compile(spending.LEASE_ID_PATTERN)


def _reported_price(
    policy_name: str, policy: Mapping[str, Any], prices: Mapping[str, pricing.Price], route: str
) -> pricing.Price:
    """The price of a reported release's route; a route the policy does not declare is 403,
    one it cannot price is 409 (as for a charge)."""
    declared = authorization.check_route(policy_name, policy, route)
    price = prices.get(route)
    return price if price is not None else pricing.route_price(policy_name, declared)


def _unaccountable(
    working: book.Book, policy: str, prices: Mapping[str, pricing.Price]
) -> book.Outcome | None:
    """Refuse routes with partition selection under zCDP or RDP (as ``/v1/charge`` does)."""
    if working.mode == "pure":
        return None
    for route, price in prices.items():
        if price.selection_delta:
            return book.Outcome(
                code="unaccountable",
                ok=False,
                message=f"Policy {policy} route {route} selects keys by partition selection, "
                f"whose delta {working.mode} accounting does not count: charge it to a budget "
                "with pure accounting",
            )
    return None


def _lease_refusal(status: int, outcome: spending.Outcome, message: str) -> web.Response:
    answer = spending.LeaseAnswer(outcome=outcome, message=message)
    return web.Response(
        text=answer.model_dump_json(by_alias=True, exclude_none=True),
        status=status,
        content_type="application/json",
    )


def _lease_refusal_for(error: Exception) -> web.Response:
    if isinstance(error, authorization.DeniedError):
        return _lease_refusal(error.status, "denied", str(error))
    if isinstance(error, pydantic.ValidationError):
        return _lease_refusal(400, "bad-request", _describe(error))
    return _lease_refusal(400, "bad-request", str(error))


_Model = TypeVar("_Model", bound=pydantic.BaseModel)


def _parse_model(model: type[_Model], body: bytes) -> _Model:
    try:
        return model.model_validate_json(body)
    except pydantic.ValidationError as error:
        if any(problem["type"] == "json_invalid" for problem in error.errors()):
            raise _BadRequestError("The body is not JSON") from None
        raise


class _BadRequestError(Exception):
    pass


_REFUSED = (_BadRequestError, pydantic.ValidationError, authorization.DeniedError)


def _refusal_for(error: Exception) -> web.Response:
    """The answer to a request refused before it reached the ledger."""
    if isinstance(error, authorization.DeniedError):
        return _refusal(error.status, "denied", str(error))
    if isinstance(error, pydantic.ValidationError):
        return _refusal(400, "bad-request", _describe(error))
    return _refusal(400, "bad-request", str(error))


def _parse(body: bytes) -> protocol.SpendRequest:
    """The request body read straight from its JSON bytes by pydantic (no dict in between)."""
    try:
        return protocol.SpendRequest.model_validate_json(body)
    except pydantic.ValidationError as error:
        if any(problem["type"] == "json_invalid" for problem in error.errors()):
            raise _BadRequestError("The body is not JSON") from None
        raise


def _describe(error: pydantic.ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
        for problem in error.errors()
    )
