"""``hush dev up``, ``down`` and ``status``: one dev cluster's life cycle.

``up`` is idempotent. When the cluster named in the call already runs (every pid alive and
every health endpoint answering, same binaries, same command lines (a digest is kept in
``cluster.json``), same node count) it is reused: the Hush CRDs
are re-applied (cheap, and it keeps them current after a model change) and the same
kubeconfig path is printed. When anything is off (a component crashed, the binaries were
rebuilt, a previous ``up`` was interrupted) it says exactly which component and why, quoting
its log, then tears the cluster down and builds a fresh one: a half-alive control plane with
a fresh etcd would be worse than a clean restart, and a restart takes well under a minute.

A fresh cluster is built in this order, each step bounded and checked:
PKI and kubeconfigs, ports, ``cluster.json`` (written first so that ``down`` can clean up an
interrupted ``up``), etcd, kube-apiserver, then kube-controller-manager, kube-scheduler and
kwok together, Nodes, the ``default`` ServiceAccount, CRDs. If a step fails, every process
started so far is stopped and the logs are kept for ``hush dev status``/debugging.

With ``real_node`` (``hush dev up --real-node``) the cluster also gets one real node
(``real_node``): after the control plane and the kwok nodes, the network guard is put in
place and checked (``network_guard``), then containerd and the kubelet start like the other
components, the node's images are imported and ``up`` waits until the node is Ready; the
kwok nodes are then tainted. ``down`` deletes the node's pods first (so their sandboxes are
torn down properly), stops every process, sweeps what is left (``real_node.sweep``) and
removes the guard.

Then, on a new or a reused cluster, all of Hush is installed (``hush.dev.install``: the
operator as a host process, its webhook configurations and admission policies), or, with
``--no-hush``, an earlier installation is removed. A failed install leaves the control
plane running: the next ``up`` tries again.

``down`` stops every process recorded under ``run/``, the Hush operator included (SIGTERM to
the process group, SIGKILL after a grace period) and deletes the state and tmpfs
directories. It is safe to run when nothing runs. ``up`` and ``down`` of the same cluster
are serialised by a file lock.

This module composes the others and holds no flags or file names of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Final, Literal

from hush.dev import (
    binaries,
    bootstrap,
    cluster_dns,
    components,
    errors,
    health,
    host_setup,
    install,
    kubeconfigs,
    layout,
    network_guard,
    network_policy,
    pki,
    ports,
    processes,
    real_node,
    registry,
)

logger = logging.getLogger(__name__)

DEFAULT_NODE_COUNT: Final = 2
NODES_TIMEOUT_SECONDS: Final = 120.0
SERVICE_ACCOUNT_TIMEOUT_SECONDS: Final = 60.0
CRD_TIMEOUT_SECONDS: Final = 60.0
LOG_TAIL_LINES: Final = 20
_RECORD_VERSION: Final = 1
_HEALTH_POLL_SECONDS: Final = 0.25
# Markers that a directory is a state dir we created: never rmtree anything else.
_STATE_MARKERS: Final = ("cluster.json", "run", "pki", "logs", "kubeconfig")

_STOP_ORDER: Final = (
    ("kube-proxy", "kubelet", "kwok", "kube-scheduler", "kube-controller-manager"),
    # After the kubelet, which would otherwise restart what containerd's exit stopped.
    ("containerd",),
    ("kube-apiserver",),
    ("etcd",),
)
_STOP_RANKED: Final = frozenset(name for stage in _STOP_ORDER for name in stage)

ComponentState = Literal["running", "unhealthy", "crashed", "not started"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterRecord:
    """What ``up`` remembers about a cluster in ``cluster.json``."""

    name: str
    nodes: int
    bin_dir: Path
    etcd_data_dir: Path
    ports: components.Ports
    commands_digest: str
    node_bin_dir: Path | None = None
    """kubelet and kube-proxy of the real node; None when the cluster has none."""

    @property
    def real_node(self) -> bool:
        return self.node_bin_dir is not None

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": _RECORD_VERSION,
                "name": self.name,
                "nodes": self.nodes,
                "binDir": str(self.bin_dir),
                "etcdDataDir": str(self.etcd_data_dir),
                "ports": dataclasses.asdict(self.ports),
                "commandsDigest": self.commands_digest,
                "nodeBinDir": str(self.node_bin_dir) if self.node_bin_dir else None,
            },
            indent=2,
        )

    @classmethod
    def from_json(cls, text: str) -> ClusterRecord:
        data: dict[str, Any] = json.loads(text)
        if data.get("version") != _RECORD_VERSION:
            raise ValueError(f"unsupported cluster.json version {data.get('version')!r}")
        return cls(
            name=str(data["name"]),
            nodes=int(data["nodes"]),
            bin_dir=Path(data["binDir"]),
            etcd_data_dir=Path(data["etcdDataDir"]),
            ports=components.Ports(**{key: int(value) for key, value in data["ports"].items()}),
            commands_digest=str(data["commandsDigest"]),
            node_bin_dir=Path(data["nodeBinDir"]) if data.get("nodeBinDir") else None,
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class ComponentStatus:
    name: str
    state: ComponentState
    pid: int | None
    port: int | None
    detail: str
    log_file: Path
    log_tail: str


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterStatus:
    name: str
    state_dir: Path
    exists: bool
    kubeconfig: Path | None
    nodes: int | None
    components: tuple[ComponentStatus, ...]
    operator: install.OperatorStatus | None = None
    """The host-process Hush operator; None when Hush is not installed (``up --no-hush``)."""

    @property
    def healthy(self) -> bool:
        operator_ok = self.operator is None or self.operator.state == "running"
        return self.exists and operator_ok and all(c.state == "running" for c in self.components)

    @property
    def unhealthy_components(self) -> tuple[ComponentStatus, ...]:
        return tuple(c for c in self.components if c.state != "running")


# -- files -------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(cluster: layout.ClusterLayout) -> Iterator[None]:
    cluster.lock_file.parent.mkdir(parents=True, exist_ok=True)
    with cluster.lock_file.open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info(
                "Found cluster %s locked by another hush dev command; waiting for it", cluster.name
            )
            fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _load_record(cluster: layout.ClusterLayout) -> ClusterRecord | None:
    try:
        return ClusterRecord.from_json(cluster.cluster_file.read_text())
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError) as error:
        logger.warning("Ignored unreadable %s: %s", cluster.cluster_file, error)
        return None


def _tls_client(cluster: layout.ClusterLayout) -> health.TlsClient:
    files = pki.PkiFiles(cluster.pki_dir)
    return health.TlsClient(
        ca_certificate=files.ca.certificate,
        client_certificate=files.admin.certificate,
        client_key=files.admin.key,
    )


def _format_tail(log_file: Path, tail: str) -> str:
    if not tail:
        return f"  ({log_file} is empty or missing)"
    body = "\n".join(f"  | {line}" for line in tail.splitlines())
    return f"  last lines of {log_file}:\n{body}"


def describe_problem(component: ComponentStatus) -> str:
    """One paragraph saying what is wrong with ``component``, with its log tail."""
    pid = f" (pid {component.pid})" if component.pid else ""
    return f"{component.name}{pid} {component.state}: {component.detail}\n" + _format_tail(
        component.log_file, component.log_tail
    )


# -- status ------------------------------------------------------------------------------


def _component_status(
    cluster: layout.ClusterLayout,
    spec: components.ComponentSpec | None,
    name: str,
    tls: health.TlsClient | None,
) -> ComponentStatus:
    log_file = cluster.log_file(name)
    record = processes.read_pid_file(cluster.pid_file(name))
    port = spec.port if spec else None
    state: ComponentState
    if record is None:
        state, detail = "not started", "no pid file"
    elif not processes.is_alive(record):
        state = "crashed"
        detail = "the process exited (its log says why; exit codes of daemons are not kept)"
    elif spec is None:
        state, detail = "unhealthy", "cluster.json is missing, so its port is unknown"
    else:
        result = health.probe(spec.health_url, tls=tls)
        state = "running" if result.healthy else "unhealthy"
        detail = spec.health_url if result.healthy else f"{spec.health_url}: {result.detail}"
    # The log of a component that was never started (or was stopped by hush) explains nothing.
    relevant = state in ("crashed", "unhealthy")
    tail = processes.log_tail(log_file, lines=LOG_TAIL_LINES) if relevant else ""
    return ComponentStatus(
        name=name,
        state=state,
        pid=record.pid if record else None,
        port=port,
        detail=detail,
        log_file=log_file,
        log_tail=tail,
    )


def _inspect(cluster: layout.ClusterLayout, record: ClusterRecord | None) -> ClusterStatus:
    specs: dict[str, components.ComponentSpec] = {}
    if record is not None:
        specs = {
            spec.name: spec
            for spec in components.build_components(
                ports=record.ports,
                layout=cluster,
                bins=binaries.Binaries(record.bin_dir),
                node_bin_dir=record.node_bin_dir,
            )
        }
    names: tuple[str, ...] = layout.COMPONENT_NAMES
    if record is not None and record.real_node:
        names += layout.REAL_NODE_COMPONENT_NAMES
    tls = _tls_client(cluster) if pki.PkiFiles(cluster.pki_dir).ca.certificate.exists() else None
    statuses = tuple(_component_status(cluster, specs.get(name), name, tls) for name in names)
    return ClusterStatus(
        name=cluster.name,
        state_dir=cluster.state_dir,
        exists=record is not None,
        kubeconfig=cluster.kubeconfig if cluster.kubeconfig.exists() else None,
        nodes=record.nodes if record else None,
        components=statuses,
    )


def bin_dir(*, name: str, environ: Mapping[str, str]) -> Path | None:
    """The directory of the binaries cluster ``name`` runs (None when it was never created)."""
    record = _load_record(layout.layout_for(name, environ))
    return record.bin_dir if record is not None else None


def status(*, name: str, environ: Mapping[str, str]) -> ClusterStatus:
    """The state of every component of cluster ``name`` and of its Hush operator (nothing is
    changed)."""
    cluster = layout.layout_for(name, environ)
    record = _load_record(cluster)
    return dataclasses.replace(
        _inspect(cluster, record),
        operator=install.operator_status(cluster) if record is not None else None,
    )


# -- down --------------------------------------------------------------------------------


def _recorded_processes(cluster: layout.ClusterLayout) -> dict[str, processes.PidRecord]:
    if not cluster.run_dir.is_dir():
        return {}
    found = {path.stem: processes.read_pid_file(path) for path in cluster.run_dir.glob("*.pid")}
    return {name: record for name, record in found.items() if record is not None}


def _stop_in_order(
    cluster: layout.ClusterLayout, records: Mapping[str, processes.PidRecord]
) -> list[processes.PidRecord]:
    """Stop clients, then the apiserver, then etcd; return the processes that survived.

    The order matters: an apiserver whose etcd is gone does not finish its graceful shutdown
    (measured: still running 30 s after SIGTERM), while one with a live etcd exits in about a
    second. Clients stopped first also do not fill their logs with connection errors.
    """
    survivors: list[processes.PidRecord] = []
    for stage in _STOP_ORDER:
        # Unknown pid files (none today) go with the first stage: they are not etcd.
        names = [
            name
            for name in records
            if name in stage or (stage is _STOP_ORDER[0] and name not in _STOP_RANKED)
        ]
        running = [name for name in names if processes.is_alive(records[name])]
        if running:
            logger.info(
                "Sent SIGTERM to %s of cluster %s",
                ", ".join(f"{name} (pid {records[name].pid})" for name in running),
                cluster.name,
            )
        survivors += processes.stop_all([records[name] for name in running])
    return survivors


def _stop_processes(cluster: layout.ClusterLayout) -> None:
    survivors = _stop_in_order(cluster, _recorded_processes(cluster))
    if survivors:
        raise errors.DevClusterError(
            f"Processes {', '.join(str(r.pid) for r in survivors)} of cluster {cluster.name} "
            "survived SIGKILL (stuck in the kernel?); check them with `ps -o pid,stat,cmd`"
        )
    for path in cluster.run_dir.glob("*.pid") if cluster.run_dir.is_dir() else ():
        path.unlink(missing_ok=True)


def _remove_state_dir(cluster: layout.ClusterLayout) -> None:
    state_dir = cluster.state_dir
    if not state_dir.exists():
        return
    entries = {entry.name for entry in state_dir.iterdir()}
    if entries and not entries & set(_STATE_MARKERS):
        raise errors.DevClusterError(
            f"Refused to delete {state_dir}: it does not look like a hush dev cluster "
            "(no cluster.json, run/, pki/ or logs/). Move it away or pick another --name"
        )
    shutil.rmtree(state_dir)


def _has_real_node(cluster: layout.ClusterLayout) -> bool:
    owner = network_guard.owner()
    node = real_node.NodeLayout(cluster)
    owned = owner is not None and owner.get("stateDir") == str(cluster.state_dir)
    return owned or node.directory.exists() or node.run_dir.exists()


def _drain_real_node(cluster: layout.ClusterLayout) -> None:
    """Delete the real node's pods while the apiserver, kubelet and containerd still run."""
    record = _load_record(cluster)
    if record is None or not record.real_node or not cluster.kubeconfig.exists():
        return
    kubelet = processes.read_pid_file(cluster.pid_file("kubelet"))
    apiserver = processes.read_pid_file(cluster.pid_file("kube-apiserver"))
    if kubelet and apiserver and processes.is_alive(kubelet) and processes.is_alive(apiserver):
        real_node.drain(bootstrap.Kubectl(record.bin_dir / "kubectl", cluster.kubeconfig))


