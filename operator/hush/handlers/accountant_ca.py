"""Publish the accountant's CA where injected sidecars mount it.

An injected pod mounts ConfigMap ``hush-accountant-ca`` of its own namespace (a projected
volume cannot reach across namespaces) to verify the accountant's serving certificate. Pods
use a DPPolicy of their namespace, so wherever a DPPolicy is created or resumed the operator
server-side applies that ConfigMap with the CA bundle.

The bundle comes from one of two places (``configure``):

- the accountant's certificate keeper, when the operator is the accountant's CA
  (``--accountant-certs self-signed``): the keeper hands every new bundle to
  ``publish_everywhere``, which re-applies the ConfigMap in every namespace with a DPPolicy
  (so a CA rotation, whose new CA enters the bundle an overlap before any leaf it signs is
  served, reaches every namespace in time);
- ``--sidecar-ca-file`` (cert-manager or your own CA): read at each policy event, so a
  rotated bundle reaches the namespaces at their next policy event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kopf

from hush.admission import mutation
from hush.handlers import resources
from hush.kube import client

FIELD_MANAGER = "hush-operator"
REQUEST_TIMEOUT_SECONDS = 10.0
_ca_file: Path | None = None
_bundle: Callable[[], bytes | None] | None = None

logger = logging.getLogger(__name__)


def configure(ca_file: Path | None, *, bundle: Callable[[], bytes | None] | None = None) -> None:
    """Called by ``hush operator``: ``bundle`` (the keeper's CA bundle, preferred) or
    ``--sidecar-ca-file``; with neither, nothing is published."""
    global _ca_file, _bundle
    _ca_file = ca_file
    _bundle = bundle


def current_bundle() -> str | None:
    """The CA bundle to publish now, or None (nothing configured, or not loaded yet)."""
    if _bundle is not None:
        found = _bundle()
        return found.decode() if found is not None else None
    if _ca_file is not None:
        return _ca_file.read_text()
    return None


def _apply(namespace: str, bundle: str) -> None:
    client.apply_config_map(
        namespace,
        mutation.ACCOUNTANT_CA_CONFIG_MAP,
        {"ca.crt": bundle},
        field_manager=FIELD_MANAGER,
        timeout=REQUEST_TIMEOUT_SECONDS,
    )


def namespaces_with_policies() -> set[str]:
    group, version, plural = resources.DP_POLICIES
    return {
        str(policy["metadata"]["namespace"])
        for policy in client.list_objects(group=group, version=version, plural=plural)
        if policy.get("metadata", {}).get("namespace")
    }


async def publish_everywhere(bundle: bytes) -> None:
    """Apply ``bundle`` in every namespace with a DPPolicy (the keeper's ``on_ca_bundle``).
    An error propagates, and the keeper calls again at its next round."""
    text = bundle.decode()
    namespaces = await asyncio.to_thread(namespaces_with_policies)
    for namespace in sorted(namespaces):
        await asyncio.to_thread(_apply, namespace, text)
    logger.info(
        "Published ConfigMap %s in %d namespace(s) with a DPPolicy",
        mutation.ACCOUNTANT_CA_CONFIG_MAP,
        len(namespaces),
    )


@kopf.on.resume(*resources.DP_POLICIES, id="accountant_ca_publish")
@kopf.on.create(*resources.DP_POLICIES, id="accountant_ca_publish")
def accountant_ca_publish(namespace: str | None, logger: kopf.Logger, **_: Any) -> None:
    if not namespace:
        return
    bundle = current_bundle()
    if bundle is None:
        if _bundle is not None:
            # The keeper has not loaded its first certificate yet: kopf retries.
            raise kopf.TemporaryError("The accountant's CA is not loaded yet", delay=5)
        return
    _apply(namespace, bundle)
    logger.debug(f"Published ConfigMap {mutation.ACCOUNTANT_CA_CONFIG_MAP} for sidecars")
