"""The admission webhook HTTPS server: read the review, look up, decide, answer.

Two webhook paths (``hush.admission.webhooks``): ``/mutate-pods`` (sidecar injection) and
``/validate-workloads`` (workload rules that need lookups, and exec/attach/ephemeral
containers into restricted pods). Each handler parses the AdmissionReview, does the
lookups the pure decision needs through ``Cluster`` with a short timeout, and answers.

Every answer is a well-formed AdmissionReview with HTTP 200, also for a malformed body or
a failed lookup: the apiserver then shows our message instead of a transport error. A
failed lookup *denies* where the decision depends on it (an annotated pod whose policy
cannot be read would otherwise start without its sidecar): fail closed, with the reason.

The handlers never log object contents, only the object's identity and the decision.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from aiohttp import web

from hush.admission import mutation, review, webhooks
from hush.observability import metrics

logger = logging.getLogger(__name__)

LOOKUP_TIMEOUT_SECONDS = 2.0
MAX_BODY_BYTES = 3 * 1024 * 1024  # the apiserver's own request limit is 3 MiB


class Cluster(Protocol):
    """The lookups admission decisions need (``KubeCluster`` in ``hush.webhook.service``)."""

    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def read_namespace_labels(self, name: str) -> Mapping[str, str] | None: ...

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None: ...

    async def record_event(self, pod: Mapping[str, Any], reason: str, message: str) -> None: ...


# The validating decision, wired by the service: (request, namespace mode, cluster) ->
# AdmissionReview answer. Kept as a callable so that the rules (hush.admission.validation)
# and their lookups evolve without touching the HTTP edge.
Validate = Callable[[review.Request, str, Cluster], Awaitable[dict[str, Any]]]


class WebhookServer:
    def __init__(
        self,
        cluster: Cluster,
        *,
        injection: mutation.Settings | None,
        validate: Validate | None,
    ) -> None:
        self._cluster = cluster
        self._injection = injection
        self._validate = validate

    def application(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_post(webhooks.MUTATE_PATH, self._mutate_handler)
        app.router.add_post(webhooks.VALIDATE_PATH, self._validate_handler)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._healthz)
        return app

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _answer(
        self,
        http_request: web.Request,
        webhook: str,
        decide: Callable[[review.Request], Awaitable[dict[str, Any]]],
    ) -> web.Response:
        started = time.perf_counter()
        try:
            body = await http_request.read()
            request = review.parse(body)
        except review.MalformedReviewError as error:
            metrics.ADMISSION_ERRORS.labels(webhook, "malformed").inc()
            logger.warning("Refused a malformed AdmissionReview on %s: %s", webhook, error)
            answer = review.deny_malformed(error)
        except web.HTTPRequestEntityTooLarge:
            metrics.ADMISSION_ERRORS.labels(webhook, "too-large").inc()
            answer = review.deny_malformed(review.MalformedReviewError("The body is too large"))
        else:
            try:
                answer = await decide(request)
            except Exception:  # a hostile object must never crash the server or allow
                metrics.ADMISSION_ERRORS.labels(webhook, "internal").inc()
                logger.exception("Failed to decide %s on %s", request.describe(), webhook)
                answer = review.deny(
                    request.uid,
                    f"{request.describe()}: Hush could not decide this request (internal "
                    "error, see the operator's log); it is refused to be safe",
                    code=500,
                    reason="InternalError",
                )
        allowed = bool((answer.get("response") or {}).get("allowed"))
        metrics.ADMISSION_REQUESTS.labels(webhook, "allowed" if allowed else "denied").inc()
        metrics.ADMISSION_LATENCY.labels(webhook).observe(time.perf_counter() - started)
        return web.json_response(answer)

    async def _mutate_handler(self, http_request: web.Request) -> web.Response:
        return await self._answer(http_request, "mutate-pods", self.mutate)

    async def _validate_handler(self, http_request: web.Request) -> web.Response:
        return await self._answer(http_request, "validate-workloads", self.validate)

    async def mutate(self, request: review.Request) -> dict[str, Any]:
        if request.kind != "Pod" or request.operation != "CREATE" or request.sub_resource:
            return review.allow(request.uid)
        pod = request.object or {}
        name = mutation.policy_name_of(pod)
        if name is None or mutation.is_injected(pod):
            return review.allow(request.uid)
        if self._injection is None:
            return review.deny(
                request.uid,
                f"{request.describe()} asks for DP policy {name}, but this Hush operator "
                "was started without injection settings (--sidecar-image, "
                "--sidecar-accountant-url): fix the operator's configuration",
                code=503,
                reason="ServiceUnavailable",
            )
        try:
            # asyncio.timeout, not wait_for: no task per lookup (most are answered from
            # the operator's cache without waiting).
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                policy = await self._cluster.read_policy(request.namespace, name)
        except Exception as error:  # any failed lookup: refuse, do not start unguarded
            metrics.ADMISSION_ERRORS.labels("mutate-pods", "lookup").inc()
            logger.warning("Could not read DPPolicy %s/%s: %r", request.namespace, name, error)
            return review.deny(
                request.uid,
                f"{request.describe()}: Hush could not read DPPolicy {request.namespace}/"
                f"{name} ({type(error).__name__}); retry, and check the operator's logs",
                code=503,
                reason="ServiceUnavailable",
            )
        decided = mutation.mutate_pod(
            pod, namespace=request.namespace, policy=policy, settings=self._injection
        )
        if not decided.allowed:
            logger.info("Refused to inject into %s: %s", request.describe(), decided.message)
            return review.deny(request.uid, f"{request.describe()}: {decided.message}")
        if decided.injected:
            # Debug: the pod itself records it (hush.dev/injected, hush.dev/policy-hash), and
            # a line per pod creation is noise on a busy cluster.
            logger.debug(
                "Injected sidecar into %s (policy %s, hash %s)",
                request.describe(),
                decided.policy_name,
                decided.policy_hash,
            )
        return review.allow(request.uid, patch_json=decided.patch_json, warnings=decided.warnings)

    async def validate(self, request: review.Request) -> dict[str, Any]:
        if self._validate is None:
            return review.allow(request.uid)
        try:
            async with asyncio.timeout(LOOKUP_TIMEOUT_SECONDS):
                labels = await self._cluster.read_namespace_labels(request.namespace)
        except Exception as error:
            metrics.ADMISSION_ERRORS.labels("validate-workloads", "lookup").inc()
            logger.warning("Could not read Namespace %s: %r", request.namespace, error)
            return review.deny(
                request.uid,
                f"{request.describe()}: Hush could not read Namespace {request.namespace} "
                f"({type(error).__name__}) to find its enforcement mode; retry",
                code=503,
                reason="ServiceUnavailable",
            )
        mode = (labels or {}).get(webhooks.ENFORCEMENT_LABEL, "")
        if mode not in ("enforce", "warn", "audit"):
            return review.allow(request.uid)
        return await self._validate(request, mode, self._cluster)
