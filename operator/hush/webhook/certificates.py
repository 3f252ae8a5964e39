"""The certificate keeper: the webhook server's TLS context, kept current while it serves.

One ``Keeper`` per operator process owns one ``ssl.SSLContext``, which the webhook server
listens with. Every ``interval`` the keeper asks its source for the serving certificate and
key; when they changed, it writes them into its directory and loads them into the *same*
context (``load_cert_chain``). OpenSSL copies the certificate and key into each connection
when the connection is created, so new handshakes get the new certificate while connections
already open keep theirs: renewal drops no request and needs no restart
(tests/unit/test_webhook_certificates.py shows both on a live server). A pair is checked
(key belongs to certificate, and a throwaway context loads it) before the live context sees
it, because a failed ``load_cert_chain`` can leave a context with a certificate and no key.

Sources, by ``--webhook-certs`` mode:

- ``self-signed`` (``SelfSignedSource``): the operator is the CA. The state lives in one
  Secret in the operator's namespace; the pure rules are in ``hush.admission.certificates``.
  Every replica runs the same round: read the Secret (create it if absent), publish its
  ``ca.crt`` into the ``caBundle`` of every entry of the named webhook configurations (only
  when different), decide, and if a step is due write it back. Every write is
  compare-and-swap (create-if-absent, or PUT with the resourceVersion read), so replicas
  racing each other converge on one CA: the loser of a race gets 409, re-reads and takes
  what the winner wrote. Replicas may serve different leaves for up to one interval after a
  renewal; both are signed by a CA in the bundle.
- ``cert-manager`` and ``files`` (``FileSource``): the certificate and key are files (a
  mounted cert-manager Secret, or any pair given by flags). The keeper only reloads them
  when they change; the ``caBundle`` belongs to cert-manager's CA injector (or to whoever
  made the files).

Not here: the webhook server itself (``hush.webhook.service``), and kopf wiring
(``hush.handlers.certificates``). This module must not import kopf.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime
import logging
import os
import shutil
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, Final, Literal, Protocol

from hush.admission import certificates
from hush.kube import client
from hush.observability import metrics

logger = logging.getLogger(__name__)

Mode = Literal["self-signed", "cert-manager", "files"]
MODES: Final[tuple[Mode, ...]] = ("self-signed", "cert-manager", "files")

DEFAULT_SECRET_NAME: Final = "hush-webhook-tls"  # noqa: S105 - a name, not a password
DEFAULT_INTERVAL_SECONDS: Final = 120.0
# After a failed or incomplete round (an API error, a webhook configuration not there yet),
# try again soon, doubling up to the interval: an empty caBundle makes every webhook fail.
RETRY_SECONDS: Final = 5.0
REQUEST_TIMEOUT_SECONDS: Final = 10.0
# Rounds of read-decide-write in one sync; each lost race or step costs one.
MAX_ATTEMPTS: Final = 6
# Every Secret the keeper writes carries this label, so `kubectl get secrets -l` finds it.
SECRET_LABELS: Final = {
    "app.kubernetes.io/name": "hush",
    "app.kubernetes.io/component": "webhook-certificates",
}

CERTIFICATE_FILE: Final = "tls.crt"
KEY_FILE: Final = "tls.key"
CA_FILE: Final = "ca.crt"


@dataclasses.dataclass(frozen=True)
class KeyPair:
    """A serving certificate (PEM chain, leaf first) and its private key (PEM)."""

    certificate: bytes
    key: bytes


@dataclasses.dataclass(frozen=True)
class Fetched:
    """What a source found in one round."""

    pair: KeyPair
    # False when something is still missing (a webhook configuration without the caBundle):
    # the keeper then looks again soon instead of after a whole interval.
    settled: bool = True


class Source(Protocol):
    async def fetch(self, now: datetime.datetime) -> Fetched: ...


# -- self-signed ----------------------------------------------------------------------------


class SecretStore(Protocol):
    """The Secret calls (``hush.kube`` in production). ``create`` and ``replace`` raise
    ``client.ConflictError`` on 409 and ``replace`` ``client.ObjectGoneError`` on 404."""

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]: ...

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]: ...


class WebhookConfigurationStore(Protocol):
    """Reads and CAS-replaces Mutating/ValidatingWebhookConfigurations (``hush.kube``)."""

    async def read(self, kind: certificates.WebhookKind, name: str) -> dict[str, Any] | None: ...

    async def replace(
        self, kind: certificates.WebhookKind, name: str, body: dict[str, Any]
    ) -> dict[str, Any]: ...


class KubeSecretStore:
    def __init__(self, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self._timeout = timeout

    async def read(self, namespace: str, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(client.read_secret, namespace, name, timeout=self._timeout)

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(client.create_secret, namespace, body, timeout=self._timeout)

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        return await asyncio.to_thread(
            client.replace_secret, namespace, name, body, timeout=self._timeout
        )


class KubeWebhookConfigurationStore:
    def __init__(self, *, timeout: float = REQUEST_TIMEOUT_SECONDS) -> None:
        self._timeout = timeout

    async def read(self, kind: certificates.WebhookKind, name: str) -> dict[str, Any] | None:
        return await asyncio.to_thread(
            client.read_webhook_configuration, kind, name, timeout=self._timeout
        )

    async def replace(
        self, kind: certificates.WebhookKind, name: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        return await asyncio.to_thread(
            client.replace_webhook_configuration, kind, name, body, timeout=self._timeout
        )


@dataclasses.dataclass(frozen=True, kw_only=True)
class WebhookConfigurationRef:
    kind: certificates.WebhookKind
    name: str

    def __str__(self) -> str:
        return f"{self.kind} {self.name}"


_DONE: Final[dict[certificates.Action, str]] = {
    "create": "Created the webhook CA and serving certificate",
    "renew-leaf": "Renewed the webhook serving certificate",
    "rotate-authority": "Rotated the webhook CA (the old CA stays trusted for now)",
    "drop-retired": "Dropped the retired webhook CA",
    "keep": "Kept the webhook certificates",
}


class SelfSignedSource:
    """The operator as its own CA, its state in one Secret shared by every replica."""

    def __init__(
        self,
        secrets: SecretStore,
        configurations: WebhookConfigurationStore,
        *,
        names: certificates.ServingNames,
        secret_name: str = DEFAULT_SECRET_NAME,
        secret_namespace: str | None = None,
        webhook_configurations: Sequence[WebhookConfigurationRef] = (),
        lifetimes: certificates.Lifetimes = certificates.DEFAULT_LIFETIMES,
        on_ca_bundle: Callable[[bytes], Awaitable[None]] | None = None,
    ) -> None:
        self._secrets = secrets
        self._configurations = configurations
        self.names = names
        self.secret_name = secret_name
        self.secret_namespace = secret_namespace or names.namespace
        self.webhook_configurations = tuple(webhook_configurations)
        self.lifetimes = lifetimes
        self.state: certificates.ServingCertificates | None = None  # as last fetched
        self._missing_reported: set[WebhookConfigurationRef] = set()
        # Where else the bundle goes (the accountant's clients: hush.handlers.accountant_ca),
        # called whenever it differs from the last one handed over successfully. Part of
        # "published": a CA rotation does not move the leaf to the new CA until it succeeded.
        self._on_ca_bundle = on_ca_bundle
        self._handed_bundle: bytes | None = None

    @property
    def secret(self) -> str:
        return f"{self.secret_namespace}/{self.secret_name}"

    async def fetch(self, now: datetime.datetime) -> Fetched:
        for _ in range(MAX_ATTEMPTS):
            secret = await self._secrets.read(self.secret_namespace, self.secret_name)
            state = self._parse(secret)
            published = state is not None and await self.publish(state.ca_bundle())
            decision = certificates.decide(
                state,
                names=self.names,
                now=now,
                lifetimes=self.lifetimes,
                bundle_published=published,
            )
            if state is not None and decision.action == "keep":
                self.state = state
                return Fetched(KeyPair(state.certificate_pem(), state.key_pem()), settled=published)
            updated = certificates.carry_out(
                decision, state, names=self.names, now=now, lifetimes=self.lifetimes
            )
            body = certificates.build_secret(
                self.secret_name,
                self.secret_namespace,
                updated,
                labels=SECRET_LABELS,
                metadata=secret["metadata"] if secret is not None else None,
                secret_type=(secret or {}).get("type") or certificates.SECRET_TYPE,
            )
            try:
                if secret is None:
                    await self._secrets.create(self.secret_namespace, body)
                else:
                    await self._secrets.replace(self.secret_namespace, self.secret_name, body)
            except (client.ConflictError, client.ObjectGoneError) as error:
                # Another replica wrote first: read what it wrote and start over from there.
                logger.info("Lost a write race on Secret %s (%s); re-reading", self.secret, error)
                continue
            logger.info(
                "%s in Secret %s: %s (serving certificate %s)",
                _DONE[decision.action],
                self.secret,
                decision.reason,
                certificates.describe(updated.certificate),
                extra={"secret": self.secret, "action": decision.action},
            )
            # Loop: re-read what was written, publish its bundle, and decide again.
        raise RuntimeError(
            f"Webhook certificates in Secret {self.secret} did not settle after "
            f"{MAX_ATTEMPTS} attempts; another writer keeps changing it"
        )

    def _parse(self, secret: dict[str, Any] | None) -> certificates.ServingCertificates | None:
        if secret is None:
            return None
        try:
            return certificates.from_secret_data(secret.get("data"))
        except certificates.InvalidCertificatesError as error:
            logger.warning(
                "Replacing Secret %s: it holds no usable webhook certificates (%s)",
                self.secret,
                error,
            )
            return None

    async def publish(self, bundle: bytes) -> bool:
        """Put ``bundle`` into every webhook configuration (and hand it to ``on_ca_bundle``);
        True when all of them have it."""
        complete = True
        for reference in self.webhook_configurations:
            try:
                complete &= await self._publish_one(reference, bundle)
            except Exception as error:  # the next round tries again; the others still get it
                logger.warning("Failed to update the caBundle of %s: %s", reference, error)
                complete = False
        if self._on_ca_bundle is not None and bundle != self._handed_bundle:
            try:
                await self._on_ca_bundle(bundle)
            except Exception as error:  # the next round tries again
                logger.warning("Failed to publish the CA bundle of %s: %s", self.secret, error)
                complete = False
            else:
                self._handed_bundle = bundle
        return complete

    async def _publish_one(self, reference: WebhookConfigurationRef, bundle: bytes) -> bool:
        for _ in range(MAX_ATTEMPTS):
            configuration = await self._configurations.read(reference.kind, reference.name)
            if configuration is None:
                if reference not in self._missing_reported:
                    logger.warning("Found no %s to put the caBundle into (yet)", reference)
                    self._missing_reported.add(reference)
                return False
            self._missing_reported.discard(reference)
            updated = certificates.with_ca_bundle(configuration, bundle)
            if updated is None:
                return True
            try:
                await self._configurations.replace(reference.kind, reference.name, updated)
            except client.ConflictError:
                continue  # changed since read (helm, the other replica): read it again
            except client.ObjectGoneError:
                return False
            logger.info("Updated the caBundle of %s", reference)
            return True
        return False


# -- files (cert-manager, or given by flags) ------------------------------------------------------


class FileSource:
    """A certificate and key that someone else keeps current (kubelet, for a mounted Secret)."""

    def __init__(self, certificate: Path, key: Path) -> None:
        self.certificate = certificate
        self.key = key

    async def fetch(self, now: datetime.datetime) -> Fetched:
        # Both files are read before either is checked: the kubelet swaps a mounted Secret's
        # files together (one symlink), and a torn pair is refused by the keeper's check.
        return Fetched(KeyPair(self.certificate.read_bytes(), self.key.read_bytes()))


# -- the keeper --------------------------------------------------------------------------------


def new_server_context() -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context


def _write_private(path: Path, content: bytes) -> None:
    """Write ``content`` to ``path`` atomically (a reader sees the old or the new file)."""
    temporary = path.with_name(f".{path.name}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(content)
    temporary.replace(path)


def _utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class Keeper:
    """Holds the webhook server's ``ssl_context`` and keeps its certificate current.

    Every load also sets the gauge ``hush_webhook_certificate_expiry_timestamp_seconds``
    (``hush.observability.metrics``), which the chart's expiry alert watches.
    """

    def __init__(
        self,
        source: Source,
        *,
        directory: Path | None = None,
        interval: float = DEFAULT_INTERVAL_SECONDS,
        clock: Callable[[], datetime.datetime] = _utc_now,
        description: str = "webhook",
        record_expiry: Callable[[float], None] | None = metrics.WEBHOOK_CERTIFICATE_EXPIRY.set,
    ) -> None:
        if interval <= 0:
            raise ValueError("The certificate sync interval must be positive")
        if isinstance(source, SelfSignedSource):
            overlap = source.lifetimes.overlap.total_seconds()
            if interval * 4 > overlap:
                raise ValueError(
                    f"The certificate sync interval ({interval:g}s) must be under a quarter of "
                    f"the CA rotation overlap ({overlap:g}s)"
                )
        self.source = source
        self.interval = interval
        self._clock = clock
        self._description = description
        self._record_expiry = record_expiry
        self._own_directory = directory is None
        self.directory = directory or Path(tempfile.mkdtemp(prefix="hush-webhook-certs-"))
        self.ssl_context = new_server_context()
        self.served: KeyPair | None = None
        self._settled = True  # False: the last round left something to finish soon
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def certificate_file(self) -> Path:
        return self.directory / CERTIFICATE_FILE

    @property
    def key_file(self) -> Path:
        return self.directory / KEY_FILE

    def ca_bundle(self) -> bytes | None:
        """The CA bundle that verifies the served certificate, when this keeper is the CA
        (self-signed); None for files, whose CA belongs to whoever made them."""
        if isinstance(self.source, SelfSignedSource) and self.source.state is not None:
            return self.source.state.ca_bundle()
        return None

    def loaded_ssl_context(self) -> ssl.SSLContext:
        """The context to serve with; an error until the first certificate is loaded."""
        if self.served is None:
            raise RuntimeError("No webhook serving certificate is loaded yet (keeper not started)")
        return self.ssl_context

    async def start(self) -> None:
        """Load the first certificate (errors propagate), then keep it current in the
        background. Idempotent: the webhook server may call it whatever the start order."""
        async with self._lock:
            if self._task is not None:
                return
            await self._sync_locked()
            self._task = asyncio.create_task(self._run(), name="webhook certificate keeper")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._own_directory:
            shutil.rmtree(self.directory, ignore_errors=True)

    async def sync(self) -> bool:
        """One round: fetch, and reload the context if the pair changed. True if it did."""
        async with self._lock:
            return await self._sync_locked()

    async def _sync_locked(self) -> bool:
        fetched = await self.source.fetch(self._clock())
        self._settled = fetched.settled
        if fetched.pair == self.served:
            return False
        self._load(fetched.pair)
        return True

    def _load(self, pair: KeyPair) -> None:
        leaf = certificates.check_key_pair(pair.certificate, pair.key)
        self.directory.mkdir(parents=True, exist_ok=True)
        _write_private(self.key_file, pair.key)
        _write_private(self.certificate_file, pair.certificate)
        if isinstance(self.source, SelfSignedSource) and self.source.state is not None:
            _write_private(self.directory / CA_FILE, self.source.state.ca_bundle())
        # A throwaway context first: the live one must never be left half-loaded.
        new_server_context().load_cert_chain(self.certificate_file, self.key_file)
        self.ssl_context.load_cert_chain(self.certificate_file, self.key_file)
        self.served = pair
        if self._record_expiry is not None:
            self._record_expiry(leaf.not_valid_after_utc.timestamp())
        logger.info(
            "Loaded the %s serving certificate (%s)",
            self._description,
            certificates.describe(leaf),
        )

    async def _run(self) -> None:
        failures = 0 if self._settled else 1
        while True:
            wait = (
                self.interval
                if failures == 0
                else min(self.interval, RETRY_SECONDS * 2 ** min(failures - 1, 10))
            )
            await asyncio.sleep(wait)
            try:
                await self.sync()
            except Exception as error:  # a dead loop would let the certificate expire
                logger.warning("Failed to refresh the %s certificate: %s", self._description, error)
                failures += 1
            else:
                failures = 0 if self._settled else failures + 1


# -- options and the process-wide keeper ------------------------------------------------------


@dataclasses.dataclass(frozen=True, kw_only=True)
class Options:
    """Where the webhook serving certificate comes from (``hush operator`` flags)."""

    mode: Mode = "self-signed"
    directory: Path | None = None  # where served copies are written; None: a private temp dir
    interval: float = DEFAULT_INTERVAL_SECONDS
    # self-signed
    names: certificates.ServingNames | None = None
    secret_name: str = DEFAULT_SECRET_NAME
    webhook_configurations: tuple[WebhookConfigurationRef, ...] = ()
    lifetimes: certificates.Lifetimes = certificates.DEFAULT_LIFETIMES
    # cert-manager and files
    certificate_file: Path | None = None
    key_file: Path | None = None


def build_keeper(options: Options) -> Keeper:
    """The keeper for ``options``; ``ValueError`` names what is missing."""
    source: Source
    if options.mode == "self-signed":
        if options.names is None:
            raise ValueError("Self-signed webhook certificates need the webhook Service name")
        source = SelfSignedSource(
            KubeSecretStore(),
            KubeWebhookConfigurationStore(),
            names=options.names,
            secret_name=options.secret_name,
            webhook_configurations=options.webhook_configurations,
            lifetimes=options.lifetimes,
        )
    else:
        if options.certificate_file is None or options.key_file is None:
            raise ValueError(
                f"--webhook-certs={options.mode} needs --webhook-tls-cert and --webhook-tls-key"
            )
        source = FileSource(options.certificate_file, options.key_file)
    return Keeper(source, directory=options.directory, interval=options.interval)


_keeper: Keeper | None = None


def configure(options: Options) -> Keeper:
    """Called by ``hush operator`` before kopf starts, when it serves webhooks."""
    global _keeper
    _keeper = build_keeper(options)
    return _keeper


def current() -> Keeper | None:
    """The process's keeper, or None when the operator serves no webhooks."""
    return _keeper


