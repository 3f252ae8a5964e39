"""``hush operator``: run the kopf operator (reconcilers; later webhooks and accountant)."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hush.cli import webhook_certificates

if TYPE_CHECKING:
    from hush.accountant import leadership
    from hush.webhook import certificates as webhook_certificates_module
    from hush.webhook import service as webhook_service


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
    add_accountant_certificate_arguments(parser)
    parser.add_argument(
        "--accountant-audience",
        default="hush-accountant",
        help="Audience that sidecars' projected ServiceAccount tokens must be bound to.",
    )
    parser.add_argument(
        "--leader-election",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Run as one of several replicas: only the holder of a coordination.k8s.io Lease "
        "accepts spends; the others answer 503 to spends and /readyz until they take over. "
        "Off by default, so a single process (hush dev, e2e, bench) serves at once; the Helm "
        "chart turns it on. With $POD_NAME (and $POD_NAMESPACE) set, the leader labels that "
        "pod hush.dev/accountant-leader=true, which the chart's accountant Service selects.",
    )
    parser.add_argument(
        "--leader-election-namespace",
        default=None,
        metavar="NAMESPACE",
        help="Namespace of the Lease. Default: $POD_NAMESPACE, else 'default'.",
    )
    parser.add_argument(
        "--leader-election-name",
        default="hush-operator",
        metavar="NAME",
        help="Name of the Lease (default: hush-operator).",
    )
    webhook = parser.add_argument_group("admission webhooks")
    webhook.add_argument(
        "--webhook-port",
        type=int,
        default=None,
        help="Serve the admission webhooks (HTTPS) on this port. Default: do not serve.",
    )
    webhook.add_argument("--webhook-host", default="0.0.0.0", help="Address to listen on.")  # noqa: S104
    webhook.add_argument("--webhook-tls-cert", type=Path, default=None, metavar="PEM")
    webhook.add_argument("--webhook-tls-key", type=Path, default=None, metavar="PEM")
    webhook_certificates.add_arguments(webhook)
    webhook.add_argument(
        "--sidecar-image",
        default=None,
        metavar="IMAGE@sha256:DIGEST",
        help="The sidecar image to inject, pinned by digest. Without it, annotated pods are "
        "refused with a reason.",
    )
    webhook.add_argument(
        "--sidecar-accountant-url",
        default=None,
        metavar="URL",
        help="The accountant's URL as sidecars reach it, e.g. "
        "https://hush-accountant.hush-system.svc:8443",
    )
    webhook.add_argument(
        "--sidecar-ca-file",
        type=Path,
        default=None,
        metavar="PEM",
        help="CA bundle of the accountant's serving certificate; published as ConfigMap "
        "hush-accountant-ca in every namespace with a DPPolicy, where sidecars mount it.",
    )
    webhook.add_argument(
        "--break-glass-group",
        default=None,
        metavar="GROUP",
        help="Members of this group may exec/attach/debug into restricted pods; each use is "
        "recorded in an Event on the pod. Default: nobody.",
    )
    parser.add_argument(
        "--audit-interval",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="How often the background audit counts existing workloads that break the "
        "admission rules (metric hush_audit_violations); 0 turns it off. Default: 60.",
    )
    parser.add_argument(
        "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port."
    )
    parser.add_argument(
        "--log-format",
        choices=["json", "text"],
        default="json",
        help="json: one JSON object per line (default); text: for reading at a terminal.",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="Log at debug level.")
    parser.set_defaults(handler=run)


ACCOUNTANT_CERT_MODES = ("self-signed", "cert-manager", "files")
DEFAULT_ACCOUNTANT_SERVICE = "hush-accountant"
DEFAULT_ACCOUNTANT_SECRET = "hush-accountant-tls"  # noqa: S105 - a Secret's name


def add_accountant_certificate_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of the accountant's serving certificate (docs/certificates.md)."""
    group = parser.add_argument_group("accountant certificate")
    group.add_argument(
        "--accountant-certs",
        choices=ACCOUNTANT_CERT_MODES,
        default=None,
        help="Where the accountant's serving certificate comes from. self-signed: the "
        "operator keeps a CA and certificate in a Secret (--accountant-secret), renews them "
        "and publishes the CA as ConfigMap hush-accountant-ca for sidecars; cert-manager or "
        "files: --accountant-tls-cert/--accountant-tls-key (e.g. a mounted cert-manager "
        "Secret). Every mode reloads a renewed certificate in place. Default: files when "
        "--accountant-tls-cert is given, else self-signed.",
    )
    group.add_argument(
        "--accountant-namespace",
        default=None,
        metavar="NAMESPACE",
        help="Namespace of the accountant Service and its certificate Secret. Default: "
        "$POD_NAMESPACE, else 'default'.",
    )
    group.add_argument(
        "--accountant-service",
        default=DEFAULT_ACCOUNTANT_SERVICE,
        metavar="NAME",
        help=f"The accountant Service the certificate is for (default: "
        f"{DEFAULT_ACCOUNTANT_SERVICE}).",
    )
    group.add_argument(
        "--accountant-secret",
        default=DEFAULT_ACCOUNTANT_SECRET,
        metavar="NAME",
        help=f"Secret of the self-signed CA and certificate (default: "
        f"{DEFAULT_ACCOUNTANT_SECRET}).",
    )
    group.add_argument(
        "--accountant-cert-dns-name",
        action="append",
        default=[],
        metavar="NAME",
        help="Extra DNS name for the self-signed certificate (repeatable).",
    )
    group.add_argument(
        "--accountant-cert-ip",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="IP address for the self-signed certificate (repeatable).",
    )
    group.add_argument(
        "--accountant-cert-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="Writable directory for the certificate and key being served. Default: a "
        "private temporary directory.",
    )
    group.add_argument(
        "--accountant-cert-sync-interval",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="How often to check the certificate and its Secret or files (default: 120).",
    )


