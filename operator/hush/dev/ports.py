"""Free TCP ports on 127.0.0.1 for the components of a dev cluster.

Ports come from below the kernel's ephemeral range (``net.ipv4.ip_local_port_range``):
a port picked from inside it could be handed to some outgoing connection between the
moment we test it and the moment the component binds it, and the component would then
fail with "address already in use". Each candidate is test-bound, and all test sockets
stay open until every port is chosen, so one call never returns the same port twice.

Another process can still take a port in the short window before the component binds it;
the component then exits, and ``hush dev up`` reports that with its log.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path
from typing import Final

LOOPBACK: Final = "127.0.0.1"
_RANGE_FILE: Final = Path("/proc/sys/net/ipv4/ip_local_port_range")
_LOWEST: Final = 10000
_ATTEMPTS: Final = 1000


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = _RANGE_FILE.read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _candidate_range() -> tuple[int, int]:
    low, high = _ephemeral_range()
    if low - _LOWEST >= 1000:
        return _LOWEST, low - 1
    # The ephemeral range starts too low to leave room below it: use the space above it.
    return high + 1, 65535


def pick_free_ports(count: int, *, rng: random.Random | None = None) -> list[int]:
    """Return ``count`` distinct ports that were free on 127.0.0.1 a moment ago."""
    chooser = rng or random.SystemRandom()
    low, high = _candidate_range()
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        for _ in range(_ATTEMPTS):
            if len(ports) == count:
                break
            port = chooser.randint(low, high)
            if port in ports:
                continue
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                probe.bind((LOOPBACK, port))
            except OSError:
                probe.close()
                continue
            held.append(probe)
            ports.append(port)
    finally:
        for probe in held:
            with contextlib.suppress(OSError):
                probe.close()
    if len(ports) < count:
        raise OSError(f"Found only {len(ports)} of {count} free ports in {low}-{high}")
    return ports
