"""The webhook serving certificates: a CA, a leaf for the webhook Service, and when to renew.

The apiserver calls the admission webhooks over HTTPS and verifies the server against the
``caBundle`` of each webhook configuration. In the default mode (``--webhook-certs
self-signed``) the operator is its own CA. This module owns that mechanism as pure functions:
it builds the CA and the serving leaf, decides what (if anything) is renewed at ``now``,
converts the state to and from the data of one Secret, and builds the webhook configuration
bodies with the right ``caBundle``. It does no I/O and reads no clock: ``now`` is passed in.
``hush.webhook.certificates`` reads and writes the Secret, the files and the TLS context.

Lifetimes (``Lifetimes``; docs/design/0012-webhook-certificates.md)
------------------------------------------------------------------
- The CA lives ten years; the leaf 90 days and is renewed when less than a third of its
  lifetime remains (30 days: cert-manager's default for a 90-day certificate). A renewed
  leaf comes from the same CA, so the caBundle does not change and a replica still serving
  the previous leaf stays trusted until it picks up the new one.
- The CA is rotated only when less than a year of it remains, in three steps, each at least
  ``overlap`` (one hour, many keeper rounds) after the previous one, so that every replica
  and every webhook configuration has seen a step before the next one relies on it:
  1. *rotate-authority*: a new CA signs from now on; the old one is kept in the bundle
     (``ca.crt`` lists both) and still vouches for the leaf being served;
  2. *renew-leaf*: once the new CA has been trusted for ``overlap`` (and the caller saw the
     bundle published), the leaf is re-issued by the new CA;
  3. *drop-retired*: once that leaf is ``overlap`` old, the old CA leaves the bundle.

The Secret (type ``kubernetes.io/tls``, so ``kubectl`` and cert-manager users read it as
they expect): ``tls.crt``/``tls.key`` the leaf, ``ca.key`` the signing CA's key, ``ca.crt``
every CA trusted now, the signing CA first. ``ca.crt`` is therefore exactly the caBundle
and, as with cert-manager, it always verifies ``tls.crt``.

Keys are ECDSA P-256 (quick to generate, accepted by every apiserver); certificates are
backdated by one hour for clock skew, and "issued at" below means ``notBefore`` plus that hour.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime
import ipaddress
from collections.abc import Mapping
from typing import Any, Final, Literal

from cryptography import exceptions as crypto_exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

SECRET_TYPE: Final = "kubernetes.io/tls"  # noqa: S105 - a Secret type, not a password
CA_CERTIFICATE_KEY: Final = "ca.crt"
CA_PRIVATE_KEY_KEY: Final = "ca.key"
CERTIFICATE_KEY: Final = "tls.crt"
PRIVATE_KEY_KEY: Final = "tls.key"

BACKDATE: Final = datetime.timedelta(hours=1)
CA_COMMON_NAME: Final = "hush-webhook-ca"

PrivateKey = ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
WebhookKind = Literal["MutatingWebhookConfiguration", "ValidatingWebhookConfiguration"]


class InvalidCertificatesError(ValueError):
    """Secret data or PEM files that do not hold a usable certificate state."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lifetimes:
    """How long certificates live and when they are replaced (see the module docstring)."""

    authority: datetime.timedelta = datetime.timedelta(days=3650)
    leaf: datetime.timedelta = datetime.timedelta(days=90)
    # Renew the leaf when less than this fraction of its own lifetime remains.
    leaf_renew_fraction: float = 1 / 3
    # Rotate the CA when less than this much of it remains.
    authority_rotate_before: datetime.timedelta = datetime.timedelta(days=365)
    # Minimum time between the steps of a CA rotation; must be much longer than the keeper's
    # sync interval, so that every replica and webhook configuration saw the previous step.
    overlap: datetime.timedelta = datetime.timedelta(hours=1)

    def __post_init__(self) -> None:
        if not 0 < self.leaf_renew_fraction < 1:
            raise ValueError("leaf_renew_fraction must be between 0 and 1")
        if not self.leaf < self.authority_rotate_before < self.authority:
            raise ValueError(
                "Certificate lifetimes need leaf < authority_rotate_before < authority, got "
                f"{self.leaf}, {self.authority_rotate_before}, {self.authority}"
            )
        if self.overlap <= datetime.timedelta(0):
            raise ValueError("overlap must be positive")


