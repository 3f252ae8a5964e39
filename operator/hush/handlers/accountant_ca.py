"""Publish the accountant's CA where injected sidecars mount it.

An injected pod mounts ConfigMap ``hush-accountant-ca`` of its own namespace (a projected
volume cannot reach across namespaces) to verify the accountant's serving certificate. Pods
use a DPPolicy of their namespace, so wherever a DPPolicy is created or resumed the operator
server-side applies that ConfigMap with the CA bundle from ``--sidecar-ca-file`` (read at
each call, so a rotated bundle reaches the namespaces at their next policy event).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kopf

from hush.admission import mutation
from hush.handlers import resources
from hush.kube import client

FIELD_MANAGER = "hush-operator"
_ca_file: Path | None = None


def configure(ca_file: Path | None) -> None:
    """Called by ``hush operator`` (``--sidecar-ca-file``); None publishes nothing."""
    global _ca_file
    _ca_file = ca_file


@kopf.on.resume(*resources.DP_POLICIES, id="accountant_ca_publish")
@kopf.on.create(*resources.DP_POLICIES, id="accountant_ca_publish")
def accountant_ca_publish(namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    if _ca_file is None or not namespace:
        return
    bundle = _ca_file.read_text()
    client.apply_config_map(
        namespace,
        mutation.ACCOUNTANT_CA_CONFIG_MAP,
        {"ca.crt": bundle},
        field_manager=FIELD_MANAGER,
        timeout=10.0,
    )
    logger.debug(f"Published ConfigMap {mutation.ACCOUNTANT_CA_CONFIG_MAP} for sidecars")
