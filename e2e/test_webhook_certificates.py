"""Webhook serving certificates against the real apiserver.

Two keepers stand in for two operator replicas (``hush.webhook.certificates`` over the real
``hush.kube`` calls, in this process): racing to create the Secret, they converge on one CA;
the ``caBundle`` of every entry of a Mutating and a Validating webhook configuration is
kept right; a renewal (forced with a fake clock) is loaded into the live TLS context, so
new connections get the new certificate while an open keep-alive connection keeps working.
Last, the apiserver itself calls a tiny admission webhook served with the keeper's context
(``failurePolicy: Fail``, scoped to the test namespace) before and after a renewal: a
ConfigMap create that succeeds and reached the webhook proves certificate and caBundle.

The webhook configurations here are the test's own, with URL client configs on loopback,
and select only namespaces carrying a label that only the test namespace has.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import json
import os
import secrets
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
import yaml
from aiohttp import web
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config import kube_config

from hush.admission import certificates as pure
from hush.cli import main, webhook_certificates
from hush.dev import binaries
from hush.kube import client as kube
from hush.webhook import certificates

import hush_resources
import operator_process
import waiting

T = TypeVar("T")
SCOPE_LABEL = "hush.dev/e2e-webhook-certificates"
SECRET_NAME = "hush-webhook-tls"


class LoopThread:
    """An event loop in a thread: the aiohttp server and the keepers live there, so that the
    test's blocking API calls never stall the webhook the apiserver is calling."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self.loop.close()


class Clock:
    def __init__(self, start: datetime.datetime) -> None:
        self.now = start

    def __call__(self) -> datetime.datetime:
        return self.now


class CountingSecretStore(certificates.KubeSecretStore):
    """The real store, counting the writes that succeeded."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    async def create(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created = await super().create(namespace, body)
        self.writes += 1
        return created

    async def replace(self, namespace: str, name: str, body: dict[str, Any]) -> dict[str, Any]:
        written = await super().replace(namespace, name, body)
        self.writes += 1
        return written


@pytest.fixture(scope="module")
def hush_kube(kubeconfig: Path) -> Iterator[None]:
    """``hush.kube`` logs in the way the operator does: from ``KUBECONFIG``, which the
    kubernetes package reads once, at import, into ``KUBE_CONFIG_DEFAULT_LOCATION``."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KUBECONFIG", str(kubeconfig))
        patch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(kubeconfig))
        kube.api_client.cache_clear()
        yield
    kube.api_client.cache_clear()


@pytest.fixture
def loop_thread() -> Iterator[LoopThread]:
    thread = LoopThread()
    yield thread
    thread.close()


# -- a tiny admission webhook -----------------------------------------------------------------


class AdmissionServer:
    """Allows everything and records what it was asked. Admission answers close the
    connection, so every call from the apiserver is a new TLS handshake with the certificate
    loaded at that moment; ``/healthz`` keeps connections alive."""

    def __init__(self, context: ssl.SSLContext) -> None:
        self.context = context
        self.reviews: list[dict[str, Any]] = []
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def _review(self, request: web.Request) -> web.Response:
        review = await request.json()
        self.reviews.append({"path": request.path, "request": review["request"]})
        answer = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "response": {"uid": review["request"]["uid"], "allowed": True},
        }
        response = web.json_response(answer)
        response.force_close()
        return response

    async def _healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/validate", self._review)
        app.router.add_post("/mutate", self._review)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self.context)
        await site.start()
        self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def configmaps_reviewed(self, namespace: str) -> set[str]:
        return {
            review["request"]["name"]
            for review in self.reviews
            if review["path"] == "/validate" and review["request"]["namespace"] == namespace
        }


class Connection:
    """One HTTP/1.1 keep-alive connection over TLS, verified against a CA bundle."""

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

    async def get_healthz(self) -> str:
        self.writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
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


# -- webhook configurations of the test's own -------------------------------------------------


def _webhook(name: str, url: str, scope: str, failure_policy: str) -> dict[str, Any]:
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "sideEffects": "None",
        "failurePolicy": failure_policy,
        "timeoutSeconds": 5,
        "clientConfig": {"url": url},
        "namespaceSelector": {"matchLabels": {SCOPE_LABEL: scope}},
        "rules": [
            {
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["configmaps"],
                "operations": ["CREATE"],
                "scope": "Namespaced",
            }
        ],
    }


