"""The certificate keeper in process: in-memory stores that behave like the API (create
conflicts, compare-and-swap on resourceVersion), a fake clock, and a real TLS server on
loopback to show that a context reloaded in place serves the new certificate to new
connections while open ones keep working."""

from __future__ import annotations

import asyncio
import copy
import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from cryptography import x509

from hush.admission import certificates as pure
from hush.kube import client
from hush.webhook import certificates

NAMES = pure.ServingNames(
    service="hush-webhook", namespace="hush-system", ip_addresses=("127.0.0.1",)
)
MUTATING = certificates.WebhookConfigurationRef(
    kind="MutatingWebhookConfiguration", name="hush-injector"
)
VALIDATING = certificates.WebhookConfigurationRef(
    kind="ValidatingWebhookConfiguration", name="hush-validator"
)


class FakeSecrets:
    """Secrets as the apiserver keeps them; ``pause`` makes every call yield, so that two
    sources racing interleave their reads and writes."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.writes = 0
        self.conflicts = 0

    async def _pause(self) -> None:
        await asyncio.sleep(0)

    def _stored(self, body: dict[str, Any]) -> dict[str, Any]:
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        return stored

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        await self._pause()
        found = self.objects.get((namespace, name))
        return copy.deepcopy(found) if found is not None else None

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._pause()
        key = (namespace, body["metadata"]["name"])
        if key in self.objects:
            self.conflicts += 1
            raise client.ConflictError("exists")
        self.objects[key] = self._stored(body)
        return copy.deepcopy(self.objects[key])

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        await self._pause()
        current = self.objects.get((namespace, name))
        if current is None:
            raise client.ObjectGoneError("gone")
        if body["metadata"].get("resourceVersion") != current["metadata"]["resourceVersion"]:
            self.conflicts += 1
            raise client.ConflictError("changed")
        self.objects[(namespace, name)] = self._stored(body)
        return copy.deepcopy(self.objects[(namespace, name)])


class FakeConfigurations:
    def __init__(self, *references: certificates.WebhookConfigurationRef) -> None:
        self.objects: dict[tuple[str, str], dict[str, Any]] = {}
        self.version = 0
        self.writes = 0
        for reference in references:
            self.add(reference)

    def add(self, reference: certificates.WebhookConfigurationRef) -> None:
        self.version += 1
        self.objects[(reference.kind, reference.name)] = {
            "kind": reference.kind,
            "metadata": {"name": reference.name, "resourceVersion": str(self.version)},
            "webhooks": [
                {"name": "a.hush.dev", "clientConfig": {"url": "https://127.0.0.1:1/a"}},
                {"name": "b.hush.dev", "clientConfig": {"url": "https://127.0.0.1:1/b"}},
            ],
        }

    def bundles(self, reference: certificates.WebhookConfigurationRef) -> set[bytes]:
        return pure.ca_bundle_of(self.objects[(reference.kind, reference.name)])

    async def read(self, kind: str, name: str) -> dict[str, Any] | None:
        found = self.objects.get((kind, name))
        return copy.deepcopy(found) if found is not None else None

    async def replace(self, kind: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        current = self.objects[(kind, name)]
        if body["metadata"]["resourceVersion"] != current["metadata"]["resourceVersion"]:
            raise client.ConflictError("changed")
        self.version += 1
        self.writes += 1
        stored = copy.deepcopy(body)
        stored["metadata"]["resourceVersion"] = str(self.version)
        self.objects[(kind, name)] = stored
        return copy.deepcopy(stored)


class Clock:
    def __init__(self, start: datetime.datetime | None = None) -> None:
        self.now = start or datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)

    def __call__(self) -> datetime.datetime:
        return self.now


def _source(
    secrets: FakeSecrets,
    configurations: FakeConfigurations,
    lifetimes: pure.Lifetimes = pure.DEFAULT_LIFETIMES,
) -> certificates.SelfSignedSource:
    return certificates.SelfSignedSource(
        secrets,
        configurations,
        names=NAMES,
        secret_name="hush-webhook-tls",
        webhook_configurations=(MUTATING, VALIDATING),
        lifetimes=lifetimes,
    )


def _secret_state(secrets: FakeSecrets) -> pure.ServingCertificates:
    return pure.from_secret_data(secrets.objects[("hush-system", "hush-webhook-tls")]["data"])


async def test_replicas_racing_converge_on_one_ca(tmp_path: Path) -> None:
    secrets, configurations = FakeSecrets(), FakeConfigurations(MUTATING, VALIDATING)
    clock = Clock()
    keepers = [
        certificates.Keeper(
            _source(secrets, configurations), directory=tmp_path / str(index), clock=clock
        )
        for index in range(3)
    ]
    await asyncio.gather(*(keeper.sync() for keeper in keepers))
    stored = _secret_state(secrets)
    assert secrets.conflicts >= 1  # they did race
    assert secrets.writes == 1  # and only one CA was ever written
    for keeper in keepers:
        assert keeper.served == certificates.KeyPair(stored.certificate_pem(), stored.key_pem())
        assert keeper.certificate_file.read_bytes() == stored.certificate_pem()
        assert (keeper.directory / "ca.crt").read_bytes() == stored.ca_bundle()
        assert keeper.key_file.stat().st_mode & 0o077 == 0
    assert configurations.bundles(MUTATING) == {stored.ca_bundle()}
    assert configurations.bundles(VALIDATING) == {stored.ca_bundle()}


async def test_renewal_by_one_replica_reaches_the_other(tmp_path: Path) -> None:
    secrets, configurations = FakeSecrets(), FakeConfigurations(MUTATING, VALIDATING)
    clock = Clock()
    first = certificates.Keeper(
        _source(secrets, configurations), directory=tmp_path / "first", clock=clock
    )
    second = certificates.Keeper(
        _source(secrets, configurations), directory=tmp_path / "second", clock=clock
    )
    assert await first.sync()
    assert await second.sync()
    assert not await second.sync()  # nothing changed: no reload
    initial = _secret_state(secrets)
    writes = configurations.writes

    clock.now = pure.leaf_renewal_time(initial.certificate, pure.DEFAULT_LIFETIMES)
    assert await first.sync()
    renewed = _secret_state(secrets)
    assert renewed.certificate != initial.certificate
    assert renewed.authority.certificate == initial.authority.certificate
    assert configurations.writes == writes  # same CA: the caBundle is not touched
    assert await second.sync()
    assert second.served == first.served


async def test_missing_webhook_configuration_is_retried_soon(tmp_path: Path) -> None:
    secrets, configurations = FakeSecrets(), FakeConfigurations(MUTATING)
    keeper = certificates.Keeper(
        _source(secrets, configurations), directory=tmp_path, clock=Clock()
    )
    await keeper.sync()
    assert keeper.served is not None
    assert not keeper._settled  # the validating configuration is not there yet
    configurations.add(VALIDATING)
    await keeper.sync()
    assert keeper._settled
    assert configurations.bundles(VALIDATING) == {_secret_state(secrets).ca_bundle()}


async def test_unusable_secret_is_replaced_keeping_its_type(tmp_path: Path) -> None:
    secrets, configurations = FakeSecrets(), FakeConfigurations()
    await secrets.create(
        "hush-system",
        {
            "metadata": {"name": "hush-webhook-tls", "namespace": "hush-system"},
            "type": "Opaque",  # immutable in the API
            "data": {},
        },
    )
    keeper = certificates.Keeper(
        _source(secrets, configurations), directory=tmp_path, clock=Clock()
    )
    await keeper.sync()
    assert keeper.served is not None
    assert keeper.served.certificate == _secret_state(secrets).certificate_pem()
    assert secrets.objects[("hush-system", "hush-webhook-tls")]["type"] == "Opaque"


def test_sync_interval_must_be_well_under_the_overlap(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="quarter"):
        certificates.Keeper(
            _source(FakeSecrets(), FakeConfigurations()), directory=tmp_path, interval=3600
        )


# -- reloading in place, on a live server ------------------------------------------------------


@pytest.fixture
async def tls_server(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    # The TLS client checks validity against the real clock, so this fake clock starts at
    # the real now, and leaves live two hours: the renewal is due one hour in, and the
    # renewed leaf (backdated one hour) is valid at once.
    secrets, configurations = FakeSecrets(), FakeConfigurations()
    clock = Clock(datetime.datetime.now(datetime.UTC))
    lifetimes = pure.Lifetimes(leaf=datetime.timedelta(hours=2))
    keeper = certificates.Keeper(
        _source(secrets, configurations, lifetimes), directory=tmp_path / "served", clock=clock
    )
    await keeper.start()

    async def hello(_: web.Request) -> web.Response:
        return web.Response(text="hello")

    app = web.Application()
    app.router.add_get("/", hello)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=keeper.loaded_ssl_context())
    await site.start()
    port = runner.addresses[0][1]
    yield {"keeper": keeper, "clock": clock, "port": port, "secrets": secrets}
    await runner.cleanup()
    await keeper.stop()


class Connection:
    """One HTTP/1.1 keep-alive connection over TLS."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, bundle: bytes) -> Connection:
        context = ssl.create_default_context(cadata=bundle.decode())
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
        )
        return cls(reader, writer)

    def peer_certificate(self) -> x509.Certificate:
        der = self.writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
        return x509.load_der_x509_certificate(der)

    async def get(self) -> str:
        self.writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: keep-alive\r\n\r\n")
        await self.writer.drain()
        head = await self.reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        return (await self.reader.readexactly(length)).decode()

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_reloaded_context_serves_new_connections_and_keeps_open_ones(
    tls_server: dict[str, Any],
) -> None:
    keeper: certificates.Keeper = tls_server["keeper"]
    clock: Clock = tls_server["clock"]
    port: int = tls_server["port"]
    before = _secret_state(tls_server["secrets"])
    bundle = before.ca_bundle()

    old = await Connection.open(port, bundle)
    assert await old.get() == "hello"
    assert old.peer_certificate() == before.certificate

    clock.now = pure.leaf_renewal_time(before.certificate, pure.DEFAULT_LIFETIMES)
    assert clock.now - datetime.timedelta(hours=1) <= datetime.datetime.now(datetime.UTC)
    assert await keeper.sync()
    after = _secret_state(tls_server["secrets"])
    assert after.certificate != before.certificate

    new = await Connection.open(port, bundle)
    assert await new.get() == "hello"
    assert new.peer_certificate() == after.certificate
    # The connection opened before the reload still answers, with the certificate it had.
    assert await old.get() == "hello"
    assert old.peer_certificate() == before.certificate
    await old.close()
    await new.close()


