"""Where a dev cluster keeps its files.

Every cluster owns one state directory, named after the cluster, under
``${HUSH_STATE_DIR:-${XDG_CACHE_HOME:-~/.cache}/hush/clusters}``::

    <state root>/<name>/
        cluster.json            ports, binaries and etcd data dir of this cluster
        kubeconfig              admin kubeconfig, the path `hush dev up` prints
        pki/                    CA, certificates, service-account keys, component kubeconfigs
        logs/<component>.log    stdout and stderr of each process
        run/<component>.pid     pid and start time of each process
    <state root>/.<name>.lock   serialises concurrent up/down of the same cluster
    /dev/shm/hush-<uid>-<name>-<digest>/etcd-data   etcd's data (when /dev/shm exists)

etcd's data lives on tmpfs (``/dev/shm``) when there is one: fsync-free, RAM-backed storage
makes the apiserver several times faster on small machines and the data is disposable anyway.
Its directory name carries a digest of the state directory, so two clusters with the same
name under different ``HUSH_STATE_DIR``s (the e2e suite does this) never share data.

This module only computes paths; it creates and deletes nothing.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Final

DEFAULT_CLUSTER_NAME: Final = "hush-dev"
COMPONENT_NAMES: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kwok",
)
REAL_NODE_COMPONENT_NAMES: Final = ("containerd", "kubelet", "kube-proxy")
"""The components a cluster started with ``--real-node`` adds, in start order."""

_NAME_PATTERN: Final = re.compile(r"[a-z0-9]([a-z0-9-]{0,38}[a-z0-9])?")
# Shared, but each cluster's directory there is created 0700 and its owner checked (cluster.py).
_TMPFS: Final = Path("/dev/shm")  # noqa: S108


@dataclasses.dataclass(frozen=True, kw_only=True)
class ClusterLayout:
    """The files of one named dev cluster."""

    name: str
    state_dir: Path
    tmpfs_dir: Path | None
    """This cluster's own directory on tmpfs, or None when etcd's data stays in state_dir."""

    @property
    def etcd_data_dir(self) -> Path:
        return (self.tmpfs_dir or self.state_dir) / "etcd-data"

    @property
    def lock_file(self) -> Path:
        return self.state_dir.parent / f".{self.name}.lock"

    @property
    def cluster_file(self) -> Path:
        return self.state_dir / "cluster.json"

    @property
    def kubeconfig(self) -> Path:
        return self.state_dir / "kubeconfig"

    @property
    def pki_dir(self) -> Path:
        return self.state_dir / "pki"

    @property
    def logs_dir(self) -> Path:
        return self.state_dir / "logs"

    @property
    def run_dir(self) -> Path:
        return self.state_dir / "run"

    def log_file(self, component: str) -> Path:
        return self.logs_dir / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        return self.run_dir / f"{component}.pid"


def validate_cluster_name(name: str) -> str:
    """Return ``name`` if it is safe in paths and object names, else raise ``ValueError``."""
    if not _NAME_PATTERN.fullmatch(name):
        raise ValueError(
            f"Invalid cluster name {name!r}: use 1-40 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit"
        )
    return name


def state_root(environ: Mapping[str, str]) -> Path:
    """The directory that holds one state directory per cluster."""
    if environ.get("HUSH_STATE_DIR"):
        return Path(environ["HUSH_STATE_DIR"]).expanduser().resolve()
    cache = environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return (Path(cache).expanduser() / "hush" / "clusters").resolve()


def layout_for(name: str, environ: Mapping[str, str]) -> ClusterLayout:
    """The layout of cluster ``name`` under the state root that ``environ`` selects."""
    state_dir = state_root(environ) / validate_cluster_name(name)
    return ClusterLayout(name=name, state_dir=state_dir, tmpfs_dir=_tmpfs_dir(name, state_dir))


def _tmpfs_dir(name: str, state_dir: Path) -> Path | None:
    if not (_TMPFS.is_dir() and os.access(_TMPFS, os.W_OK | os.X_OK)):
        return None
    digest = hashlib.sha256(str(state_dir).encode()).hexdigest()[:12]
    return _TMPFS / f"hush-{os.getuid()}-{name}-{digest}"