@pytest.fixture
def webhook_configurations(
    api_client: client.ApiClient, namespace: str
) -> Iterator[dict[str, Any]]:
    """``create(port, failure_policy)`` makes a Mutating (two entries, Ignore) and a
    Validating configuration, without any caBundle, scoped to the test namespace."""
    core = client.CoreV1Api(api_client)
    core.patch_namespace(namespace, {"metadata": {"labels": {SCOPE_LABEL: namespace}}})
    admission = client.AdmissionregistrationV1Api(api_client)
    suffix = secrets.token_hex(4)
    names = {
        "MutatingWebhookConfiguration": f"hush-e2e-certificates-{suffix}",
        "ValidatingWebhookConfiguration": f"hush-e2e-certificates-{suffix}",
    }

    def create(port: int, failure_policy: str) -> None:
        base = f"https://127.0.0.1:{port}"
        admission.create_mutating_webhook_configuration(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "MutatingWebhookConfiguration",
                "metadata": {"name": names["MutatingWebhookConfiguration"]},
                "webhooks": [
                    _webhook("first.mutate.e2e.hush.dev", f"{base}/mutate", namespace, "Ignore"),
                    _webhook("second.mutate.e2e.hush.dev", f"{base}/mutate", namespace, "Ignore"),
                ],
            }
        )
        admission.create_validating_webhook_configuration(
            {
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingWebhookConfiguration",
                "metadata": {"name": names["ValidatingWebhookConfiguration"]},
                "webhooks": [
                    _webhook("validate.e2e.hush.dev", f"{base}/validate", namespace, failure_policy)
                ],
            }
        )

    yield {"names": names, "create": create}
    for delete, name in (
        (
            admission.delete_mutating_webhook_configuration,
            names["MutatingWebhookConfiguration"],
        ),
        (
            admission.delete_validating_webhook_configuration,
            names["ValidatingWebhookConfiguration"],
        ),
    ):
        try:
            delete(name)
        except ApiException as error:
            if error.status != 404:
                raise


def _references(names: dict[str, str]) -> tuple[certificates.WebhookConfigurationRef, ...]:
    return (
        certificates.WebhookConfigurationRef(
            kind="MutatingWebhookConfiguration", name=names["MutatingWebhookConfiguration"]
        ),
        certificates.WebhookConfigurationRef(
            kind="ValidatingWebhookConfiguration", name=names["ValidatingWebhookConfiguration"]
        ),
    )


def _bundles(api_client: client.ApiClient, names: dict[str, str]) -> list[set[bytes]]:
    """The distinct caBundles of each configuration's entries, as the apiserver stores them."""
    custom = client.CustomObjectsApi(api_client)
    return [
        pure.ca_bundle_of(
            custom.get_cluster_custom_object(
                "admissionregistration.k8s.io", "v1", f"{kind.lower()}s", names[kind]
            )
        )
        for kind in ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
    ]


def _secret_state(api_client: client.ApiClient, namespace: str) -> pure.ServingCertificates:
    secret = client.CoreV1Api(api_client).read_namespaced_secret(SECRET_NAME, namespace)
    assert secret.type == "kubernetes.io/tls"
    return pure.from_secret_data(secret.data)


def _keeper(
    namespace: str,
    directory: Path,
    clock: Clock,
    references: tuple[certificates.WebhookConfigurationRef, ...],
    secret_store: certificates.SecretStore | None = None,
) -> certificates.Keeper:
    source = certificates.SelfSignedSource(
        secret_store or certificates.KubeSecretStore(),
        certificates.KubeWebhookConfigurationStore(),
        names=pure.ServingNames(
            service="hush-webhook", namespace=namespace, ip_addresses=("127.0.0.1",)
        ),
        secret_name=SECRET_NAME,
        webhook_configurations=references,
        # Leaves of two hours: renewal is due one hour in, and a leaf issued then is
        # backdated one hour, so it is valid at once for clients on the real clock.
        lifetimes=pure.Lifetimes(leaf=datetime.timedelta(hours=2)),
    )
    return certificates.Keeper(source, directory=directory, clock=clock)