def accountant_certificate_options(
    arguments: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> webhook_certificates_module.Options:
    """The accountant certificate keeper's options; ``SystemExit`` names the flag to fix."""
    from hush.admission import certificates as pure
    from hush.webhook import certificates

    given = arguments.accountant_tls_cert is not None or arguments.accountant_tls_key is not None
    chosen = arguments.accountant_certs or ("files" if given else "self-signed")
    mode = next(known for known in certificates.MODES if known == chosen)
    if mode != "self-signed":
        if arguments.accountant_tls_cert is None or arguments.accountant_tls_key is None:
            raise SystemExit(
                f"--accountant-certs={mode} needs --accountant-tls-cert and --accountant-tls-key"
            )
        return certificates.Options(
            mode=mode,
            directory=arguments.accountant_cert_dir,
            interval=arguments.accountant_cert_sync_interval,
            certificate_file=arguments.accountant_tls_cert,
            key_file=arguments.accountant_tls_key,
        )
    if given:
        raise SystemExit(
            "--accountant-tls-cert/-key are for --accountant-certs=files or cert-manager"
        )
    namespace = arguments.accountant_namespace or environ.get("POD_NAMESPACE") or "default"
    try:
        names = pure.ServingNames(
            service=arguments.accountant_service,
            namespace=namespace,
            extra_dns_names=tuple(arguments.accountant_cert_dns_name),
            ip_addresses=tuple(arguments.accountant_cert_ip),
        )
        names.alternative_names()  # refuses a malformed --accountant-cert-ip now
    except ValueError as error:
        raise SystemExit(f"--accountant-cert-ip: {error}") from None
    return certificates.Options(
        mode="self-signed",
        directory=arguments.accountant_cert_dir,
        interval=arguments.accountant_cert_sync_interval,
        names=names,
        secret_name=arguments.accountant_secret,
    )


def leader_election_settings(
    arguments: argparse.Namespace, environ: Mapping[str, str], identity: str
) -> leadership.Settings | None:
    """The Lease to compete for, or None when ``--leader-election`` is off."""
    from hush.accountant import leadership

    if not arguments.leader_election:
        return None
    namespace = arguments.leader_election_namespace or environ.get("POD_NAMESPACE") or "default"
    pod_name = environ.get("POD_NAME")
    return leadership.Settings(
        namespace=namespace,
        name=arguments.leader_election_name,
        identity=identity,
        pod=leadership.PodRef(namespace=environ.get("POD_NAMESPACE") or namespace, name=pod_name)
        if pod_name
        else None,
    )


def webhook_options(
    arguments: argparse.Namespace, environ: Mapping[str, str] = os.environ
) -> webhook_service.Options:
    """How to serve the admission webhooks, from the flags (errors name the flag to fix)."""
    from hush.admission import mutation
    from hush.webhook import service as webhook_service
    from hush.webhook import validation as webhook_validation

    injection = None
    if arguments.sidecar_image or arguments.sidecar_accountant_url:
        if not (arguments.sidecar_image and arguments.sidecar_accountant_url):
            raise SystemExit("--sidecar-image and --sidecar-accountant-url go together")
        try:
            injection = mutation.Settings(
                image=arguments.sidecar_image, accountant_url=arguments.sidecar_accountant_url
            )
        except ValueError as error:
            raise SystemExit(f"--sidecar-image: {error}") from None
    ssl_context = None
    if arguments.webhook_port is not None:
        # The keeper loads the certificate at startup (before the server) and reloads it
        # in place when it is renewed (hush.webhook.certificates).
        ssl_context = webhook_certificates.configure_keeper(arguments, environ).loaded_ssl_context
    return webhook_service.Options(
        port=arguments.webhook_port,
        host=arguments.webhook_host,
        ssl_context=ssl_context,
        injection=injection,
        validate=webhook_validation.Validator(break_glass_group=arguments.break_glass_group),
    )


def run(arguments: argparse.Namespace) -> int:
    # Imported here, not at module level, so that other `hush` commands start fast.
    import kopf

    # Importing the handlers registers them with kopf's default registry.
    from hush import handlers
    from hush.accountant import leadership, service
    from hush.cli import garbage_collection

    try:  # refused before anything starts, like a bad flag
        gc_threshold = garbage_collection.gen0_threshold(os.environ)
    except ValueError as error:
        raise SystemExit(str(error)) from None
    from hush.handlers import accountant_ca
    from hush.webhook import certificates as webhook_certificates_keeper

    election = leader_election_settings(arguments, os.environ, leadership.default_identity())
    keeper = None
    # The operator publishes the CA for sidecars itself when it is the CA (self-signed),
    # unless a --sidecar-ca-file says otherwise.
    publishes_own_ca = False
    if arguments.accountant_port is not None:
        keeper_options = accountant_certificate_options(arguments)
        publishes_own_ca = keeper_options.mode == "self-signed" and not arguments.sidecar_ca_file
        try:
            keeper = webhook_certificates_keeper.build_accountant_keeper(
                keeper_options,
                on_ca_bundle=accountant_ca.publish_everywhere if publishes_own_ca else None,
            )
        except ValueError as error:
            raise SystemExit(str(error)) from None
    service.configure(
        service.Options(
            port=arguments.accountant_port,
            host=arguments.accountant_host,
            tls_keeper=keeper,
            audience=arguments.accountant_audience,
            leader_election=election,
        )
    )

    from hush.webhook import service as webhook_service

    webhook_service.configure(webhook_options(arguments))

    accountant_ca.configure(
        arguments.sidecar_ca_file,
        bundle=keeper.ca_bundle if keeper is not None and publishes_own_ca else None,
    )

    from hush.controllers import audit as audit_controller

    audit_controller.configure(
        audit_controller.AuditLoop(
            hush_namespace=os.environ.get("POD_NAMESPACE") or "default",
            interval=arguments.audit_interval,
        )
        if arguments.audit_interval > 0
        else None
    )

    from hush.observability import logging as structured_logging

    if arguments.metrics_port is not None:
        from hush.observability import metrics

        metrics.serve(arguments.metrics_port)
    namespaces: list[str] = arguments.namespace
    kopf.configure(log_format=kopf.LogFormat.JSON, log_prefix=False)  # kopf's own records
    structured_logging.configure(
        level=logging.DEBUG if arguments.verbose else logging.INFO,
        log_format=arguments.log_format,
        quiet_handlers=() if arguments.verbose else handlers.WATCH_EVENT_HANDLERS,
    )
    # Load the cluster credentials once, here, before kopf's login and the startup handlers
    # load them from worker threads: the kubernetes package's kubeconfig loader records a
    # CA temp file before it writes the file, so two first loads racing in threads can hand
    # one of them an empty CA ("no certificate or crl found", seen once in e2e). After this
    # load every later one finds the finished file.
    from hush.kube import client as kube_client

    kube_client.api_client()
    # Last before serving: everything startup built is frozen (docs/design/0017).
    garbage_collection.tune(gc_threshold)
    kopf.run(
        clusterwide=not namespaces,
        namespaces=namespaces,
        # Standalone in every replica, also with --leader-election: reconciliations are
        # idempotent, PrivacyBudget status is only written through the accountant's
        # compare-and-swap writer, and DPPolicy status is derived, so two replicas write
        # the same thing (docs/design/0008-leader-election.md). kopf peering is not leader
        # election: replicas of equal priority all freeze (docs.kopf.dev/en/latest/peering).
        standalone=True,
        liveness_endpoint=arguments.liveness,
    )
    return 0