DEFAULT_LIFETIMES: Final = Lifetimes()


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingNames:
    """What the leaf must be valid for: the webhook Service, plus extra names and addresses
    (e.g. 127.0.0.1 when the apiserver calls an operator running on its host by URL)."""

    service: str
    namespace: str
    extra_dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()

    @property
    def common_name(self) -> str:
        # The name the apiserver verifies for a service reference.
        return f"{self.service}.{self.namespace}.svc"

    @property
    def dns_names(self) -> tuple[str, ...]:
        base = f"{self.service}.{self.namespace}"
        names = (self.service, base, f"{base}.svc", f"{base}.svc.cluster.local")
        return tuple(dict.fromkeys((*names, *self.extra_dns_names)))

    def alternative_names(self) -> frozenset[x509.GeneralName]:
        names: list[x509.GeneralName] = [x509.DNSName(name) for name in self.dns_names]
        names += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in self.ip_addresses]
        return frozenset(names)


@dataclasses.dataclass(frozen=True, kw_only=True)
class Authority:
    """A CA certificate and its private key."""

    certificate: x509.Certificate
    key: PrivateKey


@dataclasses.dataclass(frozen=True, kw_only=True)
class ServingCertificates:
    """The whole state: the signing CA, CAs still trusted during a rotation, and the leaf."""

    authority: Authority
    retired_authorities: tuple[x509.Certificate, ...] = ()
    certificate: x509.Certificate
    key: PrivateKey

    @property
    def trusted_authorities(self) -> tuple[x509.Certificate, ...]:
        return (self.authority.certificate, *self.retired_authorities)

    def ca_bundle(self) -> bytes:
        """PEM of every CA trusted now, the signing CA first: the webhooks' ``caBundle``."""
        return b"".join(certificate_pem(ca) for ca in self.trusted_authorities)

    def certificate_pem(self) -> bytes:
        return certificate_pem(self.certificate)

    def key_pem(self) -> bytes:
        return private_key_pem(self.key)


# -- building ----------------------------------------------------------------------------------


def certificate_pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def private_key_pem(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _key_usage(*, certificate_signing: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=certificate_signing,
        crl_sign=certificate_signing,
        encipher_only=False,
        decipher_only=False,
    )


def build_authority(
    *, now: datetime.datetime, lifetimes: Lifetimes = DEFAULT_LIFETIMES
) -> Authority:
    """A new self-signed CA that may sign leaf certificates only."""
    key = ec.generate_private_key(ec.SECP256R1())
    # The creation time in the name tells generations apart, as in kube-apiserver's own
    # self-signed CAs ("kube-apiserver-ca@<unix time>").
    common_name = f"{CA_COMMON_NAME}@{int(now.timestamp())}"
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(now + lifetimes.authority)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(certificate_signing=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Authority(certificate=certificate, key=key)


def build_leaf(
    authority: Authority,
    names: ServingNames,
    *,
    now: datetime.datetime,
    lifetimes: Lifetimes = DEFAULT_LIFETIMES,
) -> tuple[x509.Certificate, PrivateKey]:
    """A serving certificate for ``names`` signed by ``authority``, and its new key. It never
    outlives its CA."""
    key = ec.generate_private_key(ec.SECP256R1())
    not_after = min(now + lifetimes.leaf, authority.certificate.not_valid_after_utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names.common_name)]))
        .issuer_name(authority.certificate.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - BACKDATE)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(certificate_signing=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(authority.key.public_key()),
            critical=False,
        )
        .add_extension(
            x509.SubjectAlternativeName(
                sorted(names.alternative_names(), key=lambda name: str(name.value))
            ),
            critical=False,
        )
        .sign(authority.key, hashes.SHA256())
    )
    return certificate, key