async def test_a_torn_file_pair_is_refused_and_the_old_certificate_stays(
    tmp_path: Path,
) -> None:
    first = pure.create(NAMES, now=Clock()())
    second = pure.create(NAMES, now=Clock()())
    cert_file, key_file = tmp_path / "tls.crt", tmp_path / "tls.key"
    cert_file.write_bytes(first.certificate_pem())
    key_file.write_bytes(first.key_pem())
    keeper = certificates.Keeper(
        certificates.FileSource(cert_file, key_file), directory=tmp_path / "served"
    )
    await keeper.sync()

    cert_file.write_bytes(second.certificate_pem())  # the key is not there yet
    with pytest.raises(pure.InvalidCertificatesError, match="does not belong"):
        await keeper.sync()
    assert keeper.served == certificates.KeyPair(first.certificate_pem(), first.key_pem())
    assert keeper.certificate_file.read_bytes() == first.certificate_pem()

    key_file.write_bytes(second.key_pem())
    assert await keeper.sync()
    assert keeper.certificate_file.read_bytes() == second.certificate_pem()


# -- the accountant's certificate: the same keeper, its CA handed to the publisher -------------

ACCOUNTANT_NAMES = pure.ServingNames(service="hush-accountant", namespace="hush-system")


def _accountant_keeper(
    secrets: FakeSecrets, clock: Clock, directory: Path, published: list[bytes], *, fail: int = 0
) -> certificates.Keeper:
    failures = [fail]

    async def publish(bundle: bytes) -> None:
        if failures[0] > 0:
            failures[0] -= 1
            raise RuntimeError("apiserver unreachable")
        published.append(bundle)

    source = certificates.SelfSignedSource(
        secrets,
        FakeConfigurations(),
        names=ACCOUNTANT_NAMES,
        secret_name="hush-accountant-tls",
        on_ca_bundle=publish,
    )
    return certificates.Keeper(
        source, directory=directory, clock=clock, description="accountant", record_expiry=None
    )


