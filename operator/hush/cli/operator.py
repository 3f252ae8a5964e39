"""``hush operator``: run the kopf operator (reconcilers; later webhooks and accountant)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "operator", help="Run the Hush operator against the current kubeconfig or in-cluster."
    )
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        help="Watch only this namespace (repeatable; globs allowed). Default: all namespaces.",
    )
    scope.add_argument(
        "--all-namespaces", "-A", action="store_true", help="Watch every namespace (default)."
    )
    parser.add_argument(
        "--liveness",
        default=None,
        metavar="URL",
        help="Serve kopf's liveness probe, e.g. http://0.0.0.0:8080/healthz",
    )
    parser.add_argument(
        "--accountant-port",
        type=int,
        default=None,
        help="Serve the accountant (HTTPS) on this port; sidecars charge budgets there.",
    )
    parser.add_argument("--accountant-host", default="0.0.0.0", help="Address to listen on.")  # noqa: S104
    parser.add_argument("--accountant-tls-cert", type=Path, default=None, metavar="PEM")
    parser.add_argument("--accountant-tls-key", type=Path, default=None, metavar="PEM")
    parser.add_argument(
        "--accountant-audience",
        default="hush-accountant",
        help="Audience that sidecars' projected ServiceAccount tokens must be bound to.",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port."
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="Log at debug level.")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    # Imported here, not at module level, so that other `hush` commands start fast.
    import kopf

    # Importing the handlers registers them with kopf's default registry.
    from hush import handlers  # noqa: F401
    from hush.accountant import service

    service.configure(
        service.Options(
            port=arguments.accountant_port,
            host=arguments.accountant_host,
            tls_cert=arguments.accountant_tls_cert,
            tls_key=arguments.accountant_tls_key,
            audience=arguments.accountant_audience,
        )
    )

    logging.basicConfig(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s [%(name)s] %(message)s",
    )
    if arguments.metrics_port is not None:
        from hush.observability import metrics

        metrics.serve(arguments.metrics_port)
    namespaces: list[str] = arguments.namespace
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        # One replica for now; leader election arrives with the ledger, which needs a
        # single writer (see docs/design for the spending protocol).
        standalone=True,
        liveness_endpoint=arguments.liveness,
    )
    return 0
