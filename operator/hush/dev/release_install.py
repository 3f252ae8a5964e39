"""Hush's chart installed on a real-node cluster, with the image built here, by digest.

``hush dev up --real-node`` gives a node that runs containers and a registry on 127.0.0.1
(``hush.dev.registry``); ``hush.dev.image_build`` pushes Hush's image there. This module
installs ``charts/hush`` onto that cluster exactly as a user would on theirs: the control
plane cache's ``helm``, ``image.repository``/``image.digest`` naming the pushed image (so the
operator and every injected sidecar run the reviewed digest, invariant 6), two operator
replicas, sidecar injection on, the webhooks reached through their Service (no
``webhook.url``), pods pinned to the real node.

The accountant's serving certificate: a chart with ``accountant.certificates`` has the
operator make and renew it (self-signed, the default), so nothing is made here. A chart
without it says "create it" (``accountant.tlsSecretName``): then this module makes the
documented Secret once, ``<fullname>-accountant-tls`` of type ``kubernetes.io/tls`` with
``ca.crt`` (a private CA and a leaf for ``<fullname>-accountant.<namespace>.svc`` and its
``cluster.local`` form); an existing Secret is kept, as ``hack/e2e-kind.sh`` does.

CRDs that exist already (``hush dev up`` may have applied them) are adopted by the release
(Helm's ownership label and annotations), as docs/operating.md describes for upgrades.

Run it as ``python -m hush.dev.release_install --name CLUSTER`` (after ``image_build``, or it
builds the images itself; cached images cost about a second): it prints the release as JSON.
``--uninstall`` removes the release (the CRDs stay, as the chart keeps them).
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import yaml

from hush.api import crds
from hush.dev import binaries, cluster, errors, image_build, layout, pki, real_node

logger = logging.getLogger(__name__)

NAMESPACE: Final = "hush-system"
RELEASE: Final = "hush"
REPLICAS: Final = 2
HELM_TIMEOUT: Final = "5m"
_COMMAND_TIMEOUT_SECONDS: Final = 420.0
# The dev cluster's admin (pki.ADMIN_USER) is in system:masters; the chart lets only the
# operator and these groups change a namespace's hush.dev/enforcement label.
ENFORCEMENT_LABEL_GROUPS: Final = (pki.MASTERS_GROUP,)
PSS_ENFORCE_LABEL: Final = "pod-security.kubernetes.io/enforce"


def fullname(release: str) -> str:
    """The chart's ``hush.fullname``."""
    return release if "hush" in release else f"{release}-hush"


def accountant_service(release: str) -> str:
    return f"{fullname(release)}-accountant"


def accountant_secret(release: str) -> str:
    return f"{fullname(release)}-accountant-tls"


def accountant_url(release: str, namespace: str, port: int = 8443) -> str:
    """Where injected sidecars reach the accountant: its Service's DNS name (the chart's)."""
    return f"https://{accountant_service(release)}.{namespace}.svc:{port}"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Release:
    """An installed release: where, which image, and how long the install took."""

    namespace: str
    name: str
    image: str  # <registry>/hush@sha256:...
    accountant_secret: str
    seconds: float

    @property
    def fullname(self) -> str:
        return fullname(self.name)

    def to_json(self) -> dict[str, Any]:
        return {
            "release": f"{self.namespace}/{self.name}",
            "fullname": self.fullname,
            "image": self.image,
            "accountantSecret": self.accountant_secret,
            "accountantUrl": accountant_url(self.name, self.namespace),
            "seconds": round(self.seconds, 1),
        }


def split_reference(reference: str) -> tuple[str, str]:
    """``<registry>/<repository>@sha256:<hex>`` → (``<registry>/<repository>``, digest)."""
    repository, separator, digest = reference.partition("@")
    if not separator or not digest.startswith("sha256:") or len(digest) != len("sha256:") + 64:
        raise errors.DevClusterError(f"Not an image pinned by digest: {reference}")
    return repository, digest