def _remove_real_node(cluster: layout.ClusterLayout) -> None:
    """After the processes stopped: sweep the node's leftovers, then remove the guard."""
    node = real_node.NodeLayout(cluster)
    owner = network_guard.owner()
    ours = owner is None or owner.get("stateDir") == str(cluster.state_dir)
    leftovers = real_node.sweep(node, machine_wide=ours)
    if ours:  # after sweep: the ipsets are free once the kubelet's tables are gone
        leftovers += network_policy.cleanup()
    if leftovers:
        raise errors.DevClusterError(
            f"Could not remove every resource of the real node of cluster {cluster.name} "
            "(nothing was deleted; run hush dev down again):\n  - " + "\n  - ".join(leftovers)
        )
    shutil.rmtree(node.run_dir, ignore_errors=True)
    network_guard.remove(state_dir=cluster.state_dir)


def _teardown(cluster: layout.ClusterLayout) -> None:
    real = _has_real_node(cluster)
    if real:
        _drain_real_node(cluster)
    _stop_processes(cluster)
    if real:
        _remove_real_node(cluster)
    if cluster.tmpfs_dir is not None:
        shutil.rmtree(cluster.tmpfs_dir, ignore_errors=True)
    _remove_state_dir(cluster)


def down(*, name: str, environ: Mapping[str, str]) -> bool:
    """Stop cluster ``name`` and delete its files; False when there was nothing to remove."""
    cluster = layout.layout_for(name, environ)
    with _locked(cluster):
        existed = cluster.state_dir.exists() or bool(
            cluster.tmpfs_dir and cluster.tmpfs_dir.exists()
        )
        _teardown(cluster)
    if existed:
        logger.info("Deleted cluster %s (%s)", name, cluster.state_dir)
    else:
        logger.info("Found no cluster %s in %s", name, cluster.state_dir.parent)
    return existed