def create(
    names: ServingNames, *, now: datetime.datetime, lifetimes: Lifetimes = DEFAULT_LIFETIMES
) -> ServingCertificates:
    """A fresh CA and a leaf signed by it."""
    authority = build_authority(now=now, lifetimes=lifetimes)
    certificate, key = build_leaf(authority, names, now=now, lifetimes=lifetimes)
    return ServingCertificates(authority=authority, certificate=certificate, key=key)


# -- deciding ----------------------------------------------------------------------------------

Action = Literal["keep", "create", "renew-leaf", "rotate-authority", "drop-retired"]


@dataclasses.dataclass(frozen=True, kw_only=True)
class Decision:
    action: Action
    reason: str  # for the log line: why this action, or why nothing is done yet


def issued_at(certificate: x509.Certificate) -> datetime.datetime:
    return certificate.not_valid_before_utc + BACKDATE


def is_issued_by(certificate: x509.Certificate, authority: x509.Certificate) -> bool:
    try:
        certificate.verify_directly_issued_by(authority)
    except (ValueError, TypeError, crypto_exceptions.InvalidSignature):
        return False
    return True


def alternative_names_of(certificate: x509.Certificate) -> frozenset[x509.GeneralName]:
    try:
        extension = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
    except x509.ExtensionNotFound:
        return frozenset()
    return frozenset(extension.value)


def leaf_renewal_time(certificate: x509.Certificate, lifetimes: Lifetimes) -> datetime.datetime:
    """When less than ``leaf_renew_fraction`` of the leaf's own lifetime remains."""
    lifetime = certificate.not_valid_after_utc - certificate.not_valid_before_utc
    return certificate.not_valid_after_utc - lifetime * lifetimes.leaf_renew_fraction