def values(*, image: str, release: str, replicas: int = REPLICAS) -> dict[str, Any]:
    """The chart values of this install (what differs from ``charts/hush/values.yaml``)."""
    repository, digest = split_reference(image)
    return {
        "image": {"repository": repository, "digest": digest},
        "operator": {
            "replicas": replicas,
            # Kwok's nodes are tainted already; the selector says where these pods must run.
            "nodeSelector": dict(real_node.NODE_LABELS),
        },
        "accountant": {"tlsSecretName": accountant_secret(release)},
        "webhook": {"injection": {"enabled": True}},
        "admissionPolicies": {"enforcementLabelGroups": list(ENFORCEMENT_LABEL_GROUPS)},
    }


def operator_makes_accountant_certificate(chart_values: Mapping[str, Any]) -> bool:
    """Whether this chart has the operator (or cert-manager) make the accountant's Secret.

    Charts with ``accountant.certificates`` do (the default mode is self-signed, kept by the
    operator; a hand-made Secret would lack the CA key it keeps there); older charts need the
    Secret made beforehand (``accountant_tls_secret``)."""
    accountant = chart_values.get("accountant") or {}
    return isinstance(accountant, Mapping) and "certificates" in accountant


def accountant_tls_secret(
    *, release: str, namespace: str, now: datetime.datetime
) -> dict[str, Any]:
    """The Secret the chart expects: a leaf for the accountant Service's names, its CA."""
    service = accountant_service(release)
    authority = pki.create_certificate_authority(
        common_name=f"{fullname(release)} accountant CA", now=now
    )
    certificate, key = pki.issue_certificate(
        authority,
        common_name=f"{service}.{namespace}.svc",
        usage="server",
        now=now,
        dns_names=(f"{service}.{namespace}.svc", f"{service}.{namespace}.svc.cluster.local"),
    )

    def encoded(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/tls",
        "metadata": {"name": accountant_secret(release), "namespace": namespace},
        "data": {
            "tls.crt": encoded(pki.certificate_pem(certificate)),
            "tls.key": encoded(pki.private_key_pem(key)),
            "ca.crt": encoded(pki.certificate_pem(authority.certificate)),
        },
    }


# -- the cluster --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Tools:
    kubectl: Path
    helm: Path
    kubeconfig: Path
    helm_home: Path

    def run(self, tool: str, arguments: Sequence[str], *, stdin: str | None = None) -> str:
        binary = self.kubectl if tool == "kubectl" else self.helm
        environment = {
            **os.environ,
            # Never the user's helm cache, config or repositories.
            "HELM_CACHE_HOME": str(self.helm_home / "cache"),
            "HELM_CONFIG_HOME": str(self.helm_home / "config"),
            "HELM_DATA_HOME": str(self.helm_home / "data"),
        }
        result = subprocess.run(
            [str(binary), f"--kubeconfig={self.kubeconfig}", *arguments],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=_COMMAND_TIMEOUT_SECONDS,
            env=environment,
            check=False,
        )
        if result.returncode != 0:
            raise errors.DevClusterError(
                f"{tool} {' '.join(arguments)} failed (exit {result.returncode}):\n"
                + result.stderr.strip()
            )
        return result.stdout


def _tools(name: str, environ: Mapping[str, str]) -> tuple[_Tools, layout.ClusterLayout]:
    cluster_layout = layout.layout_for(name, environ)
    bin_dir = cluster.bin_dir(name=name, environ=environ)
    if bin_dir is None or not cluster_layout.kubeconfig.is_file():
        raise errors.DevClusterError(
            f"Cluster {name} is not up: run `hush dev up --real-node --name {name}`"
        )
    found = binaries.Binaries(bin_dir)
    tools = _Tools(
        kubectl=found.kubectl,
        helm=found.path("helm"),
        kubeconfig=cluster_layout.kubeconfig,
        helm_home=cluster_layout.state_dir / "helm",
    )
    return tools, cluster_layout


def _adopt_crds(tools: _Tools, *, release: str, namespace: str) -> None:
    existing = set(tools.run("kubectl", ["get", "crd", "--output=name"]).split())
    for manifest in crds.all_crds():
        crd = f"customresourcedefinition.apiextensions.k8s.io/{manifest['metadata']['name']}"
        if crd not in existing:
            continue  # the release creates it
        tools.run("kubectl", ["label", "--overwrite", crd, "app.kubernetes.io/managed-by=Helm"])
        tools.run(
            "kubectl",
            [
                "annotate",
                "--overwrite",
                crd,
                f"meta.helm.sh/release-name={release}",
                f"meta.helm.sh/release-namespace={namespace}",
            ],
        )


