"""What a real node needs from the host, checked and (as root) installed from Debian.

A real node runs containerd, runc and the CNI plugins from Debian bookworm's packages and
nftables for the network guard (docs/design/0020-real-nodes.md says why these and not
others). :func:`unavailable_reason` tells, in one sentence, why this machine cannot run a
real node (not Linux, not root, no cgroups, no overlayfs); :func:`ensure_packages` installs
the missing packages with ``apt-get`` when running as root, and otherwise says which are
missing. :func:`busybox_deb` fetches the ``busybox-static`` package file (not installed:
only its binary goes into the node's images) into the cache, once.

Nothing here starts a daemon: Debian's containerd service is not used (there is no init
system here, and the node runs its own containerd with its own config and directories).
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Final

from hush.dev import errors

logger = logging.getLogger(__name__)

CNI_BIN_DIR: Final = Path("/usr/lib/cni")
CNI_PLUGINS: Final = ("bridge", "host-local", "loopback")
# Debian package -> the files that prove it is installed.
PACKAGES: Final[Mapping[str, tuple[Path, ...]]] = {
    "containerd": (Path("/usr/bin/containerd"), Path("/usr/bin/containerd-shim-runc-v2")),
    "runc": (Path("/usr/sbin/runc"),),
    "containernetworking-plugins": tuple(CNI_BIN_DIR / plugin for plugin in CNI_PLUGINS),
    "nftables": (Path("/usr/sbin/nft"),),
    "iproute2": (Path("/usr/sbin/ip"),),
    # kube-router's NetworkPolicy firewall (hush.dev.network_policy) runs both.
    "iptables": (Path("/usr/sbin/iptables-restore"),),
    "ipset": (Path("/usr/sbin/ipset"),),
}
BUSYBOX_PACKAGE: Final = "busybox-static"
_APT_TIMEOUT_SECONDS: Final = 600.0


def unavailable_reason() -> str | None:
    """Why a real node cannot run here (one line), or None when it can."""
    if not sys.platform.startswith("linux"):
        return f"a real node needs Linux, this is {sys.platform}"
    if os.geteuid() != 0:
        return "a real node needs root (namespaces, cgroups, mounts, bridge, nftables)"
    if not Path("/sys/fs/cgroup").is_dir():
        return "no cgroup file system is mounted at /sys/fs/cgroup"
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        return "the kernel has no overlayfs (containerd's snapshotter needs it)"
    if shutil.which("apt-get") is None and missing_packages():
        return "missing " + ", ".join(missing_packages()) + " and no apt-get to install them"
    return None


def missing_packages() -> list[str]:
    """The Debian packages whose files are absent."""
    return [
        package
        for package, files in PACKAGES.items()
        if not all(os.access(path, os.X_OK) for path in files)
    ]


def _apt(arguments: list[str], *, cwd: Path | None = None) -> None:
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    result = subprocess.run(
        ["apt-get", *arguments],
        capture_output=True,
        text=True,
        check=False,
        env=environment,
        cwd=cwd,
        timeout=_APT_TIMEOUT_SECONDS,
    )
    if result.returncode != 0:
        tail = "\n".join(result.stderr.strip().splitlines()[-10:])
        raise errors.DevClusterError(f"`apt-get {' '.join(arguments)}` failed:\n{tail}")


def ensure_packages() -> None:
    """Install the missing Debian packages (root only); raise naming them otherwise."""
    missing = missing_packages()
    if not missing:
        return
    if os.geteuid() != 0:
        raise errors.DevClusterError(
            "A real node needs these Debian packages: " + " ".join(missing) + " (run as root "
            "and hush installs them, or `apt-get install " + " ".join(missing) + "`)"
        )
    logger.info("Installing %s with apt-get (a real node needs them)", ", ".join(missing))
    _apt(["install", "-y", "--no-install-recommends", *missing])
    still = missing_packages()
    if still:
        raise errors.DevClusterError(f"apt-get installed {missing} but {still} are still missing")


def busybox_deb(cache_dir: Path) -> Path:
    """The ``busybox-static`` package file in ``cache_dir``, downloaded by apt once."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    found = sorted(cache_dir.glob(f"{BUSYBOX_PACKAGE}_*.deb"))
    if not found:
        logger.info("Downloading the %s package into %s", BUSYBOX_PACKAGE, cache_dir)
        _apt(["download", BUSYBOX_PACKAGE], cwd=cache_dir)
        found = sorted(cache_dir.glob(f"{BUSYBOX_PACKAGE}_*.deb"))
    if not found:
        raise errors.DevClusterError(f"apt-get download {BUSYBOX_PACKAGE} left no .deb")
    return found[-1]


def deb_version(deb: Path) -> str:
    """The package version of a .deb file."""
    result = subprocess.run(
        ["dpkg-deb", "--field", str(deb), "Version"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise errors.DevClusterError(f"Cannot read the version of {deb}: {result.stderr}")
    return result.stdout.strip()
