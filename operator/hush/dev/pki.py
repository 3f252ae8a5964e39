"""The certificates and keys of a dev cluster, made with ``cryptography``.

One CA signs everything:

- the kube-apiserver serving certificate: IP SANs 127.0.0.1 and 10.96.0.1 (the ClusterIP of
  the ``kubernetes`` Service in ``--service-cluster-ip-range``) and the ``kubernetes.default.svc``
  names, so clients that verify the in-cluster name (webhook tests, kubeconfigs rewritten for
  pods) accept it;
- a loopback serving certificate for kube-controller-manager, kube-scheduler and kwok, so their
  health endpoints can be probed with verification instead of ``verify=False``;
- client certificates, whose subject is the Kubernetes identity: the admin (group
  ``system:masters``), ``system:kube-controller-manager`` and ``system:kube-scheduler`` (so the
  bootstrap RBAC roles apply to them exactly as in kubeadm clusters) and kwok (``system:masters``:
  it patches the status of every Node and Pod).

A second CA, the front-proxy CA, signs only the apiserver's aggregation-layer client
certificate (as in kubeadm). Without ``--requestheader-client-ca-file`` the
``extension-apiserver-authentication`` ConfigMap lacks that bundle and kube-controller-manager
and kube-scheduler log "missing content for CA bundle" errors for ever.

The cluster CA also signs CertificateSigningRequests (kube-controller-manager's
``--cluster-signing-*``). The service-account key pair is a separate RSA key: the apiserver
signs tokens with it and the controller-manager puts the CA into every namespace's
``kube-root-ca.crt``.

TLS keys are ECDSA P-256, which is quick to generate; everything is valid for one year from
``now`` (backdated one hour for clock skew). Nothing here reads a clock: ``now`` is passed in.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Final, Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

APISERVER_DNS_NAMES: Final = (
    "localhost",
    "kubernetes",
    "kubernetes.default",
    "kubernetes.default.svc",
    "kubernetes.default.svc.cluster.local",
)
APISERVER_IP_ADDRESSES: Final = ("127.0.0.1", "10.96.0.1")
ADMIN_USER: Final = "hush-admin"
KWOK_USER: Final = "hush-kwok"
CONTROLLER_MANAGER_USER: Final = "system:kube-controller-manager"
SCHEDULER_USER: Final = "system:kube-scheduler"
MASTERS_GROUP: Final = "system:masters"
FRONT_PROXY_CLIENT: Final = "front-proxy-client"

_VALIDITY: Final = datetime.timedelta(days=365)
_BACKDATE: Final = datetime.timedelta(hours=1)

Usage = Literal["server", "client"]
PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both as PEM files."""

    certificate: Path
    key: Path


@dataclasses.dataclass(frozen=True)
class PkiFiles:
    """The file names of a cluster's PKI inside one directory."""

    directory: Path

    def _pair(self, stem: str) -> KeyPair:
        return KeyPair(self.directory / f"{stem}.crt", self.directory / f"{stem}.key")

    @property
    def ca(self) -> KeyPair:
        return self._pair("ca")

    @property
    def front_proxy_ca(self) -> KeyPair:
        return self._pair("front-proxy-ca")

    @property
    def front_proxy_client(self) -> KeyPair:
        return self._pair("front-proxy-client")

    @property
    def apiserver(self) -> KeyPair:
        return self._pair("apiserver")

    @property
    def loopback_serving(self) -> KeyPair:
        return self._pair("loopback-serving")

    @property
    def admin(self) -> KeyPair:
        return self._pair("admin")

    @property
    def controller_manager(self) -> KeyPair:
        return self._pair("kube-controller-manager")

    @property
    def scheduler(self) -> KeyPair:
        return self._pair("kube-scheduler")

    @property
    def kwok(self) -> KeyPair:
        return self._pair("kwok")

    @property
    def service_account_key(self) -> Path:
        return self.directory / "service-account.key"

    @property
    def service_account_public_key(self) -> Path:
        return self.directory / "service-account.pub"


