"""Run the sidecar of a real, injected Pod as a process on this host.

Pods do not run under kwok, so the demo (like the e2e suite) takes the ``hush-sidecar``
container that the mutating webhook really put into a Pod and starts its command, args and
environment here. :func:`host_command` changes only what cannot be the same on a host, and
lists every change so the demo can say so:

- the token path: a pod gets a projected, audience-bound ServiceAccount token in a volume;
  on the host it is a file holding a real token from the TokenRequest API, bound to that Pod;
- the CA path: a pod gets the accountant's CA from a projected ConfigMap; on the host it is
  the operator's certificate chain in the cluster's state directory;
- the listen host: 127.0.0.1 instead of the pod's own network namespace (0.0.0.0);
- the listen and admin ports, only when the pod's are taken on this host: every pod has its
  own network namespace, the host has one for all of them (two demo sidecars both want
  the injector's first ports).

The container's command is ``hush sidecar``; on the host the same entry point runs from this
interpreter (``python -m hush``), so the host process runs this checkout's code. The policy,
its hash and everything else baked into ``HUSH_SIDECAR_CONFIG`` is untouched.
:func:`host_command` is pure; :func:`running` starts, waits for and stops the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

from hush.dev import errors, processes

CONTAINER_NAME: Final = "hush-sidecar"
CONFIG_VARIABLE: Final = "HUSH_SIDECAR_CONFIG"
READY_TIMEOUT_SECONDS: Final = 60.0


@dataclasses.dataclass(frozen=True, kw_only=True)
class Substitutions:
    """What the host provides instead of the pod."""

    token_path: Path
    ca_path: Path
    listen_host: str = "127.0.0.1"
    listen_port: int | None = None
    """None keeps the pod's port."""
    admin_port: int | None = None


@dataclasses.dataclass(frozen=True, kw_only=True)
class HostSidecar:
    """A command line, its environment additions, and what was changed from the pod."""

    argv: tuple[str, ...]
    environment: dict[str, str]
    listen_port: int
    admin_port: int
    policy_hash: str
    changes: tuple[str, ...]


def sidecar_container(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The injected ``hush-sidecar`` container of ``pod``; ``DevClusterError`` if it has none."""
    spec = pod.get("spec") or {}
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        if container.get("name") == CONTAINER_NAME:
            found: dict[str, Any] = container
            return found
    name = (pod.get("metadata") or {}).get("name", "?")
    raise errors.DevClusterError(f"Pod {name} has no {CONTAINER_NAME} container: not injected")


def baked_config(container: Mapping[str, Any]) -> dict[str, Any]:
    for variable in container.get("env") or []:
        if variable.get("name") == CONFIG_VARIABLE:
            document: dict[str, Any] = json.loads(variable["value"])
            return document
    raise errors.DevClusterError(f"Container {CONTAINER_NAME} has no {CONFIG_VARIABLE}")


def host_command(
    container: Mapping[str, Any], *, python: str, substitutions: Substitutions
) -> HostSidecar:
    """The host process for ``container`` (see the module doc for what changes and why)."""
    command: Sequence[str] = container.get("command") or []
    if list(command[:1]) != ["hush"]:
        raise errors.DevClusterError(
            f"Container {CONTAINER_NAME} runs {command!r}, not the hush entry point"
        )
    baked = baked_config(container)
    changes = [
        f"tokenPath {baked.get('tokenPath')} -> {substitutions.token_path} "
        "(a TokenRequest token bound to this Pod)",
        f"caPath {baked.get('caPath')} -> {substitutions.ca_path} (the operator's CA)",
        f"listenHost {baked.get('listenHost', '0.0.0.0')} -> {substitutions.listen_host}",  # noqa: S104
    ]
    updated = {
        **baked,
        "tokenPath": str(substitutions.token_path),
        "caPath": str(substitutions.ca_path),
        "listenHost": substitutions.listen_host,
    }
    for key, port in (
        ("listenPort", substitutions.listen_port),
        ("adminPort", substitutions.admin_port),
    ):
        if port is not None and port != baked[key]:
            changes.append(f"{key} {baked[key]} -> {port} (the pod's port is taken on this host)")
            updated[key] = port
    environment = {
        str(variable["name"]): str(variable.get("value", ""))
        for variable in container.get("env") or []
    }
    environment[CONFIG_VARIABLE] = json.dumps(updated, sort_keys=True, separators=(",", ":"))
    return HostSidecar(
        argv=(python, "-m", "hush", *command[1:], *(container.get("args") or [])),
        environment=environment,
        listen_port=int(updated["listenPort"]),
        admin_port=int(updated["adminPort"]),
        policy_hash=str(baked["policyHash"]),
        changes=tuple(changes),
    )


def port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310 - http to loopback
            return bool(reply.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def running(
    sidecar: HostSidecar, *, log_file: Path, pid_file: Path
) -> Iterator[processes.StartedProcess]:
    """Start ``sidecar``, wait until its ``/readyz`` answers 200, stop it on exit.

    The pid file goes with the cluster's (``run/``), so that ``hush dev down`` also stops a
    sidecar whose demo was killed before it could stop it.
    """
    started = processes.start(
        sidecar.argv,
        log_file=log_file,
        pid_file=pid_file,
        env={**os.environ, **sidecar.environment},
    )
    try:
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        url = f"http://127.0.0.1:{sidecar.admin_port}/readyz"
        while not _ready(url):
            code = started.exit_code()
            if code is not None or time.monotonic() > deadline:
                what = f"exited with code {code}" if code is not None else "was not ready in time"
                tail = processes.log_tail(log_file, lines=20)
                raise errors.DevClusterError(
                    f"The host sidecar {what} ({url}); last lines of {log_file}:\n{tail}"
                )
            time.sleep(0.1)
        yield started
    finally:
        processes.stop_all([started.record], grace_seconds=5)
        with contextlib.suppress(OSError):
            started.popen.wait(timeout=1)
        pid_file.unlink(missing_ok=True)
