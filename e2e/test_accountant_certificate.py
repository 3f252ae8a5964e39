"""The accountant's serving certificate kept by the operator, against the real apiserver.

``hush operator`` runs as in the other e2e tests, but with no certificate given: from
nothing, it creates the CA and leaf in Secret ``hush-accountant-tls`` and publishes the CA
as ConfigMap ``hush-accountant-ca`` in the namespace of the DPPolicy. A sidecar-like client
that trusts only that ConfigMap's CA charges. Then, during a burst of a few hundred
concurrent charges, the leaf in the Secret is replaced by one that is due for renewal (as
if it had been issued 89 days ago): the operator renews it and loads the new leaf into the
served context. No charge is lost: every one is answered 200, or refused in a way a sidecar
retries (503, a dropped connection), and retried with the same request id; the ledger then
holds exactly one entry per request id, and new connections see the new leaf.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import dataclasses
import datetime
import itertools
import ssl
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from cryptography import x509
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from hush.admission import certificates as pure
from hush.admission import mutation
from hush.ledger import chain

import hush_resources
import operator_process
import spending
import waiting

SECRET = "hush-accountant-tls"
NAME = "certified"
CHARGES = 400  # at least this many in the burst
WORKERS = 24
SYNC_SECONDS = 1.0


@pytest.fixture
def accountant(
    api_client: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    tmp_path: Path,
) -> Iterator[dict[str, Any]]:
    hush_resources.install_crds(api_client)
    core = client.CoreV1Api(api_client)
    with pytest.raises(ApiException) as missing:
        core.read_namespaced_secret(SECRET, namespace)
    assert missing.value.status == 404  # from nothing
    port = operator_process.free_port()
    with operator_process.running_operator(
        kubeconfig,
        tmp_path / "operator.log",
        f"--accountant-port={port}",
        "--accountant-host=127.0.0.1",
        "--accountant-certs=self-signed",
        f"--accountant-namespace={namespace}",
        "--accountant-cert-ip=127.0.0.1",
        f"--accountant-cert-dir={tmp_path / 'served'}",
        f"--accountant-cert-sync-interval={SYNC_SECONDS}",
    ) as process:
        yield {"url": f"https://127.0.0.1:{port}", "port": port, "process": process}


def _secret_state(core: client.CoreV1Api, namespace: str) -> pure.ServingCertificates:
    secret = core.read_namespaced_secret(SECRET, namespace)
    return pure.from_secret_data({key: str(value) for key, value in (secret.data or {}).items()})


def _secret_state_if_any(core: client.CoreV1Api, namespace: str) -> pure.ServingCertificates | None:
    return _secret_state(core, namespace) if _has_secret(core, namespace) else None


def _published_ca(core: client.CoreV1Api, namespace: str) -> str | None:
    try:
        found = core.read_namespaced_config_map(mutation.ACCOUNTANT_CA_CONFIG_MAP, namespace)
    except ApiException as error:
        if error.status == 404:
            return None
        raise
    return (found.data or {}).get("ca.crt")


async def _served_leaf(port: int, context: ssl.SSLContext) -> x509.Certificate:
    """The leaf a new TLS connection gets (verified with the published CA)."""
    _, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=context, server_hostname="127.0.0.1"
    )
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return x509.load_der_x509_certificate(der)


def _due_leaf(state: pure.ServingCertificates, names: pure.ServingNames) -> dict[str, str]:
    """Secret data whose leaf, from the same CA, was issued 89 days ago: renewal is due."""
    issued = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=89)
    certificate, key = pure.build_leaf(state.authority, names, now=issued)
    return pure.to_secret_data(dataclasses.replace(state, certificate=certificate, key=key))


RETRIED = (503,)


def test_the_operator_issues_publishes_and_rotates_without_losing_a_charge(
    api_client: client.ApiClient, namespace: str, accountant: dict[str, Any]
) -> None:
    core = client.CoreV1Api(api_client)
    hush_resources.create(
        api_client, namespace, spending.budget_manifest(NAME, team_epsilon=5.0, total=10.0)
    )
    hush_resources.create(
        api_client, namespace, spending.count_policy_manifest(NAME, budget=NAME, epsilon=0.001)
    )
    hush_resources.wait_for_condition(
        api_client, namespace, "PrivacyBudget", NAME, status="True", reason="Accepted"
    )

    # The Secret and the sidecars' CA, made by the operator.
    found = waiting.wait_for(
        lambda: _secret_state_if_any(core, namespace),
        timeout=60,
        description="the operator to create the accountant's Secret",
    )
    published_or_none = waiting.wait_for(
        lambda: _published_ca(core, namespace),
        timeout=60,
        description="ConfigMap hush-accountant-ca in the policy's namespace",
    )
    assert found is not None  # wait_for returns what was truthy
    assert published_or_none is not None
    first, published = found, published_or_none
    assert published.encode() == first.ca_bundle()
    names = pure.ServingNames(
        service="hush-accountant", namespace=namespace, ip_addresses=("127.0.0.1",)
    )
    assert pure.alternative_names_of(first.certificate) == names.alternative_names()
    context = ssl.create_default_context(cadata=published)  # what a sidecar mounts

    tokens = spending.pod_bound_tokens(api_client, namespace, NAME, 4)
    policy_hash = spending.policy_hash(api_client, namespace, NAME)
    port, url = accountant["port"], accountant["url"] + "/v1/charge"
    outcome = asyncio.run(
        _burst_with_rotation(core, namespace, names, first, context, port, url, tokens, policy_hash)
    )

    # The rotation happened during the burst, to a leaf from the same CA that the published
    # bundle still verifies, and new connections got it.
    renewed = _secret_state(core, namespace)
    assert renewed.authority.certificate == first.authority.certificate
    assert renewed.certificate.serial_number != first.certificate.serial_number
    assert outcome["served_after"] == renewed.certificate
    assert _published_ca(core, namespace) == published
    assert outcome["charged_after_rotation"] > 0
    # No charge lost: every request id answered 200 in the end, each charged once.
    assert outcome["failures"] == []
    successes: dict[str, int] = outcome["successes"]
    assert len(successes) >= CHARGES
    # The ledger count equals the successes: each acknowledged id owns one sequence, every
    # sequence is owned, and the entries kept in status (the newest) agree.
    ledger = spending.ledger(api_client, namespace, NAME)
    assert chain.verify(ledger) == []
    assert sorted(successes.values()) == list(range(1, ledger.sequence + 1))
    assert ledger.sequence == len(successes)
    for entry in ledger.entries:
        assert (entry.action, successes[entry.request_id]) == ("charge", entry.sequence)
    print(
        f"{len(successes)} charges, {outcome['retries']} retries "
        f"({dict(outcome['retry_reasons'])}), {outcome['charged_after_rotation']} after the "
        "rotation was served"
    )


def _has_secret(core: client.CoreV1Api, namespace: str) -> bool:
    try:
        core.read_namespaced_secret(SECRET, namespace)
    except ApiException as error:
        if error.status == 404:
            return False
        raise
    return True


async def _burst_with_rotation(
    core: client.CoreV1Api,
    namespace: str,
    names: pure.ServingNames,
    first: pure.ServingCertificates,
    context: ssl.SSLContext,
    port: int,
    url: str,
    tokens: list[str],
    policy_hash: str,
) -> dict[str, Any]:
    successes: dict[str, int] = {}  # request id: the ledger sequence of its entry
    failures: list[tuple[str, int, Any]] = []
    retry_reasons: collections.Counter[str] = collections.Counter()
    counter = itertools.count()
    rotated = asyncio.Event()  # set once new connections get the renewed leaf
    quarter_done = asyncio.Event()  # a quarter of the burst charged: time to rotate
    charged_after_rotation = 0
    retries = 0

    async def charge(session: aiohttp.ClientSession, token: str, request_id: str) -> None:
        nonlocal retries, charged_after_rotation
        body = spending.charge_body(request_id, NAME, policy_hash)
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(20):
            try:
                async with session.post(url, json=body, headers=headers) as reply:
                    answer = await reply.json(content_type=None)
                    status = reply.status
            except (TimeoutError, aiohttp.ClientConnectionError) as error:
                # What a sidecar retries: the connection failed before an answer.
                retries += 1
                retry_reasons[type(error).__name__] += 1
                await asyncio.sleep(0.05)
                continue
            if status == 200:
                successes[request_id] = int(answer["sequence"])
                if len(successes) >= CHARGES // 4:
                    quarter_done.set()
                if rotated.is_set():
                    charged_after_rotation += 1
                return
            if status in RETRIED:
                retries += 1
                retry_reasons[str(status)] += 1
                await asyncio.sleep(0.05)
                continue
            failures.append((request_id, status, answer))
            return
        failures.append((request_id, -1, "gave up after 20 attempts"))

    async def worker(index: int) -> None:
        # Half the workers keep connections alive across the rotation; the others open a
        # new TLS connection for every charge, so they handshake with whatever is loaded.
        connector = aiohttp.TCPConnector(ssl=context, limit=2, force_close=index % 2 == 1)
        async with aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=60)
        ) as session:
            while True:
                number = next(counter)
                if number >= CHARGES and rotated.is_set() and charged_after_rotation >= 50:
                    return
                if number >= CHARGES * 5:
                    return  # the rotation never showed: the assertions say so
                await charge(session, tokens[index % len(tokens)], f"burst-{number}")

    async def rotate() -> None:
        await quarter_done.wait()
        # Replace the leaf, in the middle of the burst, with one due for renewal.
        state = await asyncio.to_thread(_secret_state, core, namespace)
        await asyncio.to_thread(
            core.patch_namespaced_secret, SECRET, namespace, {"data": _due_leaf(state, names)}
        )
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            leaf = await _served_leaf(port, context)
            if leaf.serial_number != first.certificate.serial_number:
                rotated.set()
                return
            await asyncio.sleep(0.1)

    await asyncio.gather(rotate(), *(worker(index) for index in range(WORKERS)))
    return {
        "successes": successes,
        "failures": failures,
        "retries": retries,
        "retry_reasons": retry_reasons,
        "charged_after_rotation": charged_after_rotation,
        "served_after": await _served_leaf(port, context),
    }


def test_due_leaf_data_is_from_the_same_ca() -> None:
    """The helper above really makes a leaf that the keeper must renew."""
    now = datetime.datetime.now(datetime.UTC)
    names = pure.ServingNames(service="hush-accountant", namespace="n")
    state = pure.create(names, now=now)
    data = _due_leaf(state, names)
    due = pure.from_secret_data(data)
    assert base64.b64decode(data["ca.crt"]) == state.ca_bundle()
    assert pure.is_issued_by(due.certificate, state.authority.certificate)
    decision = pure.decide(due, names=names, now=now, bundle_published=True)
    assert decision.action == "renew-leaf"
