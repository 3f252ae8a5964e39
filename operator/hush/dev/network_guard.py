"""The network guard of a real node: every cluster range stays on our bridge, nothing leaves.

These machines may send only to loopback and to network namespaces we made ourselves, and
they have an uplink with a default route: a packet for an address no local route covers
leaves the machine (design note real-nodes.md, "The network rule"). A real node gives pods
their own network namespaces on a bridge, and ``ip_forward`` is on for them, so before any
pod starts this module puts in place, and checks:

- the bridge ``hush0`` with the node's address (``10.245.0.1/24``, not loopback: the kubelet
  refuses a loopback node IP, and pods must reach the host on it);
- a route of ours (protocol :data:`ROUTE_PROTOCOL`) sending each cluster range (Service,
  real pods, kwok's fake pods) to the bridge, plus a ``blackhole`` route for the same range
  with a higher metric, so that should the bridge vanish the packet still dies here rather
  than following the default route;
- the nftables table ``inet hush_guard``: anything forwarded from the bridge to another
  interface, or from another interface to the bridge, is dropped and counted
  (``egress_dropped``/``ingress_dropped``); a host packet for a cluster range that would
  leave on another interface, or one with a pod source address leaving on another interface,
  is dropped and counted too (``leak_dropped``). There is no masquerade anywhere;
- :func:`verify` then asks the kernel (``ip route get``) which interface an address in each
  range takes, checks the table and its rules are there and that no masquerade rule exists.

Only one real node runs per machine (the bridge name and the ranges are fixed); the owner is
recorded in :data:`OWNER_FILE` together with the ``ip_forward`` value found before, which
:func:`remove` restores. Builders are pure (unit-tested); ``apply``/``verify``/``remove`` run
``ip``, ``nft`` and ``sysctl`` and need root.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import json
import logging
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

from hush.dev import errors

logger = logging.getLogger(__name__)

BRIDGE: Final = "hush0"
NODE_ADDRESS: Final = "10.245.0.1"
"""The real node's InternalIP and the pods' gateway: the bridge's own address."""
NODE_POD_SUBNET: Final = "10.245.0.0/24"
"""The pod CIDR of the real node (the bridge's subnet); host-local hands out its addresses."""
REAL_POD_RANGE: Final = "10.245.0.0/16"
SERVICE_RANGE: Final = "10.96.0.0/16"
KWOK_POD_RANGE: Final = "10.244.0.0/16"
GUARDED_RANGES: Final = (SERVICE_RANGE, KWOK_POD_RANGE, REAL_POD_RANGE)
"""Every range the cluster uses; each is routed to the bridge (kwok's fake pod IPs too: a
test that dialled one must not reach the uplink)."""
ROUTE_PROTOCOL: Final = 211
"""The ``proto`` of our routes (unassigned in iproute2's rt_protos): how ``remove`` finds them."""
BLACKHOLE_METRIC: Final = 4242
NFT_FAMILY: Final = "inet"
NFT_TABLE: Final = "hush_guard"
COUNTERS: Final = ("egress_dropped", "ingress_dropped", "leak_dropped", "inbound_dropped")
OWNER_FILE: Final = Path("/run/hush/real-node.json")
KUBE_PROXY_TABLE: Final = "kube-proxy"
_COMMAND_TIMEOUT_SECONDS: Final = 30.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class RouteCheck:
    """What the kernel answered for one address of a guarded range."""

    cluster_range: str
    address: str
    device: str
    route_type: str

    @property
    def ours(self) -> bool:
        return self.device == BRIDGE and self.route_type in ("unicast", "local")


def probe_address(cluster_range: str) -> str:
    """An address inside ``cluster_range`` that is neither its network nor our own address."""
    network = ipaddress.ip_network(cluster_range)
    return str(network.network_address + 7)