def _stamp(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def decide(
    state: ServingCertificates | None,
    *,
    names: ServingNames,
    now: datetime.datetime,
    lifetimes: Lifetimes = DEFAULT_LIFETIMES,
    bundle_published: bool = True,
) -> Decision:
    """What to do with ``state`` at ``now``: at most one step per call; call again after it.

    ``bundle_published`` says whether the caller has put ``state.ca_bundle()`` into every
    webhook configuration it manages. Without that, nothing that relies on the bundle is
    done: the leaf does not move to a new CA and no retired CA is dropped.
    """
    if state is None:
        return Decision(action="create", reason="there are no serving certificates yet")
    authority = state.authority.certificate
    leaf = state.certificate
    if now >= authority.not_valid_after_utc:
        return Decision(
            action="create", reason=f"the CA expired at {_stamp(authority.not_valid_after_utc)}"
        )
    if authority.not_valid_after_utc - now < lifetimes.authority_rotate_before:
        return Decision(
            action="rotate-authority",
            reason=f"the CA expires at {_stamp(authority.not_valid_after_utc)}",
        )
    if not any(is_issued_by(leaf, ca) for ca in state.trusted_authorities):
        return Decision(action="renew-leaf", reason="the serving certificate has no trusted CA")
    if now >= leaf.not_valid_after_utc:
        return Decision(
            action="renew-leaf",
            reason=f"the serving certificate expired at {_stamp(leaf.not_valid_after_utc)}",
        )
    if alternative_names_of(leaf) != names.alternative_names():
        return Decision(
            action="renew-leaf",
            reason="the serving certificate is not for exactly "
            + ", ".join((*names.dns_names, *names.ip_addresses)),
        )
    renewal_due = now >= leaf_renewal_time(leaf, lifetimes)
    if not is_issued_by(leaf, authority):
        # Step 2 of a CA rotation: the leaf still comes from a retired CA.
        trusted_since = issued_at(authority)
        if bundle_published and now >= trusted_since + lifetimes.overlap:
            return Decision(
                action="renew-leaf", reason="the serving certificate moves to the new CA"
            )
        waiting_for = (
            "the caBundle to be published"
            if not bundle_published
            else f"{_stamp(trusted_since + lifetimes.overlap)}, one overlap after the new CA"
        )
        return Decision(
            action="keep",
            reason=f"the serving certificate moves to the new CA after {waiting_for}",
        )
    if renewal_due:
        return Decision(
            action="renew-leaf",
            reason=f"the serving certificate expires at {_stamp(leaf.not_valid_after_utc)}",
        )
    if state.retired_authorities:
        # Step 3: nobody should be serving a leaf from a retired CA any more.
        if any(now >= ca.not_valid_after_utc for ca in state.retired_authorities):
            return Decision(action="drop-retired", reason="a retired CA expired")
        if bundle_published and now >= issued_at(leaf) + lifetimes.overlap:
            return Decision(
                action="drop-retired",
                reason="the serving certificate has come from the new CA for one overlap",
            )
        return Decision(action="keep", reason="retired CAs stay trusted for one overlap")
    return Decision(action="keep", reason="the serving certificates are current")


def carry_out(
    decision: Decision,
    state: ServingCertificates | None,
    *,
    names: ServingNames,
    now: datetime.datetime,
    lifetimes: Lifetimes = DEFAULT_LIFETIMES,
) -> ServingCertificates:
    """The state after ``decision`` (as returned by ``decide`` for the same arguments)."""
    if decision.action == "create" or state is None:
        return create(names, now=now, lifetimes=lifetimes)
    if decision.action == "keep":
        return state
    if decision.action == "renew-leaf":
        certificate, key = build_leaf(state.authority, names, now=now, lifetimes=lifetimes)
        return dataclasses.replace(state, certificate=certificate, key=key)
    if decision.action == "rotate-authority":
        return dataclasses.replace(
            state,
            authority=build_authority(now=now, lifetimes=lifetimes),
            retired_authorities=state.trusted_authorities,
        )
    # drop-retired: keep only a retired CA that still vouches for the leaf (none in practice).
    kept = tuple(
        ca
        for ca in state.retired_authorities
        if now < ca.not_valid_after_utc and is_issued_by(state.certificate, ca)
    )
    return dataclasses.replace(state, retired_authorities=kept)


# -- the Secret ---------------------------------------------------------------------------------


def _encode(content: bytes) -> str:
    return base64.b64encode(content).decode("ascii")


def to_secret_data(state: ServingCertificates) -> dict[str, str]:
    """The Secret's ``data`` (base64 values)."""
    return {
        CA_CERTIFICATE_KEY: _encode(state.ca_bundle()),
        CA_PRIVATE_KEY_KEY: _encode(private_key_pem(state.authority.key)),
        CERTIFICATE_KEY: _encode(state.certificate_pem()),
        PRIVATE_KEY_KEY: _encode(state.key_pem()),
    }


def load_private_key(content: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(content, password=None)
    except (ValueError, TypeError) as error:
        raise InvalidCertificatesError(f"not a PEM private key: {error}") from error
    if not isinstance(key, ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey):
        raise InvalidCertificatesError(f"unsupported key type {type(key).__name__}")
    return key


def load_certificates(content: bytes) -> tuple[x509.Certificate, ...]:
    try:
        certificates = tuple(x509.load_pem_x509_certificates(content))
    except ValueError as error:
        raise InvalidCertificatesError(f"not PEM certificates: {error}") from error
    if not certificates:
        raise InvalidCertificatesError("no certificate in the PEM data")
    return certificates


def _public_key_bytes(value: x509.Certificate | PrivateKey) -> bytes:
    public_key = value.public_key()
    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def key_matches(certificate: x509.Certificate, key: PrivateKey) -> bool:
    return _public_key_bytes(certificate) == _public_key_bytes(key)


def check_key_pair(certificate_chain: bytes, key: bytes) -> x509.Certificate:
    """The leaf of a PEM chain, after checking that ``key`` belongs to it: loading a
    mismatched pair into a live TLS context would leave it without a usable key."""
    leaf = load_certificates(certificate_chain)[0]
    if not key_matches(leaf, load_private_key(key)):
        raise InvalidCertificatesError("the private key does not belong to the certificate")
    return leaf


def from_secret_data(data: Mapping[str, str] | None) -> ServingCertificates:
    """The state in a Secret's ``data``; ``InvalidCertificatesError`` says what is wrong."""
    data = data or {}
    missing = [
        key
        for key in (CA_CERTIFICATE_KEY, CA_PRIVATE_KEY_KEY, CERTIFICATE_KEY, PRIVATE_KEY_KEY)
        if not data.get(key)
    ]
    if missing:
        raise InvalidCertificatesError(f"missing {', '.join(missing)}")
    try:
        decoded = {key: base64.b64decode(value, validate=True) for key, value in data.items()}
    except (binascii.Error, ValueError) as error:
        raise InvalidCertificatesError(f"data is not base64: {error}") from error
    authorities = load_certificates(decoded[CA_CERTIFICATE_KEY])
    authority_key = load_private_key(decoded[CA_PRIVATE_KEY_KEY])
    if not key_matches(authorities[0], authority_key):
        raise InvalidCertificatesError(f"{CA_PRIVATE_KEY_KEY} does not belong to the first CA")
    certificate = load_certificates(decoded[CERTIFICATE_KEY])[0]
    key = load_private_key(decoded[PRIVATE_KEY_KEY])
    if not key_matches(certificate, key):
        raise InvalidCertificatesError(f"{PRIVATE_KEY_KEY} does not belong to {CERTIFICATE_KEY}")
    return ServingCertificates(
        authority=Authority(certificate=authorities[0], key=authority_key),
        retired_authorities=authorities[1:],
        certificate=certificate,
        key=key,
    )


def build_secret(
    name: str,
    namespace: str,
    state: ServingCertificates,
    *,
    labels: Mapping[str, str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    secret_type: str = SECRET_TYPE,
) -> dict[str, Any]:
    """The Secret holding ``state``. To replace an existing Secret, pass the ``metadata``
    read from the API (its resourceVersion makes the PUT a compare-and-swap) and its type
    (immutable once created)."""
    written_metadata: dict[str, Any] = {
        key: value for key, value in (metadata or {}).items() if key != "managedFields"
    }
    written_metadata.update(name=name, namespace=namespace)
    if labels:
        written_metadata["labels"] = {**(written_metadata.get("labels") or {}), **labels}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": written_metadata,
        "type": secret_type,
        "data": to_secret_data(state),
    }


# -- the webhook configurations ------------------------------------------------------------------


def with_ca_bundle(configuration: Mapping[str, Any], bundle: bytes) -> dict[str, Any] | None:
    """``configuration`` (a Mutating/ValidatingWebhookConfiguration as read) with ``bundle``
    as the ``caBundle`` of every webhook, or None when every webhook already has it. The
    metadata (and its resourceVersion) is kept, so a PUT of the result is a compare-and-swap.
    """
    encoded = _encode(bundle)
    webhooks = configuration.get("webhooks") or []
    if all((hook.get("clientConfig") or {}).get("caBundle") == encoded for hook in webhooks):
        return None
    updated = copy.deepcopy(dict(configuration))
    updated.get("metadata", {}).pop("managedFields", None)
    for hook in updated["webhooks"]:
        hook.setdefault("clientConfig", {})["caBundle"] = encoded
    return updated


def ca_bundle_of(configuration: Mapping[str, Any]) -> set[bytes]:
    """The distinct caBundles (decoded PEM) of a webhook configuration's webhooks."""
    bundles: set[bytes] = set()
    for hook in configuration.get("webhooks") or []:
        encoded = (hook.get("clientConfig") or {}).get("caBundle") or ""
        bundles.add(base64.b64decode(encoded))
    return bundles


def describe(certificate: x509.Certificate) -> str:
    """A short, loggable identity of a certificate: serial (hex) and expiry."""
    return (
        f"serial {certificate.serial_number:x}, expires {_stamp(certificate.not_valid_after_utc)}"
    )