# -- up ----------------------------------------------------------------------------------


def _write_kubeconfigs(cluster: layout.ClusterLayout, ports_: components.Ports) -> None:
    files = pki.PkiFiles(cluster.pki_dir)
    server = components.apiserver_url(ports_)
    ca = files.ca.certificate.read_bytes()
    component_files = components.kubeconfig_files(cluster)
    identities = (
        (cluster.kubeconfig, pki.ADMIN_USER, files.admin),
        (component_files.controller_manager, pki.CONTROLLER_MANAGER_USER, files.controller_manager),
        (component_files.scheduler, pki.SCHEDULER_USER, files.scheduler),
        (component_files.kwok, pki.KWOK_USER, files.kwok),
    )
    for path, user, pair in identities:
        kubeconfigs.write_kubeconfig(
            path,
            kubeconfigs.build_kubeconfig(
                cluster_name=cluster.name,
                server=server,
                user=user,
                ca_certificate=ca,
                client_certificate=pair.certificate.read_bytes(),
                client_key=pair.key.read_bytes(),
            ),
        )


def _allocate_ports() -> components.Ports:
    names = components.Ports.field_names()
    return components.Ports(**dict(zip(names, ports.pick_free_ports(len(names)), strict=True)))


class _Launcher:
    """Starts components and notices when one of them dies while ``up`` is still running."""

    def __init__(self, cluster: layout.ClusterLayout, tls: health.TlsClient, bin_dir: Path) -> None:
        self.cluster = cluster
        self.tls = tls
        self.bin_dir = bin_dir
        self.started: dict[str, processes.StartedProcess] = {}

    def start(self, spec: components.ComponentSpec) -> None:
        started = processes.start(
            spec.command,
            log_file=self.cluster.log_file(spec.name),
            pid_file=self.cluster.pid_file(spec.name),
            env={**os.environ, **dict(spec.environment)} if spec.environment else None,
        )
        self.started[spec.name] = started
        logger.info(
            "Started %s (pid %d, port %d, log %s)",
            spec.name,
            started.record.pid,
            spec.port,
            self.cluster.log_file(spec.name),
        )

    def _failure(self, name: str, what: str) -> errors.DevClusterError:
        log_file = self.cluster.log_file(name)
        tail = processes.log_tail(log_file, lines=LOG_TAIL_LINES)
        return errors.DevClusterError(
            f"{name} {what} while cluster {self.cluster.name} was starting\n"
            + _format_tail(log_file, tail)
        )

    def check_all(self) -> None:
        """Raise, naming the component, if any started process has exited."""
        for name, started in self.started.items():
            code = started.exit_code()
            if code is not None:
                raise self._failure(name, f"exited with code {code}")

    def wait_healthy(self, spec: components.ComponentSpec) -> None:
        began = time.monotonic()
        last = "no answer yet"
        while time.monotonic() - began < spec.startup_timeout_seconds:
            self.check_all()
            result = health.probe(spec.health_url, tls=self.tls)
            if result.healthy:
                logger.info(
                    "Waited %.1fs for %s to become ready", time.monotonic() - began, spec.name
                )
                return
            last = result.detail
            time.sleep(_HEALTH_POLL_SECONDS)
        raise self._failure(
            spec.name,
            f"was not ready after {spec.startup_timeout_seconds:.0f}s ({spec.health_url}: {last})",
        )

    def stop_started(self) -> None:
        """Stop what still runs; pid files stay only for processes that died on their own."""
        alive = {
            name: started.record
            for name, started in self.started.items()
            if started.exit_code() is None
        }
        survivors = _stop_in_order(self.cluster, alive)
        for started in self.started.values():
            with contextlib.suppress(OSError, subprocess.TimeoutExpired):
                started.popen.wait(timeout=1)
        # `hush dev status` then shows the components we stopped as "not started" and the
        # one that failed as "crashed", with its log.
        for name in alive:
            self.cluster.pid_file(name).unlink(missing_ok=True)
        if survivors:
            logger.error("Failed to stop pids %s", ", ".join(str(r.pid) for r in survivors))