def nft_ruleset(*, cluster_name: str, inbound_ports: Sequence[int] = ()) -> str:
    """The nftables script that creates (or replaces) the guard table, for ``nft -f``.

    ``inbound_ports`` are TCP ports of host processes listening on every address (the
    apiserver, so that pods reach it on the bridge): they are dropped on every interface but
    loopback and the bridge.

    ``accept`` in a base chain only ends this table's verdict: other tables still see the
    packet, so the guard adds drops and never opens anything another table closes.
    """
    ranges = ", ".join(GUARDED_RANGES)
    inbound = (
        f"tcp dport {{ {', '.join(str(p) for p in inbound_ports)} }} "
        f'iifname != {{ "{BRIDGE}", "lo" }} counter name "inbound_dropped" drop'
        if inbound_ports
        else ""
    )
    # `table ...; delete table ...;` first: re-applying replaces the table atomically, even
    # after a crash left an older version behind (deleting a missing table would fail).
    return f"""\
table {NFT_FAMILY} {NFT_TABLE}
delete table {NFT_FAMILY} {NFT_TABLE}
table {NFT_FAMILY} {NFT_TABLE} {{
    comment "hush dev real node guard of cluster {cluster_name}"
    counter egress_dropped {{ comment "forwarded from {BRIDGE} to another interface" }}
    counter ingress_dropped {{ comment "forwarded from another interface to {BRIDGE}" }}
    counter leak_dropped {{ comment "a cluster address leaving on another interface" }}
    counter inbound_dropped {{ comment "a cluster-only port reached from another interface" }}
    chain input {{
        type filter hook input priority filter - 10; policy accept;
        {inbound}
    }}
    chain forward {{
        type filter hook forward priority filter - 10; policy accept;
        iifname "{BRIDGE}" oifname "{BRIDGE}" accept
        iifname "{BRIDGE}" counter name "egress_dropped" drop
        oifname "{BRIDGE}" counter name "ingress_dropped" drop
    }}
    chain output {{
        type filter hook output priority filter - 10; policy accept;
        ip daddr {{ {ranges} }} oifname != {{ "{BRIDGE}", "lo" }} counter name "leak_dropped" drop
    }}
    chain postrouting {{
        type filter hook postrouting priority srcnat - 10; policy accept;
        ip saddr {{ {ranges} }} oifname != {{ "{BRIDGE}", "lo" }} counter name "leak_dropped" drop
    }}
}}
"""


def route_commands() -> list[list[str]]:
    """``ip`` commands adding our routes (``replace``: idempotent)."""
    commands: list[list[str]] = []
    for cluster_range in GUARDED_RANGES:
        commands.append(
            ["ip", "route", "replace", cluster_range, "dev", BRIDGE, "proto", str(ROUTE_PROTOCOL)]
        )
        commands.append(
            [
                "ip",
                "route",
                "replace",
                "blackhole",
                cluster_range,
                "metric",
                str(BLACKHOLE_METRIC),
                "proto",
                str(ROUTE_PROTOCOL),
            ]
        )
    return commands


def parse_route_get(
    cluster_range: str, address: str, answer: Sequence[dict[str, Any]]
) -> RouteCheck:
    """A :class:`RouteCheck` from ``ip -j route get`` output."""
    first = answer[0] if answer else {}
    return RouteCheck(
        cluster_range=cluster_range,
        address=address,
        device=str(first.get("dev", "")),
        route_type=str(first.get("type", "unicast")),
    )


def guard_problems(ruleset: dict[str, Any]) -> list[str]:
    """What is wrong with ``nft -j list ruleset`` output, as sentences (empty when fine)."""
    problems: list[str] = []
    items = ruleset.get("nftables", [])
    tables = [item["table"] for item in items if "table" in item]
    if not any(t.get("family") == NFT_FAMILY and t.get("name") == NFT_TABLE for t in tables):
        problems.append(f"the nftables table {NFT_FAMILY} {NFT_TABLE} is missing")
    ours = [
        item
        for item in items
        if any(
            isinstance(value, dict)
            and value.get("table") == NFT_TABLE
            and value.get("family") == NFT_FAMILY
            for value in item.values()
        )
    ]
    chains = {item["chain"]["name"]: item["chain"] for item in ours if "chain" in item}
    for chain in ("forward", "output", "postrouting"):
        if chains.get(chain, {}).get("hook") != chain:
            problems.append(f"chain {chain} (hook {chain}) is missing from table {NFT_TABLE}")
    counters = {item["counter"]["name"] for item in ours if "counter" in item}
    problems += [f"counter {name} is missing" for name in COUNTERS if name not in counters]
    drops = [
        item["rule"]
        for item in ours
        if "rule" in item and any("drop" in expression for expression in item["rule"]["expr"])
    ]
    if len(drops) < 4:  # two in forward, one each in output and postrouting
        problems.append(f"table {NFT_TABLE} has {len(drops)} drop rules, expected at least 4")
    for item in items:
        rule = item.get("rule")
        # kube-proxy's own table masquerades Service traffic (hairpin, and Service traffic from
        # outside the pod range): its packets are routed to our bridge, and a pod-source
        # packet bound elsewhere is dropped by our postrouting chain before NAT (priority
        # srcnat - 10). Any other masquerade is refused.
        if rule is None or rule.get("table") == KUBE_PROXY_TABLE:
            continue
        if any("masquerade" in e for e in rule.get("expr", [])):
            problems.append(
                f"a masquerade rule exists in table {rule.get('family')} {rule.get('table')} "
                f"chain {rule.get('chain')}: pod traffic must never be NATed off the machine"
            )
    return problems