def _real_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.usefixtures("hush_kube")
def test_two_replicas_converge_on_one_ca_and_keep_every_ca_bundle(
    api_client: client.ApiClient,
    namespace: str,
    loop_thread: LoopThread,
    webhook_configurations: dict[str, Any],
    tmp_path: Path,
) -> None:
    # Nothing is served here (the test reads objects only), so nothing may depend on it.
    webhook_configurations["create"](1, "Ignore")
    references = _references(webhook_configurations["names"])
    clock = Clock(_real_now())
    store = CountingSecretStore()
    replicas = [
        _keeper(namespace, tmp_path / name, clock, references, store)
        for name in ("first", "second")
    ]

    async def race() -> list[bool]:
        return await asyncio.gather(*(replica.sync() for replica in replicas))

    assert loop_thread.run(race()) == [True, True]
    stored = _secret_state(api_client, namespace)
    assert store.writes == 1  # one CA and one leaf were written; the other replica took them
    served = certificates.KeyPair(stored.certificate_pem(), stored.key_pem())
    assert [replica.served for replica in replicas] == [served, served]
    bundle = stored.ca_bundle()
    assert _bundles(api_client, webhook_configurations["names"]) == [{bundle}, {bundle}]

    # Someone (a chart upgrade, a person) resets a caBundle: the next round restores it.
    admission = client.AdmissionregistrationV1Api(api_client)
    name = webhook_configurations["names"]["ValidatingWebhookConfiguration"]
    admission.patch_validating_webhook_configuration(
        name,
        [{"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": "Cg=="}],
    )
    assert not loop_thread.run(replicas[1].sync())  # same certificate: no reload
    assert _bundles(api_client, webhook_configurations["names"]) == [{bundle}, {bundle}]

    # A renewal by one replica reaches the other through the Secret; the CA stays.
    clock.now = pure.leaf_renewal_time(stored.certificate, pure.DEFAULT_LIFETIMES)
    assert loop_thread.run(replicas[0].sync())
    renewed = _secret_state(api_client, namespace)
    assert renewed.certificate != stored.certificate
    assert renewed.ca_bundle() == bundle
    assert loop_thread.run(replicas[1].sync())
    assert replicas[1].served == replicas[0].served
    assert store.writes == 2
    for replica in replicas:
        loop_thread.run(replica.stop())


@pytest.mark.usefixtures("hush_kube")
def test_apiserver_trusts_the_webhook_before_and_after_renewal(
    api_client: client.ApiClient,
    namespace: str,
    loop_thread: LoopThread,
    webhook_configurations: dict[str, Any],
    tmp_path: Path,
    uses_dev_cluster: bool,
) -> None:
    if not uses_dev_cluster:
        pytest.skip("the apiserver must reach this host's loopback (the local control plane)")
    clock = Clock(_real_now())
    keeper = _keeper(
        namespace, tmp_path / "served", clock, _references(webhook_configurations["names"])
    )
    server = AdmissionServer(keeper.ssl_context)
    loop_thread.run(server.start())
    webhook_configurations["create"](server.port, "Fail")
    loop_thread.run(keeper.start())
    core = client.CoreV1Api(api_client)
    try:
        before = _secret_state(api_client, namespace)
        bundle = before.ca_bundle()
        assert _bundles(api_client, webhook_configurations["names"]) == [{bundle}, {bundle}]

        def admitted_by_webhook(name: str) -> bool:
            # The apiserver picks up a new webhook configuration within moments; until then
            # a dry run passes without calling the webhook, so ask until the webhook saw it.
            try:
                core.create_namespaced_config_map(
                    namespace,
                    {"metadata": {"name": name}, "data": {"k": "v"}},
                    dry_run="All",
                )
            except ApiException as error:
                raise AssertionError(f"The apiserver refused {name}: {error.body}") from error
            return name in server.configmaps_reviewed(namespace)

        waiting.wait_for(
            lambda: admitted_by_webhook("before-renewal"),
            timeout=30,
            description="the apiserver to call the webhook for ConfigMap before-renewal",
        )
        # And a real create, through the Fail webhook, with the original certificate.
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "created-before"}})
        assert "created-before" in server.configmaps_reviewed(namespace)

        old = loop_thread.run(Connection.open(server.port, bundle))
        assert loop_thread.run(old.get_healthz()) == "ok"
        assert old.peer_certificate() == before.certificate

        # Renewal: the same context, reloaded in place.
        clock.now = pure.leaf_renewal_time(before.certificate, pure.DEFAULT_LIFETIMES)
        assert loop_thread.run(keeper.sync())
        after = _secret_state(api_client, namespace)
        assert after.certificate != before.certificate
        assert after.ca_bundle() == bundle

        new = loop_thread.run(Connection.open(server.port, bundle))
        assert loop_thread.run(new.get_healthz()) == "ok"
        assert new.peer_certificate() == after.certificate
        # The connection opened before the renewal keeps working, with its certificate.
        assert loop_thread.run(old.get_healthz()) == "ok"
        assert old.peer_certificate() == before.certificate
        loop_thread.run(old.close())
        loop_thread.run(new.close())

        # Every admission call is a new handshake: this one saw the renewed certificate.
        core.create_namespaced_config_map(namespace, {"metadata": {"name": "created-after"}})
        assert "created-after" in server.configmaps_reviewed(namespace)
        mutating_calls = [review for review in server.reviews if review["path"] == "/mutate"]
        assert mutating_calls, "the mutating webhook was never called"
        print(json.dumps({"reviews": len(server.reviews)}))
    finally:
        loop_thread.run(server.stop())
        loop_thread.run(keeper.stop())


