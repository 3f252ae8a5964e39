"""A stand-in accountant for the sidecar benchmark: the real protocol, no ledger, no cluster.

Usage: bench/accountant_stub.py --port N --cert CHAIN --key KEY --token-file PATH
(bench/bench_sidecar.py starts it on the load generator's core).

Why a stub: the real accountant lives in the operator, needs a kube-apiserver, and its own
throughput (a few hundred committed charges/s, bound by status writes) is what
bench/bench_accountant.py measures. The sidecar benchmark asks what the *sidecar* costs per
request, so the accounting round trip it makes (one charge, before it calls the upstream)
goes to this process, which answers at once. They are real round trips: HTTPS on loopback with
the sidecar's own client (``hush.sidecar.accountant_client``), bodies parsed with the
accountant's models (``hush.accountant.protocol``), the bearer token checked, answers shaped
and coded as ``hush.accountant.server`` shapes them. What it leaves out is everything behind
the protocol: TokenReview, the pod and policy lookups, the budget check, the ledger write.

``GET /v1/policy-status`` always says the caller's policy is current. ``GET /stats`` returns
how many charges were granted, so that the benchmark can check that every answer it counted
was really charged. Like the real accountant, it takes no cost from the sidecar: each charge
is counted at ``CHARGE_EPSILON``, the epsilon of the benchmark policy's routes.
"""

from __future__ import annotations

import argparse
import decimal
import hmac
import json
import ssl
from pathlib import Path

import pydantic
from aiohttp import web

from hush.accountant import protocol
from hush.privacy import amounts

STARTING_EPSILON = decimal.Decimal(1_000_000_000)
CHARGE_EPSILON = decimal.Decimal("0.5")  # bench_sidecar.py's routes


class StubAccountant:
    """Grants every well-formed charge of a caller with the right token."""

    def __init__(self, token: str) -> None:
        self._token = token
        self._remaining = STARTING_EPSILON
        self._charged: set[str] = set()
        self.counts = {"charge": 0, "duplicate": 0, "refused": 0, "policy-status": 0}

    def application(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024)
        app.add_routes(
            [
                web.post("/v1/charge", self._charge),
                web.get("/v1/policy-status", self._policy_status),
                web.get("/healthz", self._healthz),
                web.get("/stats", self._stats),
            ]
        )
        return app

    def _answer(self, status: int, outcome: str, message: str) -> web.Response:
        answer = protocol.Answer(
            outcome=outcome,
            message=message,
            budget="bench",
            team="analytics",
            epsilon_remaining=amounts.display(self._remaining),
        )
        if status != 200:
            self.counts["refused"] += 1
        return web.json_response(
            answer.model_dump(mode="json", by_alias=True, exclude_none=True), status=status
        )

    def _authorised(self, request: web.Request) -> bool:
        header = request.headers.get("Authorization", "")
        return hmac.compare_digest(header, f"Bearer {self._token}")

    async def _charge(self, request: web.Request) -> web.Response:
        if not self._authorised(request):
            return self._answer(401, "denied", "Missing or wrong bearer token")
        try:
            body = protocol.SpendRequest.model_validate(await request.json())
        except (pydantic.ValidationError, ValueError) as error:
            return self._answer(400, "bad-request", str(error))
        if body.request_id in self._charged:
            self.counts["duplicate"] += 1
            return self._answer(200, "duplicate", f"Request {body.request_id} was already charged")
        self._charged.add(body.request_id)
        self._remaining -= CHARGE_EPSILON
        self.counts["charge"] += 1
        return self._answer(200, "granted", "Charged (benchmark stub: nothing was written)")

    async def _policy_status(self, request: web.Request) -> web.Response:
        """The baked policy is always current here: the sidecar keeps releasing."""
        if not self._authorised(request):
            return self._answer(401, "denied", "Missing or wrong bearer token")
        self.counts["policy-status"] += 1
        return web.json_response(
            {
                "policy": request.query.get("policy", ""),
                "policyHash": request.query.get("policyHash"),
                "stale": False,
                "message": "The policy is current (benchmark stub)",
            }
        )

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats(self, _: web.Request) -> web.Response:
        return web.json_response(self.counts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", type=Path, required=True, help="Certificate chain (PEM)")
    parser.add_argument("--key", type=Path, required=True)
    parser.add_argument("--token-file", type=Path, required=True)
    arguments = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(arguments.cert, arguments.key)
    stub = StubAccountant(arguments.token_file.read_text().strip())
    print(json.dumps({"event": "Started accountant stub", "port": arguments.port}), flush=True)
    web.run_app(
        stub.application(),
        host="127.0.0.1",
        port=arguments.port,
        ssl_context=context,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