# -- the accountant's serving certificate ---------------------------------------------------

DEFAULT_ACCOUNTANT_SECRET_NAME: Final = "hush-accountant-tls"  # noqa: S105 - a name


def build_accountant_keeper(
    options: Options,
    *,
    on_ca_bundle: Callable[[bytes], Awaitable[None]] | None = None,
) -> Keeper:
    """The keeper of the accountant's serving certificate: the same mechanism as the
    webhooks' (``self-signed``: a CA and leaf in ``options.secret_name``, renewed and
    rotated by the same rules; ``cert-manager``/``files``: mounted files reloaded when they
    change), but with no webhook configuration to publish into. Its clients are sidecars,
    which trust the CA through ConfigMap ``hush-accountant-ca``: ``on_ca_bundle`` is how
    the operator publishes it (``hush.handlers.accountant_ca``)."""
    source: Source
    if options.mode == "self-signed":
        if options.names is None:
            raise ValueError("Self-signed accountant certificates need the accountant Service")
        source = SelfSignedSource(
            KubeSecretStore(),
            KubeWebhookConfigurationStore(),
            names=options.names,
            secret_name=options.secret_name,
            webhook_configurations=(),
            lifetimes=options.lifetimes,
            # Published before any decision relies on it (the source's round), so a leaf
            # from a rotated CA is served only after the sidecars' ConfigMaps carry that CA.
            on_ca_bundle=on_ca_bundle,
        )
    else:
        if options.certificate_file is None or options.key_file is None:
            raise ValueError(
                f"--accountant-certs={options.mode} needs --accountant-tls-cert and "
                "--accountant-tls-key"
            )
        source = FileSource(options.certificate_file, options.key_file)
    return Keeper(
        source,
        directory=options.directory,
        interval=options.interval,
        description="accountant",
        record_expiry=None,
    )
