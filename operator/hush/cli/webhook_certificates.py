"""``hush operator`` flags for the webhook serving certificates, and the keeper they configure.

Kept apart from ``hush.cli.operator`` so that the certificate options have one home; that
module adds these flags to its "admission webhooks" group and calls ``configure_keeper``
when it serves webhooks. Nothing heavy is imported until ``configure_keeper`` runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hush.webhook import certificates

MODES = ("self-signed", "cert-manager", "files")  # hush.webhook.certificates.MODES
DEFAULT_SERVICE = "hush-webhook"
DEFAULT_SECRET = "hush-webhook-tls"  # noqa: S105 - a Secret's name, not a password


def add_arguments(group: Any) -> None:
    """Add the certificate flags to ``group`` (``--webhook-tls-cert``/``-key`` are there)."""
    group.add_argument(
        "--webhook-certs",
        choices=MODES,
        default=None,
        help="Where the webhooks' serving certificate comes from. self-signed: the operator "
        "keeps a CA and certificate in a Secret (--webhook-secret), renews them and writes "
        "the caBundle into the webhook configurations; cert-manager: files of a mounted "
        "cert-manager Secret (cert-manager's CA injector owns the caBundle); files: any "
        "--webhook-tls-cert/--webhook-tls-key pair. All modes reload changed files in place. "
        "Default: files when --webhook-tls-cert is given, else self-signed.",
    )
    group.add_argument(
        "--webhook-cert-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="Writable directory (e.g. an emptyDir) for the certificate and key being served. "
        "Default: a private temporary directory.",
    )
    group.add_argument(
        "--webhook-namespace",
        default=None,
        metavar="NAMESPACE",
        help="Namespace of the webhook Service and the certificate Secret. Default: "
        "$POD_NAMESPACE, else 'default'.",
    )
    group.add_argument(
        "--webhook-service",
        default=DEFAULT_SERVICE,
        metavar="NAME",
        help=f"The webhook Service the certificate is for (default: {DEFAULT_SERVICE}).",
    )
    group.add_argument(
        "--webhook-secret",
        default=DEFAULT_SECRET,
        metavar="NAME",
        help=f"Secret of the self-signed CA and certificate (default: {DEFAULT_SECRET}).",
    )
    group.add_argument(
        "--webhook-cert-dns-name",
        action="append",
        default=[],
        metavar="NAME",
        help="Extra DNS name for the self-signed certificate (repeatable).",
    )
    group.add_argument(
        "--webhook-cert-ip",
        action="append",
        default=[],
        metavar="ADDRESS",
        help="IP address for the self-signed certificate (repeatable), e.g. 127.0.0.1 when "
        "the apiserver calls an operator on its host by URL.",
    )
    group.add_argument(
        "--webhook-mutating-configuration",
        action="append",
        default=None,
        metavar="NAME",
        help="MutatingWebhookConfiguration whose caBundle the operator keeps (self-signed; "
        "repeatable; an empty name means none). Default: hush-injector.",
    )
    group.add_argument(
        "--webhook-validating-configuration",
        action="append",
        default=None,
        metavar="NAME",
        help="ValidatingWebhookConfiguration whose caBundle the operator keeps (self-signed; "
        "repeatable; an empty name means none). Default: hush-validator.",
    )
    group.add_argument(
        "--webhook-cert-sync-interval",
        type=float,
        default=120.0,
        metavar="SECONDS",
        help="How often to check the certificate, its Secret or files and the caBundles "
        "(default: 120).",
    )


def _names(given: list[str] | None, default: str) -> tuple[str, ...]:
    return tuple(name for name in (given if given is not None else [default]) if name)


def keeper_options(
    arguments: argparse.Namespace, environ: Mapping[str, str]
) -> certificates.Options:
    """The keeper's options from the flags; ``SystemExit`` names the flag to fix."""
    from hush.admission import certificates as pure
    from hush.admission import webhooks
    from hush.webhook import certificates

    chosen = arguments.webhook_certs or ("files" if arguments.webhook_tls_cert else "self-signed")
    mode = next(known for known in certificates.MODES if known == chosen)
    namespace = arguments.webhook_namespace or environ.get("POD_NAMESPACE") or "default"
    if mode != "self-signed":
        if arguments.webhook_tls_cert is None or arguments.webhook_tls_key is None:
            raise SystemExit(
                f"--webhook-certs={mode} needs --webhook-tls-cert and --webhook-tls-key"
            )
        return certificates.Options(
            mode=mode,
            directory=arguments.webhook_cert_dir,
            interval=arguments.webhook_cert_sync_interval,
            certificate_file=arguments.webhook_tls_cert,
            key_file=arguments.webhook_tls_key,
        )
    if arguments.webhook_tls_cert is not None or arguments.webhook_tls_key is not None:
        raise SystemExit("--webhook-tls-cert/-key are for --webhook-certs=files or cert-manager")
    references = [
        certificates.WebhookConfigurationRef(kind="MutatingWebhookConfiguration", name=name)
        for name in _names(
            arguments.webhook_mutating_configuration, webhooks.MUTATING_CONFIGURATION
        )
    ] + [
        certificates.WebhookConfigurationRef(kind="ValidatingWebhookConfiguration", name=name)
        for name in _names(
            arguments.webhook_validating_configuration, webhooks.VALIDATING_CONFIGURATION
        )
    ]
    try:
        names = pure.ServingNames(
            service=arguments.webhook_service,
            namespace=namespace,
            extra_dns_names=tuple(arguments.webhook_cert_dns_name),
            ip_addresses=tuple(arguments.webhook_cert_ip),
        )
        names.alternative_names()  # refuses a malformed --webhook-cert-ip now, not at startup
    except ValueError as error:
        raise SystemExit(f"--webhook-cert-ip: {error}") from None
    return certificates.Options(
        mode="self-signed",
        directory=arguments.webhook_cert_dir,
        interval=arguments.webhook_cert_sync_interval,
        names=names,
        secret_name=arguments.webhook_secret,
        webhook_configurations=tuple(references),
    )


def configure_keeper(
    arguments: argparse.Namespace, environ: Mapping[str, str]
) -> certificates.Keeper:
    """Configure the process's certificate keeper (started by ``hush.handlers``)."""
    from hush.webhook import certificates

    try:
        return certificates.configure(keeper_options(arguments, environ))
    except ValueError as error:
        raise SystemExit(str(error)) from None
