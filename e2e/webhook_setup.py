"""The operator with its admission webhooks registered, for e2e tests.

The apiserver calls the host-process operator through a URL client config on loopback (the
control plane runs on this host), with the serving certificate's chain as ``caBundle``:
exactly the configuration objects the chart renders, except for ``clientConfig``.
"""

from __future__ import annotations

import base64
import contextlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hush.admission import webhooks

import operator_process

SIDECAR_IMAGE = "registry.invalid/hush@sha256:" + "5" * 64
HUSH_NAMESPACE = "hush-system"


def _replace_or_create(create: Any, replace: Any, read: Any, body: dict[str, Any]) -> None:
    name = body["metadata"]["name"]
    try:
        existing = read(name)
    except ApiException as error:
        if error.status != 404:
            raise
        create(body)
        return
    body["metadata"]["resourceVersion"] = existing.metadata.resource_version
    replace(name, body)


@contextlib.contextmanager
def installed_policies(
    api_client: client.ApiClient, manifests: list[dict[str, Any]]
) -> Iterator[None]:
    """Create ValidatingAdmissionPolicies and their bindings (in the order given); delete
    them afterwards in reverse order (bindings before their policies), skipping any gone."""
    api = client.AdmissionregistrationV1Api(api_client)
    try:
        for manifest in manifests:
            if manifest["kind"] == "ValidatingAdmissionPolicy":
                api.create_validating_admission_policy(manifest)
            else:
                api.create_validating_admission_policy_binding(manifest)
        yield
    finally:
        for manifest in reversed(manifests):
            delete = (
                api.delete_validating_admission_policy
                if manifest["kind"] == "ValidatingAdmissionPolicy"
                else api.delete_validating_admission_policy_binding
            )
            try:
                delete(manifest["metadata"]["name"])
            except ApiException as error:
                if error.status != 404:
                    raise


@contextlib.contextmanager
def registered_webhooks(
    api_client: client.ApiClient, *, url: str, ca_pem: bytes
) -> Iterator[dict[str, Any]]:
    """Register both webhook configurations for ``url``; remove them afterwards."""
    settings = webhooks.Settings(
        target=webhooks.UrlTarget(url=url),
        hush_namespace=HUSH_NAMESPACE,
        ca_bundle=base64.b64encode(ca_pem).decode("ascii"),
    )
    api = client.AdmissionregistrationV1Api(api_client)
    mutating = webhooks.build_mutating_configuration(settings)
    validating = webhooks.build_validating_configuration(settings)
    _replace_or_create(
        api.create_mutating_webhook_configuration,
        api.replace_mutating_webhook_configuration,
        api.read_mutating_webhook_configuration,
        mutating,
    )
    _replace_or_create(
        api.create_validating_webhook_configuration,
        api.replace_validating_webhook_configuration,
        api.read_validating_webhook_configuration,
        validating,
    )
    try:
        yield {"mutating": mutating, "validating": validating}
    finally:
        for delete, name in (
            (api.delete_mutating_webhook_configuration, webhooks.MUTATING_CONFIGURATION),
            (api.delete_validating_webhook_configuration, webhooks.VALIDATING_CONFIGURATION),
        ):
            with contextlib.suppress(ApiException):
                delete(name)


@contextlib.contextmanager
def operator_with_webhooks(
    api_client: client.ApiClient, kubeconfig: Path, directory: Path, *extra: str
) -> Iterator[dict[str, Any]]:
    """The operator (accountant + webhooks on loopback), webhooks registered."""
    cert, key = operator_process.write_serving_certificate(directory)
    accountant_port = operator_process.free_port()
    webhook_port = operator_process.free_port()
    metrics_port = operator_process.free_port()
    accountant_url = f"https://127.0.0.1:{accountant_port}"
    webhook_url = f"https://127.0.0.1:{webhook_port}"
    with (
        operator_process.running_operator(
            kubeconfig,
            directory / "operator.log",
            f"--accountant-port={accountant_port}",
            "--accountant-host=127.0.0.1",
            f"--accountant-tls-cert={cert}",
            f"--accountant-tls-key={key}",
            f"--webhook-port={webhook_port}",
            "--webhook-host=127.0.0.1",
            f"--webhook-tls-cert={cert}",
            f"--webhook-tls-key={key}",
            f"--sidecar-image={SIDECAR_IMAGE}",
            f"--sidecar-accountant-url={accountant_url}",
            f"--sidecar-ca-file={cert}",
            f"--metrics-port={metrics_port}",
            *extra,
        ) as process,
        registered_webhooks(api_client, url=webhook_url, ca_pem=cert.read_bytes()) as registered,
    ):
        yield {
            "mutating": registered["mutating"]["metadata"]["name"],
            "validating": registered["validating"]["metadata"]["name"],
            "process": process,
            "accountant_url": accountant_url,
            "webhook_url": webhook_url,
            "metrics_url": f"http://127.0.0.1:{metrics_port}/metrics",
            "cert": cert,
        }


def admission_requests(metrics_url: str, webhook: str, decision: str | None = None) -> float:
    """``hush_admission_requests_total`` of one operator for a webhook path (and decision)."""
    with urllib.request.urlopen(metrics_url, timeout=10) as reply:  # noqa: S310
        text = reply.read().decode()
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("hush_admission_requests_total{")
        and f'webhook="{webhook}"' in line
        and (decision is None or f'decision="{decision}"' in line)
    )