def _served_certificate(port: int, bundle: bytes) -> x509.Certificate | None:
    """The certificate served on ``port`` if it verifies against ``bundle``, else None."""
    context = ssl.create_default_context(cadata=bundle.decode())
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
        ):
            der = wrapped.getpeercert(binary_form=True)
    except OSError:  # not listening yet, or not (yet) a certificate from this CA
        return None
    return x509.load_der_x509_certificate(der) if der else None


def test_operator_replicas_share_the_certificate_and_survive_a_restart(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    webhook_configurations: dict[str, Any],
    tmp_path: Path,
) -> None:
    """Two ``hush operator`` processes (self-signed mode, as the chart runs them) serve the
    one certificate from the Secret; one restarts while the other keeps serving."""
    hush_resources.install_crds(api_client)
    ports = [operator_process.free_port(), operator_process.free_port()]
    webhook_configurations["create"](ports[0], "Ignore")
    names = webhook_configurations["names"]

    def operator(index: int, generation: int) -> contextlib.AbstractContextManager[Any]:
        return operator_process.running_operator(
            kubeconfig,
            tmp_path / f"operator-{index}-{generation}.log",
            f"--webhook-port={ports[index]}",
            "--webhook-host=127.0.0.1",
            "--webhook-certs=self-signed",
            f"--webhook-namespace={namespace}",
            f"--webhook-secret={SECRET_NAME}",
            "--webhook-cert-ip=127.0.0.1",
            f"--webhook-cert-dir={tmp_path / f'certs-{index}-{generation}'}",
            f"--webhook-mutating-configuration={names['MutatingWebhookConfiguration']}",
            f"--webhook-validating-configuration={names['ValidatingWebhookConfiguration']}",
        )

    def serving(port: int) -> x509.Certificate | None:
        try:
            state = _secret_state(api_client, namespace)
        except ApiException as error:
            if error.status == 404:
                return None
            raise
        return _served_certificate(port, state.ca_bundle())

    with operator(0, 0), contextlib.ExitStack() as second:
        second.enter_context(operator(1, 0))
        for port in ports:
            waiting.wait_for(
                lambda port=port: serving(port),
                timeout=60,
                description=f"a trusted certificate on the webhook port {port}",
            )
        state = _secret_state(api_client, namespace)
        assert [_served_certificate(port, state.ca_bundle()) for port in ports] == [
            state.certificate,
            state.certificate,
        ]
        bundle = state.ca_bundle()
        assert _bundles(api_client, names) == [{bundle}, {bundle}]

        # One replica goes away; the other serves on, with the certificate the apiserver trusts.
        second.close()
        assert _served_certificate(ports[0], bundle) == state.certificate
        with operator(1, 1):
            restarted = waiting.wait_for(
                lambda: _served_certificate(ports[1], bundle),
                timeout=60,
                description="the restarted replica to serve a trusted certificate",
            )
            assert restarted == state.certificate  # the same Secret: no new CA, no new leaf
            assert _served_certificate(ports[0], bundle) == state.certificate
    final = _secret_state(api_client, namespace)
    assert final.authority.certificate == state.authority.certificate
    assert final.certificate == state.certificate


