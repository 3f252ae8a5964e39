"""The real node's image registry: distribution's registry on 127.0.0.1, plain HTTP.

Pods pull Hush's image by digest, exactly as the injector requires (``repo@sha256:...``),
so a real node needs a registry; it must be local (these machines reach no container
registry, and must not try). This module owns that registry: the binary, built from
distribution's Go module by ``hack/controlplane/build-registry.sh`` (``HUSH_REGISTRY_BIN``
names a prepared directory instead); its configuration; starting it as a daemonised
component of the cluster (pid file ``registry.pid``, so ``hush dev down`` stops it with the
other processes); and the containerd ``hosts.toml`` that lets the node pull from it over
plain HTTP.

Where it listens: ``127.0.0.1:<port>`` only (a free port picked at ``up``). containerd
connects from the host's network namespace, so loopback serves it; no pod talks to the
registry. containerd and the kubelet keep ``HTTP(S)_PROXY`` pointing at a closed loopback
port for everything else; loopback is already in their ``NO_PROXY`` (and Go never proxies a
loopback address), so the registry is the one place a pull can succeed.

Storage: a directory under the cache (``<cache>/images/registry``), shared by clusters and
kept by ``down`` like the other caches: an image built and pushed once is there for the next
cluster, and a warm ``up`` pushes nothing (content-addressed blobs, so two clusters' registries
writing the same blob write the same bytes).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import yaml

from hush.dev import binaries, errors, layout, ports
from hush.dev.components import ComponentSpec

logger = logging.getLogger(__name__)

COMPONENT: Final = "registry"
LOOPBACK: Final = "127.0.0.1"
STARTUP_TIMEOUT_SECONDS: Final = 30.0
_HTTP_TIMEOUT_SECONDS: Final = 10.0
MANIFEST_ACCEPT: Final = ", ".join(
    (
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    )
)


def build_script() -> Path:
    return binaries.repository_root() / "hack" / "controlplane" / "build-registry.sh"


def locate_binary(environ: Mapping[str, str]) -> Path:
    """The registry binary: ``$HUSH_REGISTRY_BIN/registry``, or built (cached) by the script."""
    configured = environ.get("HUSH_REGISTRY_BIN")
    if configured:
        bin_dir = Path(configured).expanduser()
    else:
        script = build_script()
        logger.info("Started %s (a cold build takes about 3 minutes)", script)
        result = subprocess.run(
            ["bash", str(script)], stdout=subprocess.PIPE, stderr=None, text=True, check=False
        )
        lines = result.stdout.strip().splitlines()
        if result.returncode != 0 or not lines:
            raise errors.DevClusterError(
                f"Building the registry failed (exit {result.returncode}); its output is "
                f"above. Re-run `bash {script}` to retry"
            )
        bin_dir = Path(lines[-1])
    binary = bin_dir / "registry"
    if not os.access(binary, os.X_OK):
        raise errors.DevClusterError(f"No executable registry in {bin_dir}")
    return binary.resolve()


def storage_dir(cache_root: Path) -> Path:
    """Where every cluster's registry keeps its blobs and manifests."""
    return cache_root / "images" / "registry"


@dataclasses.dataclass(frozen=True, kw_only=True)
class RegistryFiles:
    """One cluster's registry: its config, its address record and containerd's hosts dir."""

    cluster: layout.ClusterLayout

    @property
    def config(self) -> Path:
        return self.cluster.state_dir / "registry" / "config.yml"

    @property
    def address_file(self) -> Path:
        return self.cluster.state_dir / "registry" / "address.json"

    @property
    def hosts_dir(self) -> Path:
        """containerd's ``config_path``: one ``<host:port>/hosts.toml`` per registry."""
        return self.cluster.state_dir / "node" / "certs.d"


