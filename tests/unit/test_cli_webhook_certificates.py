"""``hush operator`` certificate flags: which keeper they configure, and refusals that name
the flag to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from hush.admission import certificates as pure
from hush.cli import main, webhook_certificates
from hush.webhook import certificates


def _options(*flags: str, environ: dict[str, str] | None = None) -> certificates.Options:
    arguments = main.build_parser().parse_args(["operator", "--webhook-port=9443", *flags])
    return webhook_certificates.keeper_options(arguments, environ or {})


def test_self_signed_by_default_for_the_pod_namespace() -> None:
    options = _options(environ={"POD_NAMESPACE": "hush-system"})
    assert options.mode == "self-signed"
    assert options.names == pure.ServingNames(service="hush-webhook", namespace="hush-system")
    assert options.secret_name == "hush-webhook-tls"
    assert options.webhook_configurations == (
        certificates.WebhookConfigurationRef(
            kind="MutatingWebhookConfiguration", name="hush-injector"
        ),
        certificates.WebhookConfigurationRef(
            kind="ValidatingWebhookConfiguration", name="hush-validator"
        ),
    )
    assert options.directory is None
    assert options.interval == 120


def test_self_signed_for_a_host_process_called_by_url(tmp_path: Path) -> None:
    options = _options(
        "--webhook-certs=self-signed",
        "--webhook-namespace=hush-dev",
        "--webhook-service=hush",
        "--webhook-secret=certs",
        "--webhook-cert-ip=127.0.0.1",
        "--webhook-cert-dns-name=localhost",
        f"--webhook-cert-dir={tmp_path}",
        "--webhook-mutating-configuration=",
        "--webhook-validating-configuration=mine",
        "--webhook-validating-configuration=theirs",
        "--webhook-cert-sync-interval=30",
    )
    assert options.names == pure.ServingNames(
        service="hush",
        namespace="hush-dev",
        extra_dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    assert options.secret_name == "certs"
    assert [(ref.kind, ref.name) for ref in options.webhook_configurations] == [
        ("ValidatingWebhookConfiguration", "mine"),
        ("ValidatingWebhookConfiguration", "theirs"),
    ]
    assert options.directory == tmp_path
    assert options.interval == 30


def test_given_files_mean_files_mode(tmp_path: Path) -> None:
    options = _options(f"--webhook-tls-cert={tmp_path}/c", f"--webhook-tls-key={tmp_path}/k")
    assert options.mode == "files"
    assert options.certificate_file == tmp_path / "c"
    assert options.key_file == tmp_path / "k"


def test_cert_manager_mode_reads_the_mounted_files(tmp_path: Path) -> None:
    options = _options(
        "--webhook-certs=cert-manager",
        f"--webhook-tls-cert={tmp_path}/tls.crt",
        f"--webhook-tls-key={tmp_path}/tls.key",
    )
    assert options.mode == "cert-manager"
    assert options.webhook_configurations == ()  # cert-manager's CA injector owns caBundle


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--webhook-certs=cert-manager"], "needs --webhook-tls-cert and --webhook-tls-key"),
        (["--webhook-certs=self-signed", "--webhook-tls-cert=/c"], "are for --webhook-certs"),
        (["--webhook-cert-ip=localhost"], "--webhook-cert-ip"),
    ],
)
def test_refusals_name_the_flag(flags: list[str], message: str) -> None:
    with pytest.raises(SystemExit, match=message):
        _options(*flags)


def test_a_keeper_is_configured_only_when_webhooks_are_served() -> None:
    from hush.cli import operator

    arguments = main.build_parser().parse_args(["operator"])
    assert operator.webhook_options(arguments, {}).ssl_context is None
