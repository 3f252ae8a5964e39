"""Kubeconfig documents for the admin and for each component of a dev cluster.

Every kubeconfig embeds its CA, certificate and key (``*-data`` fields) instead of pointing at
files: the admin kubeconfig is then one self-contained file that can be copied, handed to a
test process or to helm, and still works. The builder is pure; :func:`write_kubeconfig` is
the only I/O.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import yaml

Kubeconfig = dict[str, Any]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def build_kubeconfig(
    *,
    cluster_name: str,
    server: str,
    user: str,
    ca_certificate: bytes,
    client_certificate: bytes,
    client_key: bytes,
) -> Kubeconfig:
    """A kubeconfig with one cluster, one user and one current context named after both."""
    context = f"{user}@{cluster_name}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": cluster_name,
                "cluster": {
                    "server": server,
                    "certificate-authority-data": _b64(ca_certificate),
                },
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(client_certificate),
                    "client-key-data": _b64(client_key),
                },
            }
        ],
        "contexts": [{"name": context, "context": {"cluster": cluster_name, "user": user}}],
        "current-context": context,
        "preferences": {},
    }


def write_kubeconfig(path: Path, kubeconfig: Kubeconfig) -> None:
    """Write ``kubeconfig`` readable by the owner only (it holds a private key)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        yaml.safe_dump(kubeconfig, handle, sort_keys=False)
    temporary.replace(path)