# -- the chart -------------------------------------------------------------------------------

CHART = Path(__file__).resolve().parents[1] / "charts" / "hush"


@pytest.fixture(scope="module")
def helm(uses_dev_cluster: bool) -> Path:
    if uses_dev_cluster or os.environ.get("HUSH_CONTROLPLANE_BIN"):
        return binaries.locate(os.environ).path("helm")
    found = shutil.which("helm")
    if found is None:
        pytest.skip("helm is not on PATH")
    return Path(found)


# Sidecar injection (on by default) needs the image pinned by digest.
CHART_DIGEST = "image.digest=sha256:" + "0" * 64


def _render(helm: Path, release: str, namespace: str, *values: str) -> list[dict[str, Any]]:
    result = subprocess.run(
        [str(helm), "template", release, str(CHART), f"--namespace={namespace}",
         "--kube-version=1.34.0", f"--set={CHART_DIGEST}", *(f"--set={value}" for value in values)],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise AssertionError(f"helm template failed: {result.stderr}")
    return [document for document in yaml.safe_load_all(result.stdout) if document]


def _one(documents: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        document
        for document in documents
        if document["kind"] == kind and name in (None, document["metadata"]["name"])
    ]
    assert len(found) == 1, f"{len(found)} {kind} {name or ''}"
    return found[0]


def _operator_options(
    documents: list[dict[str, Any]], namespace: str
) -> tuple[certificates.Options, dict[str, Any]]:
    """The keeper options that the rendered Deployment's arguments give ``hush operator``."""
    deployment = _one(documents, "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    arguments = main.build_parser().parse_args([*container["args"], "--webhook-port=9443"])
    options = webhook_certificates.keeper_options(arguments, {"POD_NAMESPACE": namespace})
    return options, pod


def _allowed(
    api_client: client.ApiClient,
    user: str,
    namespace: str | None,
    verb: str,
    group: str,
    resource: str,
    name: str,
) -> bool:
    review = client.AuthorizationV1Api(api_client).create_subject_access_review(
        {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": user,
                "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
                "resourceAttributes": {
                    "namespace": namespace,
                    "verb": verb,
                    "group": group,
                    "resource": resource,
                    "name": name,
                },
            },
        }
    )
    return bool(review.status.allowed)


def test_self_signed_chart_grants_exactly_what_the_operator_uses(
    api_client: client.ApiClient, namespace: str, helm: Path
) -> None:
    release = f"certs{secrets.token_hex(3)}"
    documents = _render(helm, release, namespace)
    options, pod = _operator_options(documents, namespace)
    assert options.mode == "self-signed"
    assert options.names is not None
    assert options.names.service == f"{release}-hush-webhook"
    assert options.names.namespace == namespace
    assert options.directory is not None
    mounts = {mount["mountPath"]: mount["name"] for mount in pod["containers"][0]["volumeMounts"]}
    volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(options.directory)])
    assert volume["emptyDir"]["medium"] == "Memory"
    assert not [d for d in documents if d["apiVersion"].startswith("cert-manager.io/")]

    # Apply the rendered RBAC and ask the apiserver what the ServiceAccount may do.
    rbac = client.RbacAuthorizationV1Api(api_client)
    core = client.CoreV1Api(api_client)
    account = _one(documents, "ServiceAccount")
    core.create_namespaced_service_account(namespace, account)
    cluster_role = _one(documents, "ClusterRole")
    cluster_binding = _one(documents, "ClusterRoleBinding")
    rbac.create_cluster_role(cluster_role)
    try:
        rbac.create_cluster_role_binding(cluster_binding)
        try:
            for kind in ("Role", "RoleBinding"):
                for document in documents:
                    if document["kind"] == kind:
                        create = (
                            rbac.create_namespaced_role
                            if kind == "Role"
                            else rbac.create_namespaced_role_binding
                        )
                        create(namespace, document)
            user = f"system:serviceaccount:{namespace}:{account['metadata']['name']}"

            def may(verb: str, group: str, resource: str, name: str, ns: str | None) -> bool:
                return _allowed(api_client, user, ns, verb, group, resource, name)

            secret = options.secret_name
            assert may("create", "", "secrets", "", namespace)
            assert may("get", "", "secrets", secret, namespace)
            assert may("update", "", "secrets", secret, namespace)
            assert not may("get", "", "secrets", "another", namespace)
            assert not may("list", "", "secrets", "", namespace)
            assert not may("get", "", "secrets", secret, "default")
            for reference in options.webhook_configurations:
                resource = f"{reference.kind.lower()}s"
                group = "admissionregistration.k8s.io"
                assert may("get", group, resource, reference.name, None)
                assert may("update", group, resource, reference.name, None)
                assert not may("update", group, resource, "someone-elses", None)
                assert not may("create", group, resource, "", None)
                assert not may("delete", group, resource, reference.name, None)
        finally:
            rbac.delete_cluster_role_binding(cluster_binding["metadata"]["name"])
    finally:
        rbac.delete_cluster_role(cluster_role["metadata"]["name"])


