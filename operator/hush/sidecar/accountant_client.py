"""The sidecar's side of the spending protocol: one charge per release over HTTPS
(``POST /v1/charge``), and the policy-status poll (``GET /v1/policy-status``) that tells a
pod its baked policy is stale.

A charge names the request, the policy, the route (its declared pattern) and the baked
policy hash, and nothing else: the accountant derives the cost from the policy it reads
(``hush.privacy.route_cost``), so the sidecar reports no number it could lie about. The
charge is durable before it is granted, and there is no refund: once the sidecar has been
granted it calls the application, and whatever happens next the release counts as spent
(docs/design/0018-release-built-from-the-policy.md).

Speaks ``hush.accountant.protocol`` (by its JSON shape; the sidecar does not import the
accountant) with ``Authorization: Bearer <projected ServiceAccount token>``. The token file
is re-read every ``TOKEN_REFRESH_SECONDS`` because the kubelet rotates projected tokens.

Every failure maps to one exception with a stable ``reason`` so the proxy can fail closed
with a clear status; accountant messages are passed on (they carry no answer values).
Request ids make retries idempotent on the accountant's side; this client does not retry:
a failed charge refuses the request before the application is asked, which is always safe.
"""

from __future__ import annotations

import dataclasses
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

TOKEN_REFRESH_SECONDS = 60.0


class AccountantError(Exception):
    """A charge could not be made; ``reason`` is a stable code, ``status`` the HTTP answer."""

    reason = "accountant-error"
    status = 503


class UnreachableError(AccountantError):
    reason = "accountant-unreachable"


class ExhaustedError(AccountantError):
    reason = "budget-exhausted"
    status = 429


class StalePolicyError(AccountantError):
    reason = "stale-policy"


class RefusedError(AccountantError):
    reason = "accountant-refused"


@dataclasses.dataclass(frozen=True)
class Grant:
    outcome: str
    epsilon_remaining: str | None


@dataclasses.dataclass(frozen=True)
class PolicyStatus:
    """Whether the pod's baked policy hash is still the DPPolicy's, and why not."""

    stale: bool
    current_hash: str | None
    message: str


class AccountantClient:
    """One per sidecar process; owns an aiohttp session (``start``/``close``)."""

    def __init__(
        self,
        *,
        url: str,
        token_path: str,
        ca_path: str | None,
        timeout_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._url = url.rstrip("/")
        self._token_path = Path(token_path)
        self._ca_path = ca_path
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._clock = clock
        self._token: tuple[float, str] | None = None
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        context: ssl.SSLContext | bool = True
        if self._url.startswith("https://") and self._ca_path:
            context = ssl.create_default_context(cafile=self._ca_path)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=context, limit=64), timeout=self._timeout
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _bearer(self) -> str:
        now = self._clock()
        if self._token is None or self._token[0] <= now:
            try:
                token = self._token_path.read_text().strip()
            except OSError as error:
                raise UnreachableError(
                    f"Cannot read the accountant token at {self._token_path}: {error.strerror}"
                ) from error
            self._token = (now + TOKEN_REFRESH_SECONDS, token)
        return self._token[1]

    async def _post(self, action: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self._call("POST", action, json=body)

    async def _call(
        self,
        method: str,
        action: str,
        *,
        json: dict[str, Any] | None = None,
        params: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        if self._session is None:
            raise UnreachableError("The accountant client is not started")
        headers = {"Authorization": f"Bearer {self._bearer()}"}
        try:
            async with self._session.request(
                method, f"{self._url}/v1/{action}", json=json, params=params, headers=headers
            ) as reply:
                try:
                    answer = await reply.json(content_type=None)
                except ValueError:
                    answer = {}
                if not isinstance(answer, dict):
                    answer = {}
                if reply.status == 401:
                    self._token = None  # re-read a rotated token next time
                return reply.status, answer
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            raise UnreachableError(
                f"The accountant at {self._url} is unreachable ({type(error).__name__})"
            ) from error

    async def charge(self, *, request_id: str, policy: str, route: str, policy_hash: str) -> Grant:
        """Charge the cost of one release of ``route``; raise unless granted (or a duplicate)."""
        status, answer = await self._post(
            "charge",
            {"requestId": request_id, "policy": policy, "route": route, "policyHash": policy_hash},
        )
        message = str(answer.get("message") or f"the accountant answered {status}")
        if status == 200 and answer.get("outcome") in ("granted", "duplicate"):
            remaining = answer.get("epsilonRemaining")
            return Grant(
                outcome=str(answer["outcome"]),
                epsilon_remaining=None if remaining is None else str(remaining),
            )
        if status == 429:
            raise ExhaustedError(message)
        stale_code = answer.get("outcome") == StalePolicyError.reason
        if status == 409 and (stale_code or message.startswith("Stale policy")):
            raise StalePolicyError(message)
        if status in (502, 503, 504):
            raise UnreachableError(message)
        raise RefusedError(f"The accountant refused the charge ({status}): {message}")

    async def policy_status(self, *, policy: str, policy_hash: str) -> PolicyStatus:
        """Is ``policy_hash`` still the policy's? A deleted policy counts as stale."""
        status, answer = await self._call(
            "GET", "policy-status", params={"policy": policy, "policyHash": policy_hash}
        )
        message = str(answer.get("message") or f"the accountant answered {status}")
        if status == 200 and isinstance(answer.get("stale"), bool):
            current = answer.get("policyHash")
            return PolicyStatus(
                stale=answer["stale"],
                current_hash=None if current is None else str(current),
                message=message,
            )
        if status == 404 and answer.get("outcome") == "denied":
            return PolicyStatus(stale=True, current_hash=None, message=message)
        if status in (502, 503, 504):
            raise UnreachableError(message)
        raise RefusedError(f"The accountant refused the policy status ({status}): {message}")