def _hush_crds() -> list[dict[str, Any]]:
    # Imported here, not at the top: pydantic model building is the slowest import in hush
    # and `hush dev status`/`down` do not need it.
    from hush.api import crds

    return crds.all_crds()


def _make_private_tmpfs_dir(cluster: layout.ClusterLayout) -> None:
    if cluster.tmpfs_dir is None:
        return
    cluster.tmpfs_dir.mkdir(mode=0o700, exist_ok=True)
    # /dev/shm is world-writable: refuse a directory (or symlink) someone else planted there.
    info = cluster.tmpfs_dir.lstat()
    if cluster.tmpfs_dir.is_symlink() or info.st_uid != os.getuid():
        raise errors.DevClusterError(
            f"Refused to use {cluster.tmpfs_dir} for etcd data: it is not a directory owned "
            "by you. Remove it and run hush dev up again"
        )


@dataclasses.dataclass(frozen=True)
class _RealNodeInputs:
    """What ``_create`` needs to add a real node."""

    node_bin_dir: Path
    cache_root: Path
    registry_binary: Path


def _start_real_node(
    cluster: layout.ClusterLayout,
    launcher: _Launcher,
    specs: Mapping[str, components.ComponentSpec],
    allocated: components.Ports,
    inputs: _RealNodeInputs,
    now: datetime.datetime,
) -> None:
    """Guard, files, containerd, images, kubelet, a Ready node, kube-proxy, tainted kwok
    nodes."""
    node = real_node.NodeLayout(cluster)
    kubectl = bootstrap.Kubectl(binaries.Binaries(launcher.bin_dir).kubectl, cluster.kubeconfig)
    images = real_node.build_images(inputs.cache_root)
    real_node.write_files(
        node,
        cluster_pki=pki.PkiFiles(cluster.pki_dir),
        apiserver_url=components.apiserver_url(allocated),
        ports=components.real_node_ports(allocated),
        sandbox_image=images.pause.reference,
        now=now,
    )
    # Before containerd: pods pull images by digest from it (hush.dev.registry).
    spec = registry.prepare(cluster, binary=inputs.registry_binary, cache_root=inputs.cache_root)
    launcher.start(spec)
    launcher.wait_healthy(spec)
    launcher.start(specs["containerd"])
    launcher.wait_healthy(specs["containerd"])
    real_node.import_images(node, (images.pause, images.busybox))
    # Checked again right before the first pod can start.
    network_guard.verify()
    real_node.snapshot_host(node)
    launcher.start(specs["kubelet"])
    launcher.wait_healthy(specs["kubelet"])
    real_node.wait_ready(kubectl, check_components=launcher.check_all)
    # After the node exists: kube-proxy reads it (and answers /healthz only once synced).
    launcher.start(specs["kube-proxy"])
    launcher.wait_healthy(specs["kube-proxy"])
    real_node.taint_kwok_nodes(kubectl)
    # NetworkPolicies enforced before any workload, then the cluster DNS (issue 15).
    services_bin = cluster_dns.locate_services(os.environ)
    launcher.started[network_policy.COMPONENT] = network_policy.start(
        cluster,
        kubectl,
        services_bin=services_bin,
        apiserver_url=components.apiserver_url(allocated),
        now=now,
        check_components=launcher.check_all,
    )
    cluster_dns.deploy(
        node, kubectl, services_bin=services_bin, check_components=launcher.check_all
    )


