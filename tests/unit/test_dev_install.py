"""What ``hush dev up`` installs (``hush.dev.install``): pure builders, no cluster."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from hush.admission import mutation, webhooks
from hush.cli import main, webhook_certificates
from hush.cli import operator as operator_cli
from hush.dev import cluster, install, pki

PORTS = install.OperatorPorts(accountant=20001, webhook=20002, liveness=20003)
FILES = install.InstallFiles(Path("/state/hush-dev/hush"))


def _command() -> tuple[str, ...]:
    return install.build_operator_command(python="/venv/bin/python", ports_=PORTS, files=FILES)


def test_the_operator_command_is_one_hush_operator_accepts_with_loopback_endpoints() -> None:
    command = _command()
    assert command[:4] == ("/venv/bin/python", "-m", "hush", "operator")

    arguments = main.build_parser().parse_args(list(command[3:]))

    assert arguments.accountant_port == PORTS.accountant
    assert arguments.accountant_host == "127.0.0.1"
    assert arguments.webhook_port == PORTS.webhook
    assert arguments.webhook_host == "127.0.0.1"
    assert arguments.liveness == "http://127.0.0.1:20003/healthz"
    assert arguments.accountant_tls_cert == FILES.certificate
    assert arguments.leader_election is False
    assert operator_cli.leader_election_settings(arguments, {}, "me") is None
    options = webhook_certificates.keeper_options(arguments, {})
    assert options.mode == "files"
    assert options.certificate_file == FILES.certificate
    assert options.key_file == FILES.key
    # The injected pods get a digest-pinned image and the accountant's loopback URL.
    settings = mutation.Settings(
        image=arguments.sidecar_image, accountant_url=arguments.sidecar_accountant_url
    )
    assert settings.accountant_url == PORTS.accountant_url == "https://127.0.0.1:20001"
    assert "@sha256:" in settings.image


def test_the_command_digest_follows_the_command_and_the_code() -> None:
    digest = install.command_digest(_command(), "code-1")
    assert install.command_digest(_command(), "code-1") == digest
    assert install.command_digest(_command(), "code-2") != digest
    other_ports = install.OperatorPorts(accountant=1, webhook=2, liveness=3)
    other = install.build_operator_command(
        python="/venv/bin/python", ports_=other_ports, files=FILES
    )
    assert install.command_digest(other, "code-1") != digest


def test_the_code_fingerprint_is_stable_while_nothing_changes() -> None:
    assert install.code_fingerprint() == install.code_fingerprint()


def test_the_webhook_configurations_call_the_host_operator_by_url_with_its_ca() -> None:
    ca_pem = b"-----BEGIN CERTIFICATE-----\nabc\n-----END CERTIFICATE-----\n"
    mutating, validating = install.build_webhook_configurations(
        webhook_url=PORTS.webhook_url, ca_pem=ca_pem
    )
    assert mutating["metadata"]["name"] == webhooks.MUTATING_CONFIGURATION
    assert validating["metadata"]["name"] == webhooks.VALIDATING_CONFIGURATION
    entries = [*mutating["webhooks"], *validating["webhooks"]]
    assert len(entries) == 3
    for entry in entries:
        client_config = entry["clientConfig"]
        assert client_config["url"].startswith("https://127.0.0.1:20002/")
        assert "service" not in client_config
        assert base64.b64decode(client_config["caBundle"]) == ca_pem
        excluded = entry["namespaceSelector"]["matchExpressions"][0]["values"]
        assert install.HUSH_NAMESPACE in excluded
        assert "kube-system" in excluded


def test_the_admission_policies_let_the_dev_admin_change_the_enforcement_label() -> None:
    manifests = install.build_admission_policies()
    kinds = [manifest["kind"] for manifest in manifests]
    # Policies first, then their bindings: `kubectl apply` creates them in this order.
    assert kinds == sorted(kinds, key=lambda kind: kind.endswith("Binding"))
    guard = next(
        manifest
        for manifest in manifests
        if manifest["metadata"]["name"] == "hush-namespace-enforcement-label"
    )
    may_change = next(
        variable["expression"]
        for variable in guard["spec"]["variables"]
        if variable["name"] == "mayChange"
    )
    # The admin certificate of a dev cluster is O=system:masters (hush.dev.pki).
    assert install.ENFORCEMENT_LABEL_GROUPS == (pki.MASTERS_GROUP,)
    assert '["system:masters"]' in may_change
    assert "system:serviceaccount:hush-system:hush" in may_change
    names = {manifest["metadata"]["name"] for manifest in manifests}
    assert {"hush-workloads", "hush-injected-pods", "hush-workloads-enforce"} <= names


def test_the_install_record_round_trips() -> None:
    record = install.InstallRecord(ports=PORTS, command_digest="abc")
    assert install.InstallRecord.from_json(record.to_json()) == record
    with pytest.raises(ValueError, match="version"):
        install.InstallRecord.from_json('{"version": 99}')


def _status(operator_state: install.OperatorState | None) -> cluster.ClusterStatus:
    operator = (
        None
        if operator_state is None
        else install.OperatorStatus(
            state=operator_state,
            pid=1,
            ports=PORTS,
            detail="",
            log_file=Path("/state/logs/hush-operator.log"),
            log_tail="",
        )
    )
    return cluster.ClusterStatus(
        name="hush-dev",
        state_dir=Path("/state"),
        exists=True,
        kubeconfig=Path("/state/kubeconfig"),
        nodes=2,
        components=(),
        operator=operator,
    )


@pytest.mark.parametrize(
    ("operator_state", "healthy"),
    [(None, True), ("running", True), ("crashed", False), ("unhealthy", False)],
)
def test_a_cluster_with_hush_is_healthy_only_while_its_operator_runs(
    operator_state: install.OperatorState | None, healthy: bool
) -> None:
    assert _status(operator_state).healthy is healthy


def test_up_has_a_flag_to_leave_hush_out() -> None:
    parser = main.build_parser()
    assert parser.parse_args(["dev", "up"]).install_hush is True
    assert parser.parse_args(["dev", "up", "--no-hush"]).install_hush is False