def parse_counters(ruleset: dict[str, Any]) -> dict[str, int]:
    """Packets counted by each named counter of our table, from ``nft -j list counters``."""
    found: dict[str, int] = {}
    for item in ruleset.get("nftables", []):
        counter = item.get("counter")
        if counter and counter.get("table") == NFT_TABLE and counter.get("family") == NFT_FAMILY:
            found[str(counter["name"])] = int(counter.get("packets", 0))
    return found


# -- running the commands ------------------------------------------------------------------


def _run(command: Sequence[str], *, stdin: str | None = None, check: bool = True) -> str:
    try:
        result = subprocess.run(
            list(command),
            input=stdin,
            capture_output=True,
            text=True,
            check=False,
            timeout=_COMMAND_TIMEOUT_SECONDS,
        )
    except FileNotFoundError as error:
        raise errors.DevClusterError(
            f"`{command[0]}` is not installed: the real node needs iproute2 and nftables"
        ) from error
    if check and result.returncode != 0:
        raise errors.DevClusterError(
            f"`{' '.join(command)}` failed (exit {result.returncode}): {result.stderr.strip()}"
        )
    return result.stdout


def _json(command: Sequence[str]) -> Any:
    return json.loads(_run(command) or "null")


def _read_forwarding() -> str:
    return Path("/proc/sys/net/ipv4/ip_forward").read_text().strip()


def _write_forwarding(value: str) -> None:
    Path("/proc/sys/net/ipv4/ip_forward").write_text(value)


def owner() -> dict[str, Any] | None:
    """The record of the cluster whose guard is in place, or None."""
    try:
        data: dict[str, Any] = json.loads(OWNER_FILE.read_text())
    except (FileNotFoundError, ValueError):
        return None
    return data


def _bridge_exists() -> bool:
    return bool(_run(["ip", "-j", "link", "show", "dev", BRIDGE], check=False).strip())


def apply(*, cluster_name: str, state_dir: Path, inbound_ports: Sequence[int] = ()) -> None:
    """Create the bridge, routes and nftables table of the guard (before any pod starts).

    Refuses when another cluster's guard is in place: the bridge and ranges are per machine.
    """
    current = owner()
    if current is not None and current.get("stateDir") != str(state_dir):
        raise errors.DevClusterError(
            f"Another real-node cluster ({current.get('name')}, {current.get('stateDir')}) "
            f"owns the bridge {BRIDGE}: only one real node runs per machine. Run "
            f"`hush dev down --name {current.get('name')}` first"
        )
    if current is None:
        OWNER_FILE.parent.mkdir(parents=True, exist_ok=True)
        record = {"name": cluster_name, "stateDir": str(state_dir), "ipForward": _read_forwarding()}
        OWNER_FILE.write_text(json.dumps(record))
    # The table first: from the moment forwarding is on, nothing may leave the bridge.
    _run(
        ["nft", "-f", "-"],
        stdin=nft_ruleset(cluster_name=cluster_name, inbound_ports=inbound_ports),
    )
    if not _bridge_exists():
        _run(["ip", "link", "add", "name", BRIDGE, "type", "bridge"])
    prefix = ipaddress.ip_network(NODE_POD_SUBNET).prefixlen
    _run(["ip", "address", "replace", f"{NODE_ADDRESS}/{prefix}", "dev", BRIDGE])
    _run(["ip", "link", "set", "dev", BRIDGE, "up"])
    for command in route_commands():
        _run(command)
    logger.info(
        "Put the network guard in place: bridge %s (%s), routes for %s, nftables table %s %s",
        BRIDGE,
        NODE_ADDRESS,
        ", ".join(GUARDED_RANGES),
        NFT_FAMILY,
        NFT_TABLE,
    )


