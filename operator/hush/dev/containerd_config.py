"""The configuration files of a real node's containerd and CNI network (pure builders).

containerd here is Debian bookworm's 1.6 with its runc shim; its config says why each
setting is there. The traps it avoids are recorded in the design note real-nodes.md:

- ``restrict_oom_score_adj = true``: the VM withholds ``CAP_SYS_RESOURCE``, so the sandbox's
  negative ``oom_score_adj`` cannot be set and runc fails with "can't get final child's PID
  from pipe: EOF" unless containerd clamps it;
- ``SystemdCgroup = false``: there is no systemd; the kubelet uses the cgroupfs driver too;
- ``sandbox_image``: the pause image is built here (``oci_image``) and imported before the
  kubelet starts, otherwise containerd pulls ``registry.k8s.io/pause``;
- ``netns_mounts_under_state_dir = true``: pod network namespaces live under our state
  directory, not ``/var/run/netns``, so ``down`` finds every one of ours;
- every directory (root, state, CNI config, IPAM data, opt) is the cluster's own;
- ``config_path``: registry hosts come only from ``hosts.toml`` files in the cluster's
  directory (``hush.dev.registry`` writes one for its registry on 127.0.0.1, plain HTTP), so
  the one registry a pull can reach is ours; any other host still goes through the closed
  loopback proxy and fails there.

The CNI network is one ``bridge`` plugin on :data:`network_guard.BRIDGE` with ``host-local``
addresses from the node's pod subnet, the bridge address as gateway and **no masquerade**
(``ipMasq: false``): pod traffic never leaves with the host's address.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
from pathlib import Path
from typing import Final

from hush.dev import network_guard

CNI_NETWORK_NAME: Final = "hush"
CNI_VERSION: Final = "1.0.0"


@dataclasses.dataclass(frozen=True, kw_only=True)
class ContainerdPaths:
    """Where one node's containerd keeps its data, state, socket and CNI files."""

    root: Path
    state: Path
    socket: Path
    cni_conf_dir: Path
    cni_bin_dir: Path
    cni_ipam_dir: Path
    opt_dir: Path
    registry_hosts_dir: Path | None = None
    """containerd's ``config_path``: ``<host:port>/hosts.toml`` files (the local registry's)."""


def _toml_string(value: str) -> str:
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def _registry_section(cri: str, hosts_dir: Path | None) -> str:
    if hosts_dir is None:
        return ""
    return f"""{cri[:-1]}.registry]
  # hosts.toml per registry (containerd 1.6 config_path): our loopback registry only.
  config_path = {_toml_string(str(hosts_dir))}

"""


def containerd_config(*, paths: ContainerdPaths, sandbox_image: str, metrics_port: int) -> str:
    """containerd's ``config.toml`` (version 2 schema, containerd 1.6)."""
    cri = '[plugins."io.containerd.grpc.v1.cri"]'
    return f"""\
# Written by hush dev up --real-node (hush.dev.containerd_config); do not edit.
version = 2
root = {_toml_string(str(paths.root))}
state = {_toml_string(str(paths.state))}
# Snapshotters this host cannot use only log errors at start.
disabled_plugins = [
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper",
]

[grpc]
  address = {_toml_string(str(paths.socket))}

[metrics]
  # Loopback only: the health probe of `hush dev status` reads /v1/metrics.
  address = "127.0.0.1:{metrics_port}"

[plugins."io.containerd.internal.v1.opt"]
  path = {_toml_string(str(paths.opt_dir))}

{cri}
  sandbox_image = {_toml_string(sandbox_image)}
  # The VM withholds CAP_SYS_RESOURCE: a negative oom_score_adj cannot be set.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  enable_selinux = false
  disable_apparmor = true
  tolerate_missing_hugetlb_controller = true

{cri[:-1]}.containerd]
  snapshotter = "overlayfs"
  default_runtime_name = "runc"

{cri[:-1]}.containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"

{cri[:-1]}.containerd.runtimes.runc.options]
  SystemdCgroup = false

{_registry_section(cri, paths.registry_hosts_dir)}{cri[:-1]}.cni]
  bin_dir = {_toml_string(str(paths.cni_bin_dir))}
  conf_dir = {_toml_string(str(paths.cni_conf_dir))}
  max_conf_num = 1
"""


def cni_conflist(*, ipam_dir: Path) -> dict[str, object]:
    """The CNI network of the node's pods: our bridge, host-local IPAM, no masquerade."""
    subnet = ipaddress.ip_network(network_guard.NODE_POD_SUBNET)
    hosts = list(subnet.hosts())
    return {
        "cniVersion": CNI_VERSION,
        "name": CNI_NETWORK_NAME,
        "plugins": [
            {
                "type": "bridge",
                "bridge": network_guard.BRIDGE,
                "isGateway": True,
                # Never NAT pod traffic to the host's address: it must die on our bridge.
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [
                        [
                            {
                                "subnet": str(subnet),
                                # .1 is the bridge (gateway and node address); .2-.9 stay free.
                                "rangeStart": str(hosts[9]),
                                "rangeEnd": str(hosts[-1]),
                                "gateway": network_guard.NODE_ADDRESS,
                            }
                        ]
                    ],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(ipam_dir),
                },
            }
        ],
    }