def _accountant_state(secrets: FakeSecrets) -> pure.ServingCertificates:
    return pure.from_secret_data(secrets.objects[("hush-system", "hush-accountant-tls")]["data"])


async def test_the_accountant_ca_is_published_once_and_leaf_renewals_keep_it(
    tmp_path: Path,
) -> None:
    secrets, clock, published = FakeSecrets(), Clock(), []
    keeper = _accountant_keeper(secrets, clock, tmp_path, published)
    assert await keeper.sync()
    created = _accountant_state(secrets)
    assert published == [created.ca_bundle()]
    assert keeper.ca_bundle() == created.ca_bundle()
    leaf = x509.load_pem_x509_certificate(keeper.certificate_file.read_bytes())
    assert pure.alternative_names_of(leaf) == ACCOUNTANT_NAMES.alternative_names()

    assert not await keeper.sync()
    clock.now = pure.leaf_renewal_time(created.certificate, pure.DEFAULT_LIFETIMES)
    assert await keeper.sync()  # a new leaf is served ...
    renewed = _accountant_state(secrets)
    assert renewed.certificate != created.certificate
    assert renewed.authority.certificate == created.authority.certificate
    assert published == [created.ca_bundle()]  # ... and the sidecars' CA does not change


async def test_a_rotated_accountant_ca_is_published_before_a_leaf_it_signed_is_served(
    tmp_path: Path,
) -> None:
    secrets, clock, published = FakeSecrets(), Clock(), []
    keeper = _accountant_keeper(secrets, clock, tmp_path, published)
    await keeper.sync()
    first = _accountant_state(secrets)
    lifetimes = pure.DEFAULT_LIFETIMES
    clock.now = first.authority.certificate.not_valid_after_utc - lifetimes.authority_rotate_before
    served: list[bytes] = []
    for _ in range(4):  # rotate-authority, renew-leaf, drop-retired, each an overlap apart
        await keeper.sync()
        assert keeper.served is not None
        served.append(keeper.served.certificate)
        leaf = x509.load_pem_x509_certificate(keeper.served.certificate)
        # Whatever leaf is served, the last bundle the sidecars got verifies it.
        assert any(
            pure.is_issued_by(leaf, authority)
            for authority in pure.load_certificates(published[-1])
        )
        clock.now += lifetimes.overlap + datetime.timedelta(minutes=1)
    final = _accountant_state(secrets)
    assert final.authority.certificate != first.authority.certificate
    assert published[0] == first.ca_bundle()
    assert published[-1] == final.ca_bundle()
    assert len(published) == 3  # old, old+new, new


