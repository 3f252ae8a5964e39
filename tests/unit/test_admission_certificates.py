"""The webhook serving certificates as pure functions: names, lifetimes, when to renew, the
CA rotation overlap, the Secret round trip and the caBundle of webhook configurations."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import ipaddress
import itertools
from typing import Any

import pytest
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from hush.admission import certificates

NAMES = certificates.ServingNames(service="hush-webhook", namespace="hush-system")
URL_NAMES = certificates.ServingNames(
    service="hush-webhook",
    namespace="hush-system",
    extra_dns_names=("localhost",),
    ip_addresses=("127.0.0.1", "::1"),
)
DAY = datetime.timedelta(days=1)
SECOND = datetime.timedelta(seconds=1)
LIFETIMES = certificates.DEFAULT_LIFETIMES


@pytest.fixture(scope="module")
def initial() -> certificates.ServingCertificates:
    # Key generation is the slow part; tests that only read share one state.
    return certificates.create(NAMES, now=_now())


def _now() -> datetime.datetime:
    return datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)


def _decide(
    state: certificates.ServingCertificates | None,
    now: datetime.datetime,
    *,
    names: certificates.ServingNames = NAMES,
    published: bool = True,
) -> certificates.Decision:
    return certificates.decide(state, names=names, now=now, bundle_published=published)


def _step(
    state: certificates.ServingCertificates, now: datetime.datetime, expected: str
) -> certificates.ServingCertificates:
    decision = _decide(state, now)
    assert decision.action == expected, decision
    return certificates.carry_out(decision, state, names=NAMES, now=now)


def _trusts(bundle: bytes, leaf: x509.Certificate) -> bool:
    return any(
        certificates.is_issued_by(leaf, ca) for ca in x509.load_pem_x509_certificates(bundle)
    )


# -- names and lifetimes ---------------------------------------------------------------------


def test_leaf_is_for_the_service_names_and_nothing_else(
    initial: certificates.ServingCertificates,
) -> None:
    names = certificates.alternative_names_of(initial.certificate)
    assert {name.value for name in names} == {
        "hush-webhook",
        "hush-webhook.hush-system",
        "hush-webhook.hush-system.svc",
        "hush-webhook.hush-system.svc.cluster.local",
    }
    common_name = initial.certificate.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)
    assert common_name[0].value == "hush-webhook.hush-system.svc"


def test_extra_names_and_addresses_for_url_mode() -> None:
    state = certificates.create(URL_NAMES, now=_now())
    names = certificates.alternative_names_of(state.certificate)
    assert x509.DNSName("localhost") in names
    assert x509.IPAddress(ipaddress.ip_address("127.0.0.1")) in names
    assert x509.IPAddress(ipaddress.ip_address("::1")) in names
    assert names == URL_NAMES.alternative_names()


def test_ca_and_leaf_lifetimes_and_usages(initial: certificates.ServingCertificates) -> None:
    ca, leaf = initial.authority.certificate, initial.certificate
    hour = datetime.timedelta(hours=1)
    assert ca.not_valid_before_utc == _now() - hour
    assert ca.not_valid_after_utc == _now() + datetime.timedelta(days=3650)
    assert leaf.not_valid_before_utc == _now() - hour
    assert leaf.not_valid_after_utc == _now() + datetime.timedelta(days=90)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert not leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    usages = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(usages) == [ExtendedKeyUsageOID.SERVER_AUTH]
    assert certificates.is_issued_by(leaf, ca)
    assert certificates.key_matches(leaf, initial.key)
    assert initial.ca_bundle() == certificates.certificate_pem(ca)


def test_leaf_never_outlives_its_ca() -> None:
    authority = certificates.build_authority(now=_now())
    late = authority.certificate.not_valid_after_utc - 10 * DAY
    leaf, _ = certificates.build_leaf(authority, NAMES, now=late)
    assert leaf.not_valid_after_utc == authority.certificate.not_valid_after_utc


def test_lifetimes_are_checked() -> None:
    with pytest.raises(ValueError, match="leaf < authority_rotate_before < authority"):
        certificates.Lifetimes(leaf=datetime.timedelta(days=400))
    with pytest.raises(ValueError, match="fraction"):
        certificates.Lifetimes(leaf_renew_fraction=1.5)


# -- when to renew ---------------------------------------------------------------------------


def test_nothing_yet_means_create() -> None:
    assert _decide(None, _now()).action == "create"


def test_fresh_certificates_are_kept(initial: certificates.ServingCertificates) -> None:
    assert _decide(initial, _now()).action == "keep"


def test_leaf_is_renewed_when_a_third_of_its_lifetime_remains(
    initial: certificates.ServingCertificates,
) -> None:
    leaf = initial.certificate
    lifetime = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    renew_at = leaf.not_valid_after_utc - lifetime / 3
    assert certificates.leaf_renewal_time(leaf, LIFETIMES) == renew_at
    # About 60 days in: 30 days (and a third of the backdating hour) before expiry.
    assert renew_at - _now() == datetime.timedelta(days=60, minutes=-20)
    assert _decide(initial, renew_at - SECOND).action == "keep"
    decision = _decide(initial, renew_at)
    assert decision.action == "renew-leaf"
    assert "expires at" in decision.reason


def test_renewed_leaf_comes_from_the_same_ca_so_the_bundle_does_not_change(
    initial: certificates.ServingCertificates,
) -> None:
    later = certificates.leaf_renewal_time(initial.certificate, LIFETIMES)
    renewed = _step(initial, later, "renew-leaf")
    assert renewed.certificate.serial_number != initial.certificate.serial_number
    assert not certificates.key_matches(renewed.certificate, initial.key)
    assert renewed.ca_bundle() == initial.ca_bundle()
    assert renewed.certificate.not_valid_after_utc == later + datetime.timedelta(days=90)
    assert _decide(renewed, later).action == "keep"


def test_expired_leaf_is_renewed_at_once(initial: certificates.ServingCertificates) -> None:
    decision = _decide(initial, initial.certificate.not_valid_after_utc)
    assert decision.action == "renew-leaf"


def test_changed_names_renew_the_leaf(initial: certificates.ServingCertificates) -> None:
    decision = _decide(initial, _now(), names=URL_NAMES)
    assert decision.action == "renew-leaf"
    assert "127.0.0.1" in decision.reason
    renewed = certificates.carry_out(decision, initial, names=URL_NAMES, now=_now())
    assert certificates.alternative_names_of(renewed.certificate) == (URL_NAMES.alternative_names())
    assert _decide(renewed, _now(), names=URL_NAMES).action == "keep"


def test_leaf_from_an_unknown_ca_is_renewed(initial: certificates.ServingCertificates) -> None:
    stranger = certificates.create(NAMES, now=_now())
    mixed = certificates.ServingCertificates(
        authority=initial.authority, certificate=stranger.certificate, key=stranger.key
    )
    decision = _decide(mixed, _now())
    assert decision.action == "renew-leaf"
    assert "no trusted CA" in decision.reason


def test_expired_ca_starts_over(initial: certificates.ServingCertificates) -> None:
    decision = _decide(initial, initial.authority.certificate.not_valid_after_utc)
    assert decision.action == "create"


# -- CA rotation -----------------------------------------------------------------------------


def test_ca_is_rotated_only_when_less_than_a_year_remains(
    initial: certificates.ServingCertificates,
) -> None:
    ca_expiry = initial.authority.certificate.not_valid_after_utc
    assert _decide(initial, ca_expiry - 365 * DAY - SECOND).action != "rotate-authority"
    assert _decide(initial, ca_expiry - 365 * DAY + SECOND).action == "rotate-authority"


def test_ca_rotation_keeps_every_served_leaf_trusted(
    initial: certificates.ServingCertificates,
) -> None:
    overlap = LIFETIMES.overlap
    start = initial.authority.certificate.not_valid_after_utc - 300 * DAY
    # The leaf a replica has been serving: fresh, from the old CA.
    leaf, key = certificates.build_leaf(initial.authority, NAMES, now=start)
    before = dataclasses.replace(initial, certificate=leaf, key=key)

    rotated = _step(before, start, "rotate-authority")
    assert rotated.certificate == before.certificate  # the leaf does not move yet
    assert rotated.authority.certificate != before.authority.certificate
    assert rotated.retired_authorities == (before.authority.certificate,)
    assert rotated.ca_bundle() == (
        certificates.certificate_pem(rotated.authority.certificate) + before.ca_bundle()
    )

    # The new CA signs nothing until it has been in the bundle for one overlap ...
    waiting = _decide(rotated, start + overlap - SECOND)
    assert waiting.action == "keep"
    assert "after" in waiting.reason
    # ... and the published bundle is not in doubt.
    assert _decide(rotated, start + overlap, published=False).action == "keep"
    moved = _step(rotated, start + overlap, "renew-leaf")
    assert certificates.is_issued_by(moved.certificate, moved.authority.certificate)
    assert moved.ca_bundle() == rotated.ca_bundle()

    # The old CA leaves the bundle one overlap after the leaf moved.
    assert _decide(moved, start + 2 * overlap - SECOND).action == "keep"
    assert _decide(moved, start + 2 * overlap, published=False).action == "keep"
    final = _step(moved, start + 2 * overlap, "drop-retired")
    assert final.retired_authorities == ()
    assert final.ca_bundle() == certificates.certificate_pem(moved.authority.certificate)
    assert _decide(final, start + 2 * overlap).action == "keep"

    # Between any two consecutive states, a replica serving either leaf is trusted by
    # either bundle: the webhook configurations and the replicas may lag by one step.
    states = [before, rotated, moved, final]
    for old, new in itertools.pairwise(states):
        assert _trusts(new.ca_bundle(), old.certificate), (old, new)
        assert _trusts(old.ca_bundle(), new.certificate), (old, new)


def test_an_expired_retired_ca_is_dropped(initial: certificates.ServingCertificates) -> None:
    old = certificates.build_authority(now=_now() - 3650 * DAY)
    state = certificates.ServingCertificates(
        authority=initial.authority,
        retired_authorities=(old.certificate,),
        certificate=initial.certificate,
        key=initial.key,
    )
    assert _decide(state, _now()).action == "drop-retired"


# -- the Secret ------------------------------------------------------------------------------


def _same(left: certificates.ServingCertificates, right: certificates.ServingCertificates) -> None:
    assert left.authority.certificate == right.authority.certificate
    assert certificates.private_key_pem(left.authority.key) == certificates.private_key_pem(
        right.authority.key
    )
    assert left.retired_authorities == right.retired_authorities
    assert left.certificate == right.certificate
    assert left.key_pem() == right.key_pem()


def test_secret_round_trip(initial: certificates.ServingCertificates) -> None:
    data = certificates.to_secret_data(initial)
    assert set(data) == {"ca.crt", "ca.key", "tls.crt", "tls.key"}
    assert base64.b64decode(data["ca.crt"]) == initial.ca_bundle()
    assert base64.b64decode(data["tls.crt"]) == initial.certificate_pem()
    _same(certificates.from_secret_data(data), initial)


def test_secret_round_trip_during_a_rotation(initial: certificates.ServingCertificates) -> None:
    late = initial.authority.certificate.not_valid_after_utc - 100 * DAY
    rotated = _step(initial, late, "rotate-authority")
    restored = certificates.from_secret_data(certificates.to_secret_data(rotated))
    _same(restored, rotated)
    assert len(restored.trusted_authorities) == 2


def test_build_secret_keeps_metadata_for_compare_and_swap(
    initial: certificates.ServingCertificates,
) -> None:
    read = {"name": "tls", "namespace": "ns", "resourceVersion": "42", "managedFields": [{}]}
    body = certificates.build_secret(
        "tls", "ns", initial, labels={"app.kubernetes.io/name": "hush"}, metadata=read
    )
    assert body["type"] == "kubernetes.io/tls"
    assert body["metadata"] == {
        "name": "tls",
        "namespace": "ns",
        "resourceVersion": "42",
        "labels": {"app.kubernetes.io/name": "hush"},
    }
    assert body["data"] == certificates.to_secret_data(initial)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"tls.key": None}, "missing tls.key"),
        ({"ca.crt": "not base64!"}, "not base64"),
        ({"tls.crt": base64.b64encode(b"garbage").decode()}, "not PEM certificates"),
        ({"ca.key": base64.b64encode(b"garbage").decode()}, "not a PEM private key"),
    ],
)
def test_unusable_secret_data_is_refused_with_a_reason(
    initial: certificates.ServingCertificates, change: dict[str, Any], message: str
) -> None:
    data: dict[str, Any] = {**certificates.to_secret_data(initial), **change}
    data = {key: value for key, value in data.items() if value is not None}
    with pytest.raises(certificates.InvalidCertificatesError, match=message):
        certificates.from_secret_data(data)


def test_a_key_that_does_not_belong_to_its_certificate_is_refused(
    initial: certificates.ServingCertificates,
) -> None:
    other = certificates.create(NAMES, now=_now())
    data = {**certificates.to_secret_data(initial), "tls.key": _b64(other.key_pem())}
    with pytest.raises(certificates.InvalidCertificatesError, match="does not belong"):
        certificates.from_secret_data(data)
    with pytest.raises(certificates.InvalidCertificatesError, match="does not belong"):
        certificates.check_key_pair(initial.certificate_pem(), other.key_pem())
    leaf = certificates.check_key_pair(initial.certificate_pem(), initial.key_pem())
    assert leaf == initial.certificate


def _b64(content: bytes) -> str:
    return base64.b64encode(content).decode()


# -- caBundle in webhook configurations ------------------------------------------------------


def _configuration(*bundles: str | None) -> dict[str, Any]:
    hooks = []
    for index, bundle in enumerate(bundles):
        client_config: dict[str, Any] = {"url": f"https://127.0.0.1:9443/{index}"}
        if bundle is not None:
            client_config["caBundle"] = bundle
        hooks.append({"name": f"hook{index}.hush.dev", "clientConfig": client_config})
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingWebhookConfiguration",
        "metadata": {"name": "hush-validator", "resourceVersion": "7", "managedFields": [{}]},
        "webhooks": hooks,
    }


def test_ca_bundle_goes_into_every_webhook(initial: certificates.ServingCertificates) -> None:
    bundle = initial.ca_bundle()
    read = _configuration(None, "c3RhbGU=")
    updated = certificates.with_ca_bundle(read, bundle)
    assert updated is not None
    assert [hook["clientConfig"]["caBundle"] for hook in updated["webhooks"]] == [_b64(bundle)] * 2
    assert updated["webhooks"][0]["clientConfig"]["url"] == "https://127.0.0.1:9443/0"
    assert updated["metadata"] == {"name": "hush-validator", "resourceVersion": "7"}
    assert "caBundle" not in read["webhooks"][0]["clientConfig"]  # the input is not changed
    assert certificates.ca_bundle_of(updated) == {bundle}


def test_ca_bundle_already_right_means_no_write(
    initial: certificates.ServingCertificates,
) -> None:
    bundle = _b64(initial.ca_bundle())
    assert certificates.with_ca_bundle(_configuration(bundle, bundle), initial.ca_bundle()) is None
