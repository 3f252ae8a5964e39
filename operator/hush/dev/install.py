"""All of Hush on a dev cluster: the operator as a host process, its webhooks and policies.

``hush dev up`` calls :func:`ensure_installed` once the control plane runs (``--no-hush``
calls :func:`ensure_removed` instead). Pods do not run under kwok, so the operator runs on
this host, exactly as ``hush operator`` runs in the chart's Deployment but with loopback
addresses:

- the accountant and the admission webhooks serve HTTPS on free loopback ports, with one
  serving certificate for ``127.0.0.1`` (``--webhook-certs=files``): its chain is known before
  the operator starts, so the webhook configurations are registered with their ``caBundle``
  at once and admission works the moment ``up`` returns (the chart's self-signed mode would
  leave a window until the operator has published the bundle);
- the apiserver calls the webhooks by URL (``clientConfig.url``), not through a Service,
  which would resolve to a ClusterIP that nothing routes (``hush.admission.webhooks``);
- the ValidatingAdmissionPolicies are the chart's (``hush.admission.policies``), with the
  dev admin's group (``system:masters``, ``hush.dev.pki``) allowed to change the
  ``hush.dev/enforcement`` label of namespaces, so ``kubectl label`` works for a developer;
- injected pods get a fixed, digest-pinned image reference (:data:`SIDECAR_IMAGE`) that is
  never pulled, and the accountant's loopback URL.

The operator runs with the admin kubeconfig: a ServiceAccount token would expire under a
process that lives until ``hush dev down``. Its pid file and log sit with the control
plane's (``run/hush-operator.pid``, ``logs/hush-operator.log``), so ``down`` stops it with
everything else; its ports, certificate and command digest are in ``hush/`` of the state
directory. ``ensure_installed`` is idempotent: a live, healthy operator started with the same
command line from the same source code is kept; a dead, unhealthy or outdated one is
replaced (on the same ports when they are free); the Hush namespace, webhook configurations
and policies are server-side applied every time, which also keeps them current.

The manifest and command builders are pure; the I/O goes through the cluster's ``kubectl``
and ``hush.dev.processes``, like the rest of ``hush.dev``.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
import logging
import shutil
import socket
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, Literal

import yaml
from cryptography import x509

import hush
from hush.admission import policies, webhooks
from hush.dev import bootstrap, errors, health, layout, pki, ports, processes

logger = logging.getLogger(__name__)

Manifest = dict[str, Any]

HUSH_NAMESPACE: Final = "hush-system"
OPERATOR_PROCESS: Final = "hush-operator"
# The ServiceAccount the chart runs the operator as: the namespace guard names it. The host
# process itself authenticates as the admin, whose group the guard allows as well.
OPERATOR_SERVICE_ACCOUNT: Final = "hush"
# Never pulled (kwok runs no containers); fixed, so that injected pods are reproducible.
SIDECAR_IMAGE: Final = (
    "ghcr.io/hush-dev/hush@sha256:b01b6f6e89c8368499f2c5902a0fa4ac62450bbfd6e0ecbb07b187450ebae871"
)
ENFORCEMENT_LABEL_GROUPS: Final = (pki.MASTERS_GROUP,)
FIELD_MANAGER: Final = "hush-dev"
OPERATOR_READY_TIMEOUT_SECONDS: Final = 90.0
CERTIFICATE_RENEW_BEFORE: Final = datetime.timedelta(days=30)
_RECORD_VERSION: Final = 1
_POLL_SECONDS: Final = 0.25

OperatorState = Literal["running", "unhealthy", "crashed", "not started"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorPorts:
    """The loopback ports of the host-process operator."""

    accountant: int
    webhook: int
    liveness: int

    @property
    def accountant_url(self) -> str:
        return f"https://127.0.0.1:{self.accountant}"

    @property
    def webhook_url(self) -> str:
        return f"https://127.0.0.1:{self.webhook}"

    @property
    def liveness_url(self) -> str:
        return f"http://127.0.0.1:{self.liveness}/healthz"


@dataclasses.dataclass(frozen=True)
class InstallFiles:
    """Hush's files in a cluster's state directory."""

    directory: Path

    @property
    def record(self) -> Path:
        return self.directory / "install.json"

    @property
    def certificate(self) -> Path:
        """Serving chain (leaf, then its CA) of the accountant and webhooks: also the trust
        bundle of their clients (the apiserver's ``caBundle``, sidecars, the demo)."""
        return self.directory / "tls.crt"

    @property
    def key(self) -> Path:
        return self.directory / "tls.key"

    @property
    def served_certificates(self) -> Path:
        """Where the operator's certificate keeper writes the pair it serves."""
        return self.directory / "webhook-served"


def files_for(cluster: layout.ClusterLayout) -> InstallFiles:
    return InstallFiles(cluster.state_dir / "hush")


@dataclasses.dataclass(frozen=True, kw_only=True)
class InstallRecord:
    """What ``ensure_installed`` remembers in ``hush/install.json``."""

    ports: OperatorPorts
    command_digest: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": _RECORD_VERSION,
                "ports": dataclasses.asdict(self.ports),
                "commandDigest": self.command_digest,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> InstallRecord:
        data: dict[str, Any] = json.loads(text)
        if data.get("version") != _RECORD_VERSION:
            raise ValueError(f"unsupported install.json version {data.get('version')!r}")
        return cls(
            ports=OperatorPorts(**{key: int(value) for key, value in data["ports"].items()}),
            command_digest=str(data["commandDigest"]),
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class OperatorStatus:
    """The host-process operator of one cluster, as ``hush dev status`` shows it."""

    state: OperatorState
    pid: int | None
    ports: OperatorPorts | None
    detail: str
    log_file: Path
    log_tail: str


# -- pure builders -------------------------------------------------------------------------------


def build_operator_command(
    *,
    python: str,
    ports_: OperatorPorts,
    files: InstallFiles,
    sidecar_image: str = SIDECAR_IMAGE,
) -> tuple[str, ...]:
    """``hush operator`` with the accountant and webhooks on loopback (see module doc)."""
    return (
        python,
        "-m",
        "hush",
        "operator",
        "--all-namespaces",
        "--log-format=text",
        f"--liveness={ports_.liveness_url}",
        f"--accountant-port={ports_.accountant}",
        "--accountant-host=127.0.0.1",
        f"--accountant-tls-cert={files.certificate}",
        f"--accountant-tls-key={files.key}",
        f"--webhook-port={ports_.webhook}",
        "--webhook-host=127.0.0.1",
        "--webhook-certs=files",
        f"--webhook-tls-cert={files.certificate}",
        f"--webhook-tls-key={files.key}",
        f"--webhook-cert-dir={files.served_certificates}",
        f"--webhook-namespace={HUSH_NAMESPACE}",
        f"--sidecar-image={sidecar_image}",
        f"--sidecar-accountant-url={ports_.accountant_url}",
    )


def command_digest(command: Sequence[str], code_fingerprint: str) -> str:
    """Changes when the command line or the code it runs changes: then the operator restarts."""
    document = json.dumps({"command": list(command), "code": code_fingerprint})
    return hashlib.sha256(document.encode()).hexdigest()[:16]


def build_namespace() -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": HUSH_NAMESPACE, "labels": {"app.kubernetes.io/part-of": "hush"}},
    }


def build_webhook_configurations(*, webhook_url: str, ca_pem: bytes) -> list[Manifest]:
    """The chart's two webhook configurations, calling ``webhook_url`` with ``ca_pem``."""
    settings = webhooks.Settings(
        target=webhooks.UrlTarget(url=webhook_url),
        hush_namespace=HUSH_NAMESPACE,
        ca_bundle=base64.b64encode(ca_pem).decode("ascii"),
    )
    return [
        webhooks.build_mutating_configuration(settings),
        webhooks.build_validating_configuration(settings),
    ]


def policy_settings() -> policies.PolicySettings:
    return policies.PolicySettings(
        hush_namespace=HUSH_NAMESPACE,
        operator_service_account=OPERATOR_SERVICE_ACCOUNT,
        enforcement_label_groups=ENFORCEMENT_LABEL_GROUPS,
    )


def build_admission_policies() -> list[Manifest]:
    """The chart's ValidatingAdmissionPolicies and bindings (policies first)."""
    return policies.all_manifests(policy_settings())


# -- files -------------------------------------------------------------------------------------


def code_fingerprint() -> str:
    """A digest of the hush package's source files (path, size, mtime): an edited checkout
    (an editable install) restarts the operator on the next ``up``."""
    root = Path(hush.__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        info = path.stat()
        digest.update(f"{path.relative_to(root)}:{info.st_size}:{info.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def _load_record(files: InstallFiles) -> InstallRecord | None:
    try:
        return InstallRecord.from_json(files.record.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        logger.warning("Ignored unreadable %s: %s", files.record, error)
        return None


def _certificate_is_usable(files: InstallFiles, now: datetime.datetime) -> bool:
    try:
        leaf = x509.load_pem_x509_certificates(files.certificate.read_bytes())[0]
    except (OSError, ValueError, IndexError):
        return False
    return files.key.exists() and leaf.not_valid_after_utc - now > CERTIFICATE_RENEW_BEFORE


def _ensure_certificate(files: InstallFiles, now: datetime.datetime) -> None:
    if _certificate_is_usable(files, now):
        return
    # The operator's keeper reloads changed files in place, so renewing under a running
    # operator is safe; the caBundle is applied again right after.
    pki.write_loopback_serving_files(
        files.certificate, files.key, common_name="hush-dev-operator", now=now
    )
    logger.info("Generated the serving certificate of the accountant and webhooks")


def _port_is_free(port: int) -> bool:
    with socket.socket() as probe:
        # As the operator's servers bind (asyncio's reuse_address): a port whose previous
        # owner just exited, with connections in TIME_WAIT, counts as free.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ports.LOOPBACK, port))
        except OSError:
            return False
    return True


def _allocate_ports(previous: OperatorPorts | None) -> OperatorPorts:
    # The same ports as before when they are free: pods injected earlier keep a working
    # accountant URL across operator restarts.
    if previous is not None and all(_port_is_free(port) for port in dataclasses.astuple(previous)):
        return previous
    accountant, webhook, liveness = ports.pick_free_ports(3)
    return OperatorPorts(accountant=accountant, webhook=webhook, liveness=liveness)


# -- probing -----------------------------------------------------------------------------------


def _operator_problem(ports_: OperatorPorts, files: InstallFiles) -> str | None:
    """None when kopf, the accountant and the webhooks all answer, else what does not."""
    tls = health.TlsClient(ca_certificate=files.certificate)
    for what, url, client in (
        ("kopf liveness", ports_.liveness_url, None),
        ("accountant", f"{ports_.accountant_url}/readyz", tls),
        ("webhooks", f"{ports_.webhook_url}/readyz", tls),
    ):
        result = health.probe(url, tls=client)
        if not result.healthy:
            return f"{what} ({url}): {result.detail}"
    return None


def operator_status(cluster: layout.ClusterLayout) -> OperatorStatus | None:
    """The operator's state, or None when Hush is not installed on this cluster."""
    files = files_for(cluster)
    record = _load_record(files)
    pid_record = processes.read_pid_file(cluster.pid_file(OPERATOR_PROCESS))
    if record is None and pid_record is None:
        return None
    log_file = cluster.log_file(OPERATOR_PROCESS)
    state: OperatorState
    if pid_record is None:
        state, detail = "not started", "no pid file"
    elif not processes.is_alive(pid_record):
        state, detail = "crashed", "the process exited (its log says why)"
    elif record is None:
        state, detail = "unhealthy", f"{files.record} is missing, so its ports are unknown"
    else:
        problem = _operator_problem(record.ports, files)
        state = "unhealthy" if problem else "running"
        detail = problem or (
            f"accountant {record.ports.accountant_url}, webhooks {record.ports.webhook_url}"
        )
    relevant = state in ("crashed", "unhealthy")
    return OperatorStatus(
        state=state,
        pid=pid_record.pid if pid_record else None,
        ports=record.ports if record else None,
        detail=detail,
        log_file=log_file,
        log_tail=processes.log_tail(log_file, lines=20) if relevant else "",
    )


# -- install and remove ------------------------------------------------------------------------


def _stop_operator(cluster: layout.ClusterLayout) -> None:
    pid_file = cluster.pid_file(OPERATOR_PROCESS)
    record = processes.read_pid_file(pid_file)
    if record is not None and processes.is_alive(record):
        logger.info("Sent SIGTERM to %s (pid %d)", OPERATOR_PROCESS, record.pid)
        survivors = processes.stop_all([record])
        if survivors:
            raise errors.DevClusterError(
                f"{OPERATOR_PROCESS} (pid {record.pid}) survived SIGKILL; check it with "
                "`ps -o pid,stat,cmd`"
            )
    pid_file.unlink(missing_ok=True)


def _wait_for_operator(
    started: processes.StartedProcess,
    ports_: OperatorPorts,
    files: InstallFiles,
    log_file: Path,
    *,
    timeout_seconds: float,
    check_components: Callable[[], None],
) -> None:
    began = time.monotonic()
    problem: str | None = "no answer yet"
    while time.monotonic() - began < timeout_seconds:
        code = started.exit_code()
        if code is not None:
            tail = processes.log_tail(log_file, lines=30)
            raise errors.DevClusterError(
                f"{OPERATOR_PROCESS} exited with code {code} while starting; last lines of "
                f"{log_file}:\n" + "\n".join(f"  | {line}" for line in tail.splitlines())
            )
        check_components()
        problem = _operator_problem(ports_, files)
        if problem is None:
            logger.info("Waited %.1fs for %s to serve", time.monotonic() - began, OPERATOR_PROCESS)
            return
        time.sleep(_POLL_SECONDS)
    raise errors.DevClusterError(
        f"{OPERATOR_PROCESS} did not serve within {timeout_seconds:.0f}s ({problem}); "
        f"see {log_file}"
    )


def _apply(kubectl: bootstrap.Kubectl, manifests: Sequence[Manifest]) -> None:
    kubectl.run(
        [
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={FIELD_MANAGER}",
            "--filename=-",
        ],
        stdin=yaml.safe_dump_all(list(manifests)),
    )


def _operator_environment(
    cluster: layout.ClusterLayout, environ: Mapping[str, str]
) -> dict[str, str]:
    environment = dict(environ)
    environment["KUBECONFIG"] = str(cluster.kubeconfig)
    environment["POD_NAMESPACE"] = HUSH_NAMESPACE
    return environment


def ensure_installed(
    cluster: layout.ClusterLayout,
    kubectl: bootstrap.Kubectl,
    *,
    environ: Mapping[str, str],
    now: datetime.datetime,
    check_components: Callable[[], None] = lambda: None,
    python: str = sys.executable,
) -> OperatorPorts:
    """Make sure the operator serves and the admission objects point at it (idempotent)."""
    files = files_for(cluster)
    files.directory.mkdir(parents=True, exist_ok=True)
    _apply(kubectl, [build_namespace()])
    _ensure_certificate(files, now)

    record = _load_record(files)
    pid_record = processes.read_pid_file(cluster.pid_file(OPERATOR_PROCESS))
    fingerprint = code_fingerprint()
    reason: str | None = None
    if record is None:
        reason = "it is not installed"
    elif pid_record is None or not processes.is_alive(pid_record):
        reason = "its operator is not running" if pid_record is None else "its operator died"
    elif record.command_digest != command_digest(
        build_operator_command(python=python, ports_=record.ports, files=files), fingerprint
    ):
        reason = "the operator's command line or hush's code changed since it started"
    else:
        problem = _operator_problem(record.ports, files)
        if problem is not None:
            reason = f"its operator is unhealthy: {problem}"

    if reason is None and record is not None and pid_record is not None:
        ports_ = record.ports
        logger.info(
            "Reused %s (pid %d) of cluster %s", OPERATOR_PROCESS, pid_record.pid, cluster.name
        )
    else:
        logger.info("Starting %s of cluster %s because %s", OPERATOR_PROCESS, cluster.name, reason)
        _stop_operator(cluster)
        ports_ = _allocate_ports(record.ports if record else None)
        command = build_operator_command(python=python, ports_=ports_, files=files)
        files.record.write_text(
            InstallRecord(
                ports=ports_, command_digest=command_digest(command, fingerprint)
            ).to_json()
        )
        log_file = cluster.log_file(OPERATOR_PROCESS)
        started = processes.start(
            command,
            log_file=log_file,
            pid_file=cluster.pid_file(OPERATOR_PROCESS),
            env=_operator_environment(cluster, environ),
        )
        logger.info(
            "Started %s (pid %d, accountant %s, webhooks %s, log %s)",
            OPERATOR_PROCESS,
            started.record.pid,
            ports_.accountant_url,
            ports_.webhook_url,
            log_file,
        )
        try:
            _wait_for_operator(
                started,
                ports_,
                files,
                log_file,
                timeout_seconds=OPERATOR_READY_TIMEOUT_SECONDS,
                check_components=check_components,
            )
        except BaseException:
            _stop_operator(cluster)
            raise

    # Policies before their bindings, and the webhooks only once the operator serves them.
    _apply(kubectl, build_admission_policies())
    _apply(
        kubectl,
        build_webhook_configurations(
            webhook_url=ports_.webhook_url, ca_pem=files.certificate.read_bytes()
        ),
    )
    logger.info(
        "Installed Hush on cluster %s: operator, webhooks %s, %d admission policies and bindings",
        cluster.name,
        ", ".join((webhooks.MUTATING_CONFIGURATION, webhooks.VALIDATING_CONFIGURATION)),
        len(build_admission_policies()),
    )
    return ports_


def ensure_removed(cluster: layout.ClusterLayout, kubectl: bootstrap.Kubectl) -> bool:
    """Remove what :func:`ensure_installed` added (for ``up --no-hush``); False if nothing was.

    Only a cluster with a recorded installation is touched, so the common case (a cluster
    that never had Hush) costs no API call. The Hush namespace and the CRDs stay.
    """
    files = files_for(cluster)
    installed = files.directory.exists() or cluster.pid_file(OPERATOR_PROCESS).exists()
    if not installed:
        return False
    # The webhooks first: with the operator gone, their failurePolicy Fail entries would
    # refuse writes in enforced namespaces.
    placeholder_ca = b""
    manifests = [
        *build_webhook_configurations(webhook_url="https://127.0.0.1", ca_pem=placeholder_ca),
        *reversed(build_admission_policies()),
    ]
    kubectl.run(
        ["delete", "--ignore-not-found", "--wait=false", "--filename=-"],
        stdin=yaml.safe_dump_all(manifests),
    )
    _stop_operator(cluster)
    shutil.rmtree(files.directory, ignore_errors=True)
    logger.info(
        "Removed Hush from cluster %s (--no-hush): operator stopped, webhook configurations "
        "and admission policies deleted",
        cluster.name,
    )
    return True