def _create(
    cluster: layout.ClusterLayout,
    bins: binaries.Binaries,
    nodes: int,
    now: datetime.datetime,
    real: _RealNodeInputs | None = None,
) -> None:
    began = time.monotonic()
    for directory in (cluster.state_dir, cluster.logs_dir, cluster.run_dir, cluster.pki_dir):
        directory.mkdir(parents=True, exist_ok=True)
    _make_private_tmpfs_dir(cluster)
    cluster.etcd_data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    pki.write_cluster_pki(pki.PkiFiles(cluster.pki_dir), cluster_name=cluster.name, now=now)
    allocated = _allocate_ports()
    _write_kubeconfigs(cluster, allocated)
    specs = components.build_components(
        ports=allocated,
        layout=cluster,
        bins=bins,
        node_bin_dir=real.node_bin_dir if real else None,
    )
    record = ClusterRecord(
        name=cluster.name,
        nodes=nodes,
        bin_dir=bins.bin_dir,
        etcd_data_dir=cluster.etcd_data_dir,
        ports=allocated,
        commands_digest=_commands_digest(specs),
        node_bin_dir=real.node_bin_dir if real else None,
    )
    cluster.cluster_file.write_text(record.to_json())
    logger.info("Generated certificates, kubeconfigs and ports in %s", cluster.state_dir)

    by_name = {spec.name: spec for spec in specs}
    launcher = _Launcher(cluster, _tls_client(cluster), bins.bin_dir)
    try:
        if real is not None:
            # The guard before anything listens beyond loopback or any pod exists, and
            # checked: the apiserver listens on every address, its port fenced to loopback
            # and the bridge.
            host_setup.ensure_packages()
            network_guard.apply(
                cluster_name=cluster.name,
                state_dir=cluster.state_dir,
                inbound_ports=(allocated.apiserver,),
            )
            network_guard.verify()
        for name in ("etcd", "kube-apiserver"):
            launcher.start(by_name[name])
            launcher.wait_healthy(by_name[name])
        # These three only need the apiserver: start them together, then wait for each.
        rest = [
            spec
            for spec in specs
            if spec.name not in ("etcd", "kube-apiserver", *layout.REAL_NODE_COMPONENT_NAMES)
        ]
        for spec in rest:
            launcher.start(spec)
        for spec in rest:
            launcher.wait_healthy(spec)

        kubectl = bootstrap.Kubectl(bins.kubectl, cluster.kubeconfig)
        bootstrap.create_nodes(
            kubectl,
            nodes,
            timeout_seconds=NODES_TIMEOUT_SECONDS,
            check_components=launcher.check_all,
        )
        bootstrap.wait_for_default_service_account(
            kubectl,
            timeout_seconds=SERVICE_ACCOUNT_TIMEOUT_SECONDS,
            check_components=launcher.check_all,
        )
        bootstrap.install_crds(kubectl, _hush_crds(), timeout_seconds=CRD_TIMEOUT_SECONDS)
        if real is not None:
            _start_real_node(cluster, launcher, by_name, allocated, real, now)
    except BaseException:
        launcher.stop_started()
        if real is not None:
            try:
                _remove_real_node(cluster)
            except errors.DevClusterError as error:
                logger.error("%s", error)
        if cluster.tmpfs_dir is not None:
            shutil.rmtree(cluster.tmpfs_dir, ignore_errors=True)
        logger.error(
            "Stopped the processes of cluster %s after a failed start; logs are kept in %s "
            "(`hush dev down --name %s` deletes them)",
            cluster.name,
            cluster.logs_dir,
            cluster.name,
        )
        raise
    logger.info("Started cluster %s in %.1fs", cluster.name, time.monotonic() - began)


