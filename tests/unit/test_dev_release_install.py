"""hush.dev.release_install without a cluster: the values it installs, rendered by the chart
itself (the built helm), and the accountant's certificate Secret it makes."""

from __future__ import annotations

import base64
import datetime
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from hush.dev import binaries, errors, real_node, release_install

REPO_ROOT = Path(__file__).resolve().parents[2]
DIGEST = "sha256:" + "5" * 64
IMAGE = f"127.0.0.1:5000/hush@{DIGEST}"
NOW = datetime.datetime(2026, 12, 8, tzinfo=datetime.UTC)


def test_the_image_must_be_pinned_by_digest() -> None:
    assert release_install.split_reference(IMAGE) == ("127.0.0.1:5000/hush", DIGEST)
    for reference in ("127.0.0.1:5000/hush:1.0", "127.0.0.1:5000/hush@sha256:abc", "hush"):
        with pytest.raises(errors.DevClusterError, match="pinned by digest"):
            release_install.split_reference(reference)


def test_values_name_the_image_by_digest_two_replicas_on_the_real_node() -> None:
    values = release_install.values(image=IMAGE, release="hush")
    assert values["image"] == {"repository": "127.0.0.1:5000/hush", "digest": DIGEST}
    assert values["operator"]["replicas"] == 2
    assert values["operator"]["nodeSelector"] == real_node.NODE_LABELS
    assert values["accountant"]["tlsSecretName"] == "hush-accountant-tls"
    assert values["webhook"]["injection"]["enabled"] is True
    assert "url" not in values["webhook"]  # the apiserver calls the webhook Service
    assert release_install.values(image=IMAGE, release="demo")["accountant"] == {
        "tlsSecretName": "demo-hush-accountant-tls"
    }


def _render(tmp_path: Path, release: str) -> list[dict[str, Any]]:
    helm = binaries.locate(os.environ).path("helm")
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(release_install.values(image=IMAGE, release=release)))
    result = subprocess.run(
        [str(helm), "template", release, str(REPO_ROOT / "charts" / "hush"),
         f"--namespace={release_install.NAMESPACE}", f"--values={values_file}",
         "--kube-version=1.30.0"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]


@pytest.mark.parametrize("release", ["hush", "demo"])
def test_the_chart_renders_what_the_install_expects(tmp_path: Path, release: str) -> None:
    documents = _render(tmp_path, release)
    fullname = release_install.fullname(release)
    (deployment,) = [
        d
        for d in documents
        if d["kind"] == "Deployment" and d["metadata"]["name"] == f"{fullname}-operator"
    ]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    assert pod["nodeSelector"] == real_node.NODE_LABELS
    (container,) = pod["containers"]
    assert container["image"] == IMAGE
    arguments = container["args"]
    assert f"--sidecar-image={IMAGE}" in arguments
    # The URL the e2e expects in the injected sidecar is the chart's.
    url = release_install.accountant_url(release, release_install.NAMESPACE)
    assert f"--sidecar-accountant-url={url}" in arguments
    secret = release_install.accountant_secret(release)
    chart_values = yaml.safe_load((REPO_ROOT / "charts" / "hush" / "values.yaml").read_text())
    if release_install.operator_makes_accountant_certificate(chart_values):
        # The operator keeps the Secret the install leaves alone.
        assert f"--accountant-secret={secret}" in arguments
    else:
        # The operator reads the Secret the install made.
        volumes = {volume["name"]: volume for volume in pod["volumes"]}
        assert secret in {v.get("secret", {}).get("secretName") for v in volumes.values()}
    services = {d["metadata"]["name"] for d in documents if d["kind"] == "Service"}
    assert release_install.accountant_service(release) in services


def test_a_chart_with_accountant_certificates_has_the_operator_make_the_secret() -> None:
    managed = {"accountant": {"tlsSecretName": "x", "certificates": {"mode": "self-signed"}}}
    assert release_install.operator_makes_accountant_certificate(managed)
    assert not release_install.operator_makes_accountant_certificate(
        {"accountant": {"tlsSecretName": "x"}}
    )
    assert not release_install.operator_makes_accountant_certificate({})


def test_the_accountant_secret_is_a_leaf_for_the_service_names_signed_by_its_ca() -> None:
    secret = release_install.accountant_tls_secret(release="hush", namespace="hush-system", now=NOW)
    assert secret["type"] == "kubernetes.io/tls"
    assert secret["metadata"] == {"name": "hush-accountant-tls", "namespace": "hush-system"}
    data = {key: base64.b64decode(value) for key, value in secret["data"].items()}
    leaf = x509.load_pem_x509_certificate(data["tls.crt"])
    authority = x509.load_pem_x509_certificate(data["ca.crt"])
    names = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == [
        "hush-accountant.hush-system.svc",
        "hush-accountant.hush-system.svc.cluster.local",
    ]
    leaf.verify_directly_issued_by(authority)
    key = serialization.load_pem_private_key(data["tls.key"], password=None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    public = leaf.public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    assert key.public_key().public_numbers() == public.public_numbers()
