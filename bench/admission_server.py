"""A webhook server process for bench/bench_admission.py: Hush's handlers or a no-op.

Usage: admission_server.py --port N --cert PEM --key PEM (--hush | --noop)

Both variants are the same stack — aiohttp behind the same TLS context, one process, the
same JSON parsing of the AdmissionReview — so their difference is what Hush's decision
costs. ``--hush`` serves ``hush.webhook.server.WebhookServer`` with an in-memory lookup (a
Ready DPPolicy and an enforce-mode namespace): the handler's own latency, not the
apiserver's. ``--noop`` answers ``allowed`` for the request's uid after parsing the body.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import ssl
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from hush.admission import mutation, webhooks
from hush.webhook import server
from hush.webhook import validation as webhook_validation

POLICY: dict[str, Any] = {
    "metadata": {
        "name": "bench",
        "namespace": "bench",
        "uid": "0b7c-bench",
        "resourceVersion": "7",
    },
    "spec": {
        "budgetRef": {"name": "bench", "team": "analytics"},
        "upstream": {"port": 8080},
        "routes": [
            {
                "path": "/count",
                "mechanism": "laplace",
                "epsilon": 0.1,
                "fields": [{"path": "$.count", "kind": "count"}],
            }
        ],
    },
    "status": {"conditions": [{"type": "Ready", "status": "True", "reason": "Accepted"}]},
}


class MemoryCluster:
    async def read_policy(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return POLICY if name == "bench" else None

    async def read_namespace_labels(self, name: str) -> Mapping[str, str] | None:
        return {webhooks.ENFORCEMENT_LABEL: "enforce"}

    async def read_pod(self, namespace: str, name: str) -> Mapping[str, Any] | None:
        return None

    async def record_event(self, pod: Mapping[str, Any], reason: str, message: str) -> None:
        return None


def noop_application() -> web.Application:
    async def answer(request: web.Request) -> web.Response:
        body = json.loads(await request.read())
        uid = (body.get("request") or {}).get("uid", "")
        return web.json_response(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "response": {"uid": uid, "allowed": True},
            }
        )

    app = web.Application()
    app.router.add_post(webhooks.MUTATE_PATH, answer)
    app.router.add_post(webhooks.VALIDATE_PATH, answer)
    return app


def hush_application() -> web.Application:
    return server.WebhookServer(
        MemoryCluster(),
        injection=mutation.Settings(
            image="registry.invalid/hush@sha256:" + "5" * 64,
            accountant_url="https://127.0.0.1:1",
        ),
        validate=webhook_validation.Validator(break_glass_group=None),
    ).application()


async def serve(app: web.Application, port: int, context: ssl.SSLContext) -> None:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, ssl_context=context).start()
    print("ready", flush=True)
    await asyncio.Event().wait()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    variant = parser.add_mutually_exclusive_group(required=True)
    variant.add_argument("--hush", action="store_true")
    variant.add_argument("--noop", action="store_true")
    arguments = parser.parse_args()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(arguments.cert, arguments.key)
    app = hush_application() if arguments.hush else noop_application()
    asyncio.run(serve(app, arguments.port, context))


if __name__ == "__main__":
    main()