def _commands_digest(specs: tuple[components.ComponentSpec, ...]) -> str:
    """A digest of every command line: a changed flag (a newer hush) means a new cluster."""
    commands = json.dumps([spec.command for spec in specs]).encode()
    return hashlib.sha256(commands).hexdigest()[:16]


def _reason_to_recreate(
    cluster: layout.ClusterLayout,
    existing: ClusterStatus,
    record: ClusterRecord,
    bins: binaries.Binaries,
    nodes: int | None,
    node_bin_dir: Path | None,
) -> str | None:
    problems = existing.unhealthy_components
    if problems:
        details = "\n".join(describe_problem(component) for component in problems)
        names = ", ".join(component.name for component in problems)
        return f"{names} not running:\n{details}"
    if record.bin_dir != bins.bin_dir:
        return f"it runs binaries from {record.bin_dir}, the current ones are in {bins.bin_dir}"
    if record.real_node != (node_bin_dir is not None):
        has = "has a real node" if record.real_node else "has no real node"
        wanted = "with" if node_bin_dir is not None else "without"
        return f"it {has} and one {wanted} a real node was requested"
    if node_bin_dir is not None:
        try:
            network_guard.verify()
        except errors.DevClusterError as error:
            return f"its network guard is broken: {error}"
        stopped = network_policy.problem(cluster)
        if stopped is not None:
            return stopped
    expected = components.build_components(
        ports=record.ports, layout=cluster, bins=bins, node_bin_dir=node_bin_dir
    )
    if record.commands_digest != _commands_digest(expected):
        return "its components were started with other flags (hush has changed since)"
    if nodes is not None and nodes != record.nodes:
        return f"it has {record.nodes} nodes and {nodes} were requested"
    if not existing.kubeconfig:
        return f"its kubeconfig in {existing.state_dir} is missing"
    return None


