"""Finding the control plane binaries (and building them when they are missing).

The binaries are built from pinned Go modules by ``hack/controlplane/build.sh`` into a cache
outside the repository; the script prints the bin directory as its last line and returns in
well under a second when the cache is warm. ``HUSH_CONTROLPLANE_BIN`` points at a prepared
directory instead (CI caches, or binaries built elsewhere) and skips the script.

The kwok Stage definitions (``kwok-stages.yaml``) sit next to the bin directory: kwok >= 0.8
ships none and does nothing without them.

A real node (``hush dev up --real-node``) also needs kubelet and kube-proxy, from the same
pinned Kubernetes release, built by ``hack/controlplane/build-node.sh`` into a cache of their
own (``HUSH_NODE_BIN`` points at a prepared directory instead): clusters without a real node
never build them.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import hush
from hush.dev import errors

logger = logging.getLogger(__name__)

REQUIRED_BINARIES: Final = (
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "kwok",
    "helm",
)
NODE_BINARIES: Final = ("kubelet", "kube-proxy")


@dataclasses.dataclass(frozen=True)
class Binaries:
    """A directory holding every control plane binary."""

    bin_dir: Path

    def path(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def kubectl(self) -> Path:
        return self.path("kubectl")

    @property
    def kwok_stages(self) -> Path:
        return self.bin_dir.parent / "kwok-stages.yaml"


def repository_root() -> Path:
    """The checkout that this ``hush`` package was imported from (an editable install)."""
    return Path(hush.__file__).resolve().parents[2]


def _build_script() -> Path:
    return repository_root() / "hack" / "controlplane" / "build.sh"


def _run_build_script(script: Path | None = None, *, cold: str = "15-30 minutes") -> Path:
    script = script or _build_script()
    if not script.is_file():
        raise errors.DevClusterError(
            f"Cannot build the control plane: {script} does not exist. Run hush from a "
            "checkout of the repository (pip install -e .) or set HUSH_CONTROLPLANE_BIN to a "
            "directory holding " + ", ".join(REQUIRED_BINARIES)
        )
    logger.info("Started %s (a cold build takes %s)", script, cold)
    # stderr (inherited file descriptor 2) carries the build's progress to the user.
    result = subprocess.run(
        ["bash", str(script)],
        stdout=subprocess.PIPE,
        stderr=None,
        text=True,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise errors.DevClusterError(
            f"Building the control plane failed (exit {result.returncode}); "
            f"its output is above. Re-run `bash {script}` to retry"
        )
    return Path(lines[-1])


def locate(environ: Mapping[str, str]) -> Binaries:
    """The control plane binaries, built first if needed; raises if any is missing."""
    configured = environ.get("HUSH_CONTROLPLANE_BIN")
    binaries = Binaries(Path(configured).expanduser() if configured else _run_build_script())
    missing = [
        name
        for name in REQUIRED_BINARIES
        if not os.access(binaries.path(name), os.X_OK) or not binaries.path(name).is_file()
    ]
    if not binaries.kwok_stages.is_file():
        missing.append(str(binaries.kwok_stages))
    if missing:
        source = "HUSH_CONTROLPLANE_BIN" if configured else str(_build_script())
        raise errors.DevClusterError(
            f"Missing from {binaries.bin_dir}: {', '.join(missing)} (the directory came from "
            f"{source}). Rebuild with `bash {_build_script()}` or fix HUSH_CONTROLPLANE_BIN"
        )
    return Binaries(binaries.bin_dir.resolve())


def cache_root(environ: Mapping[str, str]) -> Path:
    """``${HUSH_CACHE_DIR:-${XDG_CACHE_HOME:-~/.cache}/hush}``, as build.sh computes it."""
    if environ.get("HUSH_CACHE_DIR"):
        return Path(environ["HUSH_CACHE_DIR"]).expanduser()
    return Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "hush"


def _node_build_script() -> Path:
    return repository_root() / "hack" / "controlplane" / "build-node.sh"


def locate_node(environ: Mapping[str, str]) -> Path:
    """The directory holding kubelet and kube-proxy, built first if needed."""
    configured = environ.get("HUSH_NODE_BIN")
    if configured:
        bin_dir = Path(configured).expanduser()
    else:
        bin_dir = _run_build_script(_node_build_script(), cold="about 10 minutes")
    missing = [name for name in NODE_BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        source = "HUSH_NODE_BIN" if configured else str(_node_build_script())
        raise errors.DevClusterError(
            f"Missing from {bin_dir}: {', '.join(missing)} (the directory came from {source})"
        )
    return bin_dir.resolve()