def install(
    name: str,
    environ: Mapping[str, str],
    *,
    image: str,
    namespace: str = NAMESPACE,
    release: str = RELEASE,
    replicas: int = REPLICAS,
) -> Release:
    """``helm upgrade --install`` of the chart with ``image`` (by digest); waits for Ready."""
    began = time.monotonic()
    tools, cluster_layout = _tools(name, environ)
    namespace_manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        # The chart's pods meet the restricted Pod Security Standard: enforced, so a change
        # that breaks it fails the install instead of going unnoticed.
        "metadata": {"name": namespace, "labels": {PSS_ENFORCE_LABEL: "restricted"}},
    }
    tools.run("kubectl", ["apply", "--filename=-"], stdin=json.dumps(namespace_manifest))
    secret = accountant_secret(release)
    chart = binaries.repository_root() / "charts" / "hush"
    present = tools.run(
        "kubectl",
        ["get", "secret", f"--namespace={namespace}", "--ignore-not-found", "--output=name"],
    )
    if operator_makes_accountant_certificate(yaml.safe_load((chart / "values.yaml").read_text())):
        logger.info("The operator makes the accountant's certificate (Secret %s)", secret)
    elif f"secret/{secret}" not in present.split():
        manifest = accountant_tls_secret(
            release=release, namespace=namespace, now=datetime.datetime.now(datetime.UTC)
        )
        tools.run("kubectl", ["create", "--filename=-"], stdin=json.dumps(manifest))
        logger.info("Created the accountant's serving certificate (Secret %s)", secret)
    _adopt_crds(tools, release=release, namespace=namespace)
    values_file = cluster_layout.state_dir / "release" / f"{release}-values.yaml"
    values_file.parent.mkdir(parents=True, exist_ok=True)
    values_file.write_text(
        yaml.safe_dump(values(image=image, release=release, replicas=replicas), sort_keys=False)
    )
    logger.info("Installing %s into %s with %s", chart, namespace, image)
    tools.run(
        "helm",
        [
            "upgrade", "--install", release, str(chart), f"--namespace={namespace}",
            f"--values={values_file}", "--wait", f"--timeout={HELM_TIMEOUT}",
        ],
    )  # fmt: skip
    return Release(
        namespace=namespace,
        name=release,
        image=image,
        accountant_secret=secret,
        seconds=time.monotonic() - began,
    )


def uninstall(
    name: str, environ: Mapping[str, str], *, namespace: str = NAMESPACE, release: str = RELEASE
) -> None:
    """``helm uninstall`` (the CRDs stay: the chart keeps them) and the release namespace."""
    tools, _ = _tools(name, environ)
    tools.run(
        "helm",
        ["uninstall", release, f"--namespace={namespace}", "--ignore-not-found", "--wait",
         f"--timeout={HELM_TIMEOUT}"],
    )  # fmt: skip
    tools.run("kubectl", ["delete", "namespace", namespace, "--ignore-not-found", "--wait=false"])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m hush.dev.release_install",
        description="Install the chart on a real-node cluster with the image built here.",
    )
    parser.add_argument("--name", default="hush", help="the cluster (default: hush)")
    parser.add_argument("--namespace", default=NAMESPACE)
    parser.add_argument("--release", default=RELEASE)
    parser.add_argument("--replicas", type=int, default=REPLICAS)
    parser.add_argument("--uninstall", action="store_true", help="remove the release instead")
    arguments = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if arguments.uninstall:
            uninstall(
                arguments.name, os.environ, namespace=arguments.namespace, release=arguments.release
            )
            return 0
        images = image_build.ensure_for_cluster(arguments.name, os.environ)
        installed = install(
            arguments.name,
            os.environ,
            image=images.hush.reference,
            namespace=arguments.namespace,
            release=arguments.release,
            replicas=arguments.replicas,
        )
    except errors.DevClusterError as error:
        print(error, file=sys.stderr)
        return 1
    print(json.dumps(installed.to_json(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