@dataclasses.dataclass(frozen=True)
class CertificateAuthority:
    certificate: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _new_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def create_certificate_authority(
    *, common_name: str, now: datetime.datetime
) -> CertificateAuthority:
    """A self-signed CA that may sign leaf certificates only."""
    key = _new_tls_key()
    subject = _name(common_name)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return CertificateAuthority(certificate=certificate, key=key)


def issue_certificate(
    authority: CertificateAuthority,
    *,
    common_name: str,
    usage: Usage,
    now: datetime.datetime,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str] = (),
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by ``authority`` and its new private key."""
    key = _new_tls_key()
    extended_usage = (
        ExtendedKeyUsageOID.SERVER_AUTH if usage == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, organizations))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - _BACKDATE)
        .not_valid_after(now + _VALIDITY)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([extended_usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
    )
    alternative_names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    if alternative_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(alternative_names), critical=False
        )
    return builder.sign(authority.key, hashes.SHA256()), key


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write(path: Path, content: bytes, *, secret: bool) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if secret else 0o644)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)


def _write_pair(
    pair: KeyPair, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey
) -> None:
    _write(pair.certificate, certificate_pem(certificate), secret=False)
    _write(pair.key, private_key_pem(key), secret=True)


def write_loopback_serving_files(
    certificate_path: Path,
    key_path: Path,
    *,
    common_name: str,
    now: datetime.datetime,
    ip_addresses: Sequence[str] = ("127.0.0.1",),
) -> None:
    """A serving certificate for a host process on loopback (the accountant in e2e tests and
    the demo), signed by a throwaway CA. The certificate file holds the chain, leaf then CA,
    so clients can use the same file as their trust bundle."""
    authority = create_certificate_authority(common_name=f"{common_name}-ca", now=now)
    certificate, key = issue_certificate(
        authority, common_name=common_name, usage="server", now=now, ip_addresses=ip_addresses
    )
    chain = certificate_pem(certificate) + certificate_pem(authority.certificate)
    _write(certificate_path, chain, secret=False)
    _write(key_path, private_key_pem(key), secret=True)


def write_cluster_pki(files: PkiFiles, *, cluster_name: str, now: datetime.datetime) -> None:
    """Generate every certificate and key of a new cluster into ``files.directory``."""
    authority = create_certificate_authority(common_name=f"{cluster_name}-ca", now=now)
    _write_pair(files.ca, authority.certificate, authority.key)

    def issue(pair: KeyPair, common_name: str, usage: Usage, **extra: Sequence[str]) -> None:
        certificate, key = issue_certificate(
            authority, common_name=common_name, usage=usage, now=now, **extra
        )
        _write_pair(pair, certificate, key)

    front_proxy = create_certificate_authority(
        common_name=f"{cluster_name}-front-proxy-ca", now=now
    )
    _write_pair(files.front_proxy_ca, front_proxy.certificate, front_proxy.key)
    proxy_certificate, proxy_key = issue_certificate(
        front_proxy, common_name=FRONT_PROXY_CLIENT, usage="client", now=now
    )
    _write_pair(files.front_proxy_client, proxy_certificate, proxy_key)

    issue(
        files.apiserver,
        "kube-apiserver",
        "server",
        dns_names=APISERVER_DNS_NAMES,
        ip_addresses=APISERVER_IP_ADDRESSES,
    )
    issue(
        files.loopback_serving,
        "loopback-serving",
        "server",
        dns_names=("localhost",),
        ip_addresses=("127.0.0.1",),
    )
    issue(files.admin, ADMIN_USER, "client", organizations=(MASTERS_GROUP,))
    issue(files.controller_manager, CONTROLLER_MANAGER_USER, "client")
    issue(files.scheduler, SCHEDULER_USER, "client")
    issue(files.kwok, KWOK_USER, "client", organizations=(MASTERS_GROUP,))

    service_account_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    _write(files.service_account_key, private_key_pem(service_account_key), secret=True)
    public_key = service_account_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    _write(files.service_account_public_key, public_key, secret=False)