def registry_config(*, port: int, debug_port: int, storage: Path) -> dict[str, object]:
    """distribution's config.yml: loopback only, filesystem storage, no auth, no proxying."""
    return {
        "version": 0.1,
        "log": {"level": "info", "formatter": "text", "accesslog": {"disabled": True}},
        "storage": {
            "filesystem": {"rootdirectory": str(storage)},
            # Pushes of the same image from two clusters must not delete each other's uploads.
            "maintenance": {"uploadpurging": {"enabled": False}},
            "delete": {"enabled": False},
        },
        "http": {
            "addr": f"{LOOPBACK}:{port}",
            # /debug/health answers the readiness probe; loopback too.
            "debug": {"addr": f"{LOOPBACK}:{debug_port}"},
            "headers": {"X-Content-Type-Options": ["nosniff"]},
        },
        "health": {"storagedriver": {"enabled": True, "interval": "10s", "threshold": 3}},
    }


def hosts_toml(address: str) -> str:
    """containerd's hosts.toml for ``address`` (``127.0.0.1:<port>``): plain HTTP, pull only."""
    return (
        "# Written by hush dev up --real-node (hush.dev.registry); do not edit.\n"
        "# The cluster's own registry on loopback, over plain HTTP: pods pull by digest.\n"
        f'server = "http://{address}"\n\n'
        f'[host."http://{address}"]\n'
        '  capabilities = ["pull", "resolve"]\n'
    )


def address(files: RegistryFiles) -> str | None:
    """``127.0.0.1:<port>`` of the cluster's registry, or None when it has none."""
    try:
        data = json.loads(files.address_file.read_text())
        return str(data["address"])
    except (FileNotFoundError, ValueError, KeyError, TypeError):
        return None


def prepare(cluster: layout.ClusterLayout, *, binary: Path, cache_root: Path) -> ComponentSpec:
    """Write the config and containerd's hosts.toml; return how to run and probe the registry.

    ``hush dev up`` starts it like its other components (crash detection, log tail, stopped on
    a failed start; ``down`` stops it through its pid file ``registry.pid``)."""
    files = RegistryFiles(cluster=cluster)
    port, debug_port = ports.pick_free_ports(2)
    storage = storage_dir(cache_root)
    storage.mkdir(parents=True, exist_ok=True)
    files.config.parent.mkdir(parents=True, exist_ok=True)
    files.config.write_text(
        yaml.safe_dump(registry_config(port=port, debug_port=debug_port, storage=storage))
    )
    registry_address = f"{LOOPBACK}:{port}"
    host_dir = files.hosts_dir / registry_address
    host_dir.mkdir(parents=True, exist_ok=True)
    (host_dir / "hosts.toml").write_text(hosts_toml(registry_address))
    files.address_file.write_text(json.dumps({"address": registry_address, "debug": debug_port}))
    return ComponentSpec(
        name=COMPONENT,
        command=(str(binary), "serve", str(files.config)),
        port=port,
        health_url=f"http://{LOOPBACK}:{debug_port}/debug/health",
        startup_timeout_seconds=STARTUP_TIMEOUT_SECONDS,
        # The registry makes no outgoing request (no pull-through cache, no tracing export).
        environment=(("OTEL_TRACES_EXPORTER", "none"), ("OTEL_SDK_DISABLED", "true")),
    )


def manifest_digest(registry_address: str, repository: str, reference: str) -> str | None:
    """The digest the registry serves for ``repository:reference`` (tag or digest), or None."""
    request = urllib.request.Request(
        f"http://{registry_address}/v2/{repository}/manifests/{reference}",
        method="HEAD",
        headers={"Accept": MANIFEST_ACCEPT},
    )
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=_HTTP_TIMEOUT_SECONDS) as response:
            digest = response.headers.get("Docker-Content-Digest")
            return str(digest) if digest else None
    except urllib.error.HTTPError as error:
        if error.code == 404:
            return None
        raise errors.DevClusterError(
            f"The registry at {registry_address} answered {error.code} for {repository}"
        ) from error
    except OSError as error:
        raise errors.DevClusterError(
            f"The registry at {registry_address} cannot be reached: {error}"
        ) from error