def test_cert_manager_chart_issues_for_the_same_names_and_injects_the_ca(helm: Path) -> None:
    namespace = "hush-system"
    documents = _render(helm, "hush", namespace, "webhook.certificates.mode=cert-manager")
    options, pod = _operator_options(documents, namespace)
    assert options.mode == "cert-manager"
    assert options.certificate_file is not None
    assert options.key_file is not None
    certificate = _one(documents, "Certificate", "hush-webhook")
    service = "hush-webhook"
    names = pure.ServingNames(service=service, namespace=namespace)
    assert certificate["spec"]["dnsNames"] == list(names.dns_names)
    mounts = {mount["name"]: mount["mountPath"] for mount in pod["containers"][0]["volumeMounts"]}
    assert options.certificate_file.parent == Path(mounts["webhook-tls"])
    volume = next(v for v in pod["volumes"] if v["name"] == "webhook-tls")
    assert volume["secret"]["secretName"] == certificate["spec"]["secretName"]
    # The private CA chain when no issuer is given.
    issuer = _one(documents, "Issuer", certificate["spec"]["issuerRef"]["name"])
    ca = _one(documents, "Certificate", issuer["spec"]["ca"]["secretName"])
    assert ca["spec"]["isCA"]
    # No API access to Secrets or webhook configurations for the webhooks: cert-manager does
    # it. (The accountant's certificate is still the operator's here: its own Role.)
    roles = [d for d in documents if d["kind"] in ("Role", "ClusterRole")]
    for role in roles:
        for rule in role["rules"]:
            assert "validatingwebhookconfigurations" not in rule["resources"], rule
            if "secrets" in rule["resources"]:
                assert role["metadata"]["name"] == "hush-accountant-certificates", rule
    # With the accountant's from cert-manager too, no Secret access at all.
    both = _render(
        helm,
        "hush",
        namespace,
        "webhook.certificates.mode=cert-manager",
        "accountant.certificates.mode=cert-manager",
    )
    for role in (d for d in both if d["kind"] in ("Role", "ClusterRole")):
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"], rule

    given = _render(
        helm,
        "hush",
        namespace,
        "webhook.certificates.mode=cert-manager",
        "webhook.certificates.certManager.issuerRef.kind=ClusterIssuer",
        "webhook.certificates.certManager.issuerRef.name=corporate-ca",
    )
    assert _one(given, "Certificate")["spec"]["issuerRef"] == {
        "kind": "ClusterIssuer",
        "name": "corporate-ca",
    }
    assert not [d for d in given if d["kind"] == "Issuer"]


def test_chart_refuses_an_unknown_certificate_mode(helm: Path) -> None:
    with pytest.raises(AssertionError, match=r"must be .*self-signed.*cert-manager"):
        _render(helm, "hush", "hush-system", "webhook.certificates.mode=files")