async def test_while_the_new_ca_cannot_be_published_the_leaf_stays_on_the_old_ca(
    tmp_path: Path,
) -> None:
    secrets, clock, published = FakeSecrets(), Clock(), []
    broken = [False]

    async def publish(bundle: bytes) -> None:
        if broken[0]:
            raise RuntimeError("apiserver unreachable")
        published.append(bundle)

    source = certificates.SelfSignedSource(
        secrets,
        FakeConfigurations(),
        names=ACCOUNTANT_NAMES,
        secret_name="hush-accountant-tls",
        on_ca_bundle=publish,
    )
    keeper = certificates.Keeper(source, directory=tmp_path, clock=clock, record_expiry=None)
    await keeper.sync()
    first = _accountant_state(secrets)
    lifetimes = pure.DEFAULT_LIFETIMES
    clock.now = first.authority.certificate.not_valid_after_utc - lifetimes.authority_rotate_before
    broken[0] = True
    for _ in range(3):  # a new CA signs from now on, but the sidecars never got it
        await keeper.sync()
        clock.now += lifetimes.overlap + datetime.timedelta(minutes=1)
    assert keeper.served is not None
    leaf = x509.load_pem_x509_certificate(keeper.served.certificate)
    assert pure.is_issued_by(leaf, first.authority.certificate)
    assert published == [first.ca_bundle()]
    broken[0] = False
    await keeper.sync()  # published now; the leaf moves an overlap later
    assert len(published) == 2
    clock.now += lifetimes.overlap + datetime.timedelta(minutes=1)
    await keeper.sync()
    assert keeper.served is not None
    leaf = x509.load_pem_x509_certificate(keeper.served.certificate)
    assert not pure.is_issued_by(leaf, first.authority.certificate)


async def test_a_failed_ca_publication_is_retried_and_leaves_the_round_unsettled(
    tmp_path: Path,
) -> None:
    secrets, clock, published = FakeSecrets(), Clock(), []
    keeper = _accountant_keeper(secrets, clock, tmp_path, published, fail=1)
    assert await keeper.sync()  # the certificate is served even so
    assert published == []
    assert not keeper._settled  # so the keeper looks again soon
    assert not await keeper.sync()
    assert published == [_accountant_state(secrets).ca_bundle()]
    assert keeper._settled


async def test_the_accountant_keeper_leaves_the_webhook_expiry_gauge_alone(
    tmp_path: Path,
) -> None:
    from hush.observability import metrics

    metrics.WEBHOOK_CERTIFICATE_EXPIRY.set(42)
    keeper = _accountant_keeper(FakeSecrets(), Clock(), tmp_path, [])
    await keeper.sync()
    assert metrics.WEBHOOK_CERTIFICATE_EXPIRY._value.get() == 42


async def test_a_files_keeper_has_no_ca_bundle_to_publish(tmp_path: Path) -> None:
    state = pure.create(ACCOUNTANT_NAMES, now=Clock()())
    (tmp_path / "tls.crt").write_bytes(state.certificate_pem())
    (tmp_path / "tls.key").write_bytes(state.key_pem())
    keeper = certificates.build_accountant_keeper(
        certificates.Options(
            mode="cert-manager",
            directory=tmp_path / "served",
            certificate_file=tmp_path / "tls.crt",
            key_file=tmp_path / "tls.key",
        )
    )
    assert await keeper.sync()
    assert keeper.ca_bundle() is None
