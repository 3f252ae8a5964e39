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


# -- the accountant's certificate ---------------------------------------------------------------


def _accountant_options(*flags: str, environ: dict[str, str] | None = None) -> certificates.Options:
    from hush.cli import operator as operator_command

    arguments = main.build_parser().parse_args(["operator", "--accountant-port=8443", *flags])
    return operator_command.accountant_certificate_options(arguments, environ or {})


def test_the_accountant_is_self_signed_by_default_for_its_service() -> None:
    options = _accountant_options(environ={"POD_NAMESPACE": "hush-system"})
    assert options.mode == "self-signed"
    assert options.names == pure.ServingNames(service="hush-accountant", namespace="hush-system")
    assert options.secret_name == "hush-accountant-tls"
    assert options.webhook_configurations == ()
    assert options.interval == 120


def test_the_accountant_self_signed_for_a_host_process(tmp_path: Path) -> None:
    options = _accountant_options(
        "--accountant-namespace=hush-dev",
        "--accountant-service=dev-hush-accountant",
        "--accountant-secret=dev-tls",
        "--accountant-cert-ip=127.0.0.1",
        "--accountant-cert-dns-name=accountant.local",
        f"--accountant-cert-dir={tmp_path}",
        "--accountant-cert-sync-interval=2",
    )
    assert options.names == pure.ServingNames(
        service="dev-hush-accountant",
        namespace="hush-dev",
        extra_dns_names=("accountant.local",),
        ip_addresses=("127.0.0.1",),
    )
    assert (options.secret_name, options.directory, options.interval) == ("dev-tls", tmp_path, 2)


def test_the_accountant_files_when_given_and_cert_manager_needs_both(tmp_path: Path) -> None:
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    options = _accountant_options(f"--accountant-tls-cert={cert}", f"--accountant-tls-key={key}")
    assert (options.mode, options.certificate_file, options.key_file) == ("files", cert, key)
    with pytest.raises(SystemExit, match="--accountant-tls-cert and --accountant-tls-key"):
        _accountant_options("--accountant-certs=cert-manager", f"--accountant-tls-cert={cert}")
    with pytest.raises(SystemExit, match="are for --accountant-certs=files or cert-manager"):
        _accountant_options("--accountant-certs=self-signed", f"--accountant-tls-key={key}")
    with pytest.raises(SystemExit, match="--accountant-cert-ip"):
        _accountant_options("--accountant-cert-ip=not-an-address")


async def test_the_accountant_ca_is_published_from_the_keeper_into_namespaces_with_policies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from hush.handlers import accountant_ca
    from hush.kube import client

    applied: list[tuple[str, str, dict[str, str]]] = []
    monkeypatch.setattr(
        client,
        "list_objects",
        lambda **_: [
            {"metadata": {"namespace": "analytics", "name": "a"}},
            {"metadata": {"namespace": "analytics", "name": "b"}},
            {"metadata": {"namespace": "finance", "name": "c"}},
        ],
    )
    monkeypatch.setattr(
        client,
        "apply_config_map",
        lambda namespace, name, data, **_: applied.append((namespace, name, dict(data))),
    )
    await accountant_ca.publish_everywhere(b"PEM")
    assert applied == [
        ("analytics", "hush-accountant-ca", {"ca.crt": "PEM"}),
        ("finance", "hush-accountant-ca", {"ca.crt": "PEM"}),
    ]
    bundle: list[bytes | None] = [None]
    accountant_ca.configure(None, bundle=lambda: bundle[0])
    try:
        assert accountant_ca.current_bundle() is None  # not loaded yet: the handler retries
        bundle[0] = b"CA"
        assert accountant_ca.current_bundle() == "CA"
    finally:
        accountant_ca.configure(None)