def _prepare_real_node(environ: Mapping[str, str]) -> Path:
    """Check the host can run a real node and return the kubelet's bin directory."""
    reason = host_setup.unavailable_reason()
    if reason is not None:
        raise errors.DevClusterError(f"Cannot add a real node: {reason}")
    # Built now, before any process starts (a cold build takes minutes); found again,
    # warm, when the node is Ready.
    cluster_dns.locate_services(environ)
    return binaries.locate_node(environ)


def up(
    *,
    name: str,
    nodes: int | None,
    environ: Mapping[str, str],
    install_hush: bool,
    now: datetime.datetime | None = None,
    real_node_wanted: bool | None = None,
) -> Path:
    """Make sure cluster ``name`` runs and return the path of its admin kubeconfig.

    ``nodes`` None keeps the node count of a running cluster (and means
    :data:`DEFAULT_NODE_COUNT` for a new one). ``install_hush`` installs all of Hush once
    the control plane runs (``hush.dev.install``); False removes an installation left by an
    earlier ``up``, so the caller gets a bare control plane (the e2e suite, which starts its
    own operators and registers its own webhooks). ``real_node_wanted`` True adds a real node
    (``real_node``), False removes it, None keeps what a running cluster has (none for a new
    one).
    """
    if nodes is not None and nodes < 1:
        raise errors.DevClusterError(f"--nodes must be at least 1, not {nodes}")
    cluster = layout.layout_for(name, environ)
    bins = binaries.locate(environ)
    current_time = now or datetime.datetime.now(datetime.UTC)
    with _locked(cluster):
        kubectl = bootstrap.Kubectl(bins.kubectl, cluster.kubeconfig)
        record = _load_record(cluster)
        wanted = real_node_wanted
        if wanted is None:
            wanted = record is not None and record.real_node
        node_bin_dir = _prepare_real_node(environ) if wanted else None
        reused = False
        if record is not None:
            existing = _inspect(cluster, record)
            reason = _reason_to_recreate(cluster, existing, record, bins, nodes, node_bin_dir)
            if reason is None:
                logger.info("Reused running cluster %s (all components healthy)", name)
                bootstrap.install_crds(kubectl, _hush_crds(), timeout_seconds=CRD_TIMEOUT_SECONDS)
                reused = True
            else:
                logger.warning(
                    "Decided to recreate cluster %s from scratch because %s", name, reason
                )
        elif cluster.state_dir.exists():
            logger.warning(
                "Decided to recreate cluster %s: %s has no readable cluster.json "
                "(interrupted start?)",
                name,
                cluster.state_dir,
            )
        if not reused:
            _teardown(cluster)
            _create(
                cluster,
                bins,
                nodes if nodes is not None else DEFAULT_NODE_COUNT,
                current_time,
                _RealNodeInputs(
                    node_bin_dir, binaries.cache_root(environ), registry.locate_binary(environ)
                )
                if node_bin_dir is not None
                else None,
            )
        if install_hush:
            install.ensure_installed(cluster, kubectl, environ=environ, now=current_time)
        else:
            install.ensure_removed(cluster, kubectl)
    return cluster.kubeconfig