def route_get(address: str, *selectors: str) -> list[dict[str, Any]]:
    """The kernel's answer to ``ip -j route get ADDRESS [SELECTORS]`` (e.g. ``from``, ``iif``):
    where a packet for ``address`` would go, asked before anything is sent there."""
    answer: list[dict[str, Any]] = _json(["ip", "-j", "route", "get", address, *selectors]) or []
    return answer


def route_checks() -> list[RouteCheck]:
    """``ip route get`` for one address in each guarded range."""
    checks = []
    for cluster_range in GUARDED_RANGES:
        address = probe_address(cluster_range)
        checks.append(parse_route_get(cluster_range, address, route_get(address)))
    return checks


def verify() -> None:
    """Raise unless every guarded range routes to our bridge and the nftables guard is intact.

    Called before any pod starts and by the e2e test; it sends nothing.
    """
    problems = [
        f"`ip route get {check.address}` ({check.cluster_range}) answers dev "
        f"{check.device or '?'} ({check.route_type}), not {BRIDGE}"
        for check in route_checks()
        if not check.ours
    ]
    problems += guard_problems(_json(["nft", "-j", "list", "ruleset"]) or {})
    if problems:
        raise errors.DevClusterError(
            "The network guard is not in place, so no pod may start:\n  - "
            + "\n  - ".join(problems)
        )
    logger.info("Checked the network guard: %s route to %s", ", ".join(GUARDED_RANGES), BRIDGE)


def counters() -> dict[str, int]:
    """The packet count of each of our drop counters."""
    listed = _json(["nft", "-j", "list", "counters", "table", NFT_FAMILY, NFT_TABLE])
    return parse_counters(listed or {})


def enable_forwarding() -> None:
    """Turn on IPv4 forwarding (pods reach each other and Services through the host).

    Only after :func:`apply`: the forward chain then drops whatever would leave the bridge.
    """
    verify()
    _write_forwarding("1")


def remove(*, state_dir: Path) -> bool:
    """Delete the bridge, our routes and the table, restore ``ip_forward``; False if none of
    ours was there. Only the owner (or anyone, when no owner is recorded) removes it."""
    current = owner()
    if current is not None and current.get("stateDir") != str(state_dir):
        return False
    found = False
    if current is not None:
        # Forwarding off first: from here on nothing is routed through the host at all.
        found = True
        _write_forwarding(str(current.get("ipForward", "0")))
    if _bridge_exists():
        found = True
        # Deleting the bridge takes its address and link routes with it.
        _run(["ip", "link", "delete", "dev", BRIDGE])
    for cluster_range in GUARDED_RANGES:
        for kind in ([], ["blackhole"]):
            # Absent routes make `ip` fail: whichever of ours exist are deleted.
            _run(
                ["ip", "route", "delete", *kind, cluster_range, "proto", str(ROUTE_PROTOCOL)],
                check=False,
            )
    leftover = _run(["ip", "-j", "route", "show", "proto", str(ROUTE_PROTOCOL)], check=False)
    if leftover.strip() not in ("", "[]"):
        raise errors.DevClusterError(f"Routes of ours survived their deletion: {leftover}")
    # The table last: it drops whatever could still be on its way out.
    if _run(["nft", "list", "table", NFT_FAMILY, NFT_TABLE], check=False).strip():
        found = True
        _run(["nft", "delete", "table", NFT_FAMILY, NFT_TABLE])
    OWNER_FILE.unlink(missing_ok=True)
    with contextlib.suppress(OSError):  # only when empty: real_node keeps run dirs there
        OWNER_FILE.parent.rmdir()
    return found
