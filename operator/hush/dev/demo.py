"""``hush dev demo`` (``make demo``): the Hush story on the local cluster, with real objects.

Every step goes through the real apiserver, the real admission chain and the real host-process
operator that ``hush dev up`` installs; nothing is simulated except what kwok cannot run
(containers), and the demo says where:

1. ``hush dev up``: the control plane, the operator, its webhooks and admission policies.
2. Namespace ``hush-demo``, re-created on every run.
3. A PrivacyBudget for one dataset with two team quotas (analytics 0.75, growth 0.25 of a
   total epsilon of 1), and a DPPolicy per team for the sample app's API.
4. The namespace is put in ``enforce`` mode; an unlabelled Deployment is refused, with the
   apiserver's message.
5. Labelled, annotated, digest-pinned Deployments: the ReplicaSet controller creates their
   pods and the webhook injects the sidecar (the Deployments themselves stay unchanged).
6. The sample app (:mod:`hush.dev.sample_app`) runs in this process; each pod's sidecar runs
   on this host with the command, args and environment of its container in the real Pod
   (:mod:`hush.dev.host_sidecar` lists what it substitutes), with a pod-bound token.
7. Queries through the sidecar: noisy answers with ``X-DP-*`` headers, an identical query
   answered from the cache without a charge, distinct queries until the team's quota is
   spent (429); the other team spends the rest and the budget turns ``Exhausted``.
8. ``hush ledger show`` and ``hush ledger verify``.
9. A changed epsilon: the old pod's sidecar refuses to release (stale policy, 503) and the
   operator rolls the Deployment to a pod with the new policy hash.

Every claim is checked: if the cluster does not behave as told, the demo stops with
``DevClusterError`` naming the step (and printing the namespace's objects and events and the
operator's log), so ``make demo`` doubles as an end-to-end check (``e2e/test_demo.py``). The
story goes to stdout, ``hush dev up``'s progress to stderr. The objects are built by the pure
``hush.dev.demo_objects``; this module is the I/O, through the cluster's own kubectl.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final, TextIO, TypeVar

import yaml

from hush.dev import (
    binaries,
    cluster,
    errors,
    host_sidecar,
    install,
    layout,
    processes,
    sample_app,
)
from hush.dev import demo_objects as objects

T = TypeVar("T")
Manifest = objects.Manifest

NAMESPACE: Final = objects.NAMESPACE
TOKEN_AUDIENCE: Final = "hush-accountant"  # noqa: S105 - an audience name
PREFERRED_APP_PORT: Final = 8080
WAIT_SECONDS: Final = 120.0
_POLL_SECONDS: Final = 0.5


# -- output ------------------------------------------------------------------------------------


class Narrator:
    """Section headers, commands as a user would type them, their output, and checked claims."""

    def __init__(self, out: TextIO, *, color: bool) -> None:
        self.out = out
        self.color = color
        self.sections = 0

    def _bold(self, text: str) -> str:
        return f"\033[1m{text}\033[0m" if self.color else text

    def section(self, title: str) -> None:
        self.sections += 1
        self.out.write(f"\n{self._bold(f'==> {self.sections}. {title}')}\n")
        self.out.flush()

    def say(self, text: str) -> None:
        for paragraph in text.split("\n"):
            self.out.write(textwrap.fill(paragraph, width=96) + "\n")
        self.out.flush()

    def command(self, text: str) -> None:
        self.out.write(f"$ {text}\n")
        self.out.flush()

    def output(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines():
            self.out.write(f"    {line}\n")
        self.out.flush()

    def claim(self, text: str) -> None:
        self.out.write(f"  => {text}\n")
        self.out.flush()


def _names(manifests: Sequence[Manifest]) -> str:
    return ", ".join(f"{m['kind']}/{m['metadata']['name']}" for m in manifests)


def _manifest_yaml(manifests: Sequence[Manifest]) -> str:
    return yaml.safe_dump_all(list(manifests), sort_keys=False, width=100)


# -- the cluster, through kubectl ---------------------------------------------------------------


class Kubectl:
    """The cluster's own kubectl with the admin kubeconfig; commands are shown without it."""

    def __init__(self, executable: Path, kubeconfig: Path, narrator: Narrator) -> None:
        self.executable = executable
        self.kubeconfig = kubeconfig
        self.narrator = narrator

    def run(
        self,
        arguments: Sequence[str],
        *,
        stdin: str | None = None,
        stdin_description: str = "",
        show: bool = True,
        check: bool = True,
    ) -> subprocess.CompletedProcess[str]:
        if show:
            suffix = f" <<EOF   # {stdin_description}" if stdin_description else ""
            self.narrator.command("kubectl " + " ".join(arguments) + suffix)
        try:
            result = subprocess.run(
                [str(self.executable), f"--kubeconfig={self.kubeconfig}", *arguments],
                input=stdin,
                capture_output=True,
                text=True,
                timeout=WAIT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise errors.DevClusterError(
                f"kubectl {' '.join(arguments)} did not finish in {WAIT_SECONDS:.0f}s"
            ) from error
        if show:
            self.narrator.output(result.stdout + result.stderr)
        if check and result.returncode != 0:
            raise errors.DevClusterError(
                f"kubectl {' '.join(arguments)} failed (exit {result.returncode}): "
                f"{result.stderr.strip()}"
            )
        return result

    def apply(self, manifests: Sequence[Manifest], *, show: bool = True) -> None:
        self.run(
            ["apply", "-f", "-"],
            stdin=_manifest_yaml(manifests),
            stdin_description=_names(manifests),
            show=show,
        )

    def get(self, resource: str, *arguments: str) -> Manifest:
        result = self.run(
            ["get", resource, f"--namespace={NAMESPACE}", *arguments, "--output=json"],
            show=False,
        )
        document: Manifest = json.loads(result.stdout)
        return document


def _wait_for(description: str, probe: Callable[[], T | None], timeout: float = WAIT_SECONDS) -> T:
    """Poll ``probe`` until it returns a value; ``DevClusterError`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        found = probe()
        if found is not None:
            return found
        if time.monotonic() > deadline:
            raise errors.DevClusterError(
                f"Timed out after {timeout:.0f}s waiting for {description}"
            )
        time.sleep(_POLL_SECONDS)


def _check(condition: bool, problem: str) -> None:
    if not condition:
        raise errors.DevClusterError(f"The demo's claim failed: {problem}")


# -- HTTP through the sidecar ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(url: str) -> Reply:
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:  # noqa: S310 - http to loopback
            return Reply(answer.status, dict(answer.headers), answer.read())
    except urllib.error.HTTPError as error:
        return Reply(error.code, dict(error.headers), error.read())
    except OSError as error:  # URLError included: nothing listens, or no answer in time
        raise errors.DevClusterError(f"GET {url} failed: {error}") from error


DP_HEADERS: Final = (
    "X-DP-Epsilon",
    "X-DP-Delta",
    "X-DP-Mechanism",
    "X-DP-Budget-Remaining",
    "X-DP-Policy-Hash",
    "X-DP-Cache",
)


@dataclasses.dataclass
class Story:
    """What the steps share."""

    narrator: Narrator
    kubectl: Kubectl
    cluster_layout: layout.ClusterLayout
    kubeconfig: Path
    bin_dir: Path
    environ: Mapping[str, str]
    stack: contextlib.ExitStack
    app_port: int = 0
    sidecars: dict[str, host_sidecar.HostSidecar] = dataclasses.field(default_factory=dict)

    def query(self, app: str, path: str, *, show_raw: bool = True) -> Reply:
        sidecar = self.sidecars[app]
        url = f"http://127.0.0.1:{sidecar.listen_port}{path}"
        self.narrator.command(f"curl -i '{url}'   # {app}'s sidecar")
        reply = http_get(url)
        self.narrator.output(f"HTTP {reply.status}  {reply.body.decode(errors='replace')}")
        headers = [f"{name}: {reply.headers[name]}" for name in DP_HEADERS if name in reply.headers]
        if headers:
            self.narrator.output("  ".join(headers))
        if show_raw and reply.status == 200:
            raw = http_get(f"http://127.0.0.1:{self.app_port}{path}")
            self.narrator.output(
                f"(the app's raw answer, which never leaves the pod: {raw.body.decode()})"
            )
        return reply

    def ledger_sequence(self) -> int:
        budget = self.kubectl.get(f"privacybudget/{objects.BUDGET}")
        return int(((budget.get("status") or {}).get("ledger") or {}).get("sequence") or 0)

    def hush(self, *arguments: str) -> subprocess.CompletedProcess[str]:
        """Run the ``hush`` CLI of this checkout as a user would, against the demo cluster."""
        self.narrator.command("hush " + " ".join(arguments))
        try:
            result = subprocess.run(
                [sys.executable, "-m", "hush", *arguments],
                capture_output=True,
                text=True,
                env={**self.environ, "KUBECONFIG": str(self.kubeconfig)},
                timeout=WAIT_SECONDS,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise errors.DevClusterError(
                f"hush {' '.join(arguments)} did not finish in {WAIT_SECONDS:.0f}s"
            ) from error
        self.narrator.output(result.stdout + result.stderr)
        return result


# -- the steps ---------------------------------------------------------------------------------


def _cluster_with_hush(story: Story) -> None:
    narrator = story.narrator
    narrator.say(
        "`hush dev up` started (or reused) a real control plane on 127.0.0.1 (etcd, "
        "kube-apiserver, controller-manager, scheduler, kwok fake nodes) and installed Hush: "
        "the CRDs, the operator as a host process (accountant and admission webhooks on "
        "loopback), the webhook configurations and the ValidatingAdmissionPolicies."
    )
    state = cluster.status(name=story.cluster_layout.name, environ=story.environ)
    operator = state.operator
    _check(
        operator is not None and operator.state == "running",
        f"the Hush operator is not running: {operator}",
    )
    if operator is not None and operator.ports is not None:
        narrator.output(
            f"operator pid {operator.pid}, log {operator.log_file}\n"
            f"accountant {operator.ports.accountant_url}, webhooks {operator.ports.webhook_url}"
        )
    story.kubectl.run(
        [
            "get",
            "mutatingwebhookconfigurations,validatingwebhookconfigurations",
            "--selector=app.kubernetes.io/name=hush",
        ]
    )
    story.kubectl.run(
        ["get", "validatingadmissionpolicies", "--selector=app.kubernetes.io/part-of=hush"]
    )


def _fresh_namespace(story: Story) -> None:
    story.narrator.say(f"Everything happens in namespace {NAMESPACE}, re-created on every run.")
    exists = story.kubectl.run(["get", "namespace", NAMESPACE], show=False, check=False)
    if exists.returncode == 0:
        story.kubectl.run(
            [
                "delete",
                "namespace",
                NAMESPACE,
                "--wait=true",
                f"--timeout={WAIT_SECONDS:.0f}s",
            ]
        )
    story.kubectl.run(["create", "namespace", NAMESPACE])


def _budget_and_policies(story: Story) -> None:
    narrator = story.narrator
    narrator.say(
        f"The privacy owner gives dataset {objects.DATASET} a lifetime budget of epsilon "
        f"{objects.TOTAL_EPSILON:g}, carved into two team quotas. Every charge must fit both the "
        "team's quota and the dataset's total: two teams querying the same people add up."
    )
    budget = objects.build_budget()
    narrator.output(_manifest_yaml([budget]))
    story.kubectl.apply([budget])
    story.kubectl.run(
        [
            "wait",
            f"--namespace={NAMESPACE}",
            f"privacybudget/{objects.BUDGET}",
            "--for=condition=Ready",
            "--timeout=60s",
        ]
    )
    narrator.say(
        "Each team's API gets a DPPolicy: which routes it may release, with which noise and "
        f"epsilon, charged to which quota. The {objects.ANALYTICS} team's sample app may "
        "release a count, an income sum and an age histogram, each at epsilon "
        f"{objects.ROUTE_EPSILON:g}; the {objects.GROWTH} team's dashboard only a count."
    )
    analytics = objects.build_analytics_policy(story.app_port)
    narrator.output(_manifest_yaml([analytics]))
    story.kubectl.apply([analytics, objects.build_growth_policy(story.app_port)])
    story.kubectl.run(
        [
            "wait",
            f"--namespace={NAMESPACE}",
            f"dppolicy/{objects.ANALYTICS_POLICY}",
            f"dppolicy/{objects.GROWTH_POLICY}",
            "--for=condition=Ready",
            "--timeout=60s",
        ]
    )
    story.kubectl.run(["get", "privacybudgets,dppolicies", f"--namespace={NAMESPACE}"])


def _enforcement(story: Story) -> None:
    narrator = story.narrator
    narrator.say(
        f"The platform team enforces the rules in {NAMESPACE}. Only the operator and the "
        "groups the install names may change this label (a ValidatingAdmissionPolicy); "
        "`hush dev up` names the dev admin's group, system:masters."
    )
    story.kubectl.run(["label", "namespace", NAMESPACE, f"{objects.ENFORCEMENT_LABEL}=enforce"])
    narrator.say(
        "Each application runs as its own ServiceAccount: its sidecar authenticates to the "
        "accountant with a token bound to its pod."
    )
    story.kubectl.apply(
        [
            objects.build_service_account(objects.ANALYTICS_APP),
            objects.build_service_account(objects.GROWTH_APP),
        ]
    )
    unlabelled = objects.build_unlabelled_deployment(story.app_port)
    analytics = objects.build_analytics_deployment(story.app_port)
    admitted = [analytics, objects.build_pod_from_template(analytics, "admission-check")]

    def enforced() -> bool | None:
        # The apiserver's admission sees the new label through an informer, and the
        # operator's first lookups are cold (a fresh client): wait, with server-side dry runs
        # that change nothing, until the unlabelled Deployment is refused and the labelled
        # one (and a pod of it, through the injector) would be admitted.
        refused = story.kubectl.run(
            ["apply", "--dry-run=server", "-f", "-"],
            stdin=_manifest_yaml([unlabelled]),
            show=False,
            check=False,
        )
        accepted = story.kubectl.run(
            ["create", "--dry-run=server", "-f", "-"],
            stdin=_manifest_yaml(admitted),
            show=False,
            check=False,
        )
        return True if refused.returncode != 0 and accepted.returncode == 0 else None

    _wait_for("enforcement to take effect in the apiserver", enforced, timeout=60)
    narrator.say(
        "An application team applies a Deployment without the team and sensitivity labels:"
    )
    narrator.output(_manifest_yaml([unlabelled]))
    result = story.kubectl.run(
        ["apply", "-f", "-"],
        stdin=_manifest_yaml([unlabelled]),
        stdin_description=_names([unlabelled]),
        check=False,
    )
    _check(result.returncode != 0, "the unlabelled Deployment was admitted")
    _check(objects.TEAM_LABEL in result.stderr, f"the refusal does not name {objects.TEAM_LABEL}")
    narrator.claim("Refused by the apiserver, with what is missing and how to fix it.")


def _injected_deployments(story: Story) -> dict[str, Manifest]:
    narrator = story.narrator
    narrator.say(
        "Labelled, pinned by digest (confidential data requires it) and annotated "
        f"{objects.POLICY_ANNOTATION}: the Deployments are admitted, and the webhook injects "
        "the noise sidecar into the pods that the ReplicaSet controller creates."
    )
    analytics = objects.build_analytics_deployment(story.app_port)
    narrator.output(_manifest_yaml([analytics]))
    story.kubectl.apply([analytics, objects.build_growth_deployment(story.app_port)])
    pods = {
        app: _wait_for_injected_pod(story, app, None)
        for app in (objects.ANALYTICS_APP, objects.GROWTH_APP)
    }
    story.kubectl.run(
        [
            "get",
            "pods",
            f"--namespace={NAMESPACE}",
            "--output=custom-columns=POD:.metadata.name,INIT-CONTAINERS:.spec.initContainers[*].name,"
            "CONTAINERS:.spec.containers[*].name,POLICY-HASH:.metadata.annotations.hush\\.dev/policy-hash",
        ]
    )
    pod = pods[objects.ANALYTICS_APP]
    name = pod["metadata"]["name"]
    narrator.command(f"kubectl get pod {name} --namespace={NAMESPACE} --output=yaml   # excerpt")
    narrator.output(yaml.safe_dump(objects.pod_excerpt(pod), sort_keys=False, width=100))
    deployment = story.kubectl.get(f"deployment/{objects.ANALYTICS_APP}")
    template_spec = deployment["spec"]["template"]["spec"]
    _check(
        not template_spec.get("initContainers"),
        "the Deployment itself was mutated (GitOps tools would see drift)",
    )
    narrator.claim(
        "A native sidecar (init container, restartPolicy Always), non-root, read-only root "
        "filesystem, no capabilities; the app's port renamed so Services reach the sidecar; "
        "the whole policy and its hash baked into the pod. The Deployment itself is unchanged."
    )
    return pods


def _wait_for_injected_pod(story: Story, app: str, policy_hash: str | None) -> Manifest:
    """The live (not terminating) pod of ``app`` with the sidecar, at ``policy_hash`` if given."""

    def find() -> Manifest | None:
        listed = story.kubectl.get("pods", f"--selector=app={app}")
        for pod in listed.get("items", []):
            metadata = pod.get("metadata") or {}
            if metadata.get("deletionTimestamp"):
                continue
            names = [c.get("name") for c in (pod.get("spec") or {}).get("initContainers") or []]
            current = (metadata.get("annotations") or {}).get(objects.POLICY_HASH_ANNOTATION)
            if host_sidecar.CONTAINER_NAME in names and policy_hash in (None, current):
                found: Manifest = pod
                return found
        return None

    what = f"a pod of Deployment {app} with the sidecar" + (
        f" at policy hash {policy_hash}" if policy_hash else ""
    )
    return _wait_for(what, find)


def _pod_token(story: Story, pod: Manifest) -> Path:
    metadata = pod["metadata"]
    account = pod["spec"].get("serviceAccountName", "default")
    result = story.kubectl.run(
        [
            "create",
            "token",
            account,
            f"--namespace={NAMESPACE}",
            f"--audience={TOKEN_AUDIENCE}",
            "--bound-object-kind=Pod",
            f"--bound-object-name={metadata['name']}",
            f"--bound-object-uid={metadata['uid']}",
            "--duration=1h",
        ],
        show=False,
    )
    directory = story.cluster_layout.state_dir / "demo"
    directory.mkdir(mode=0o700, exist_ok=True)
    path = directory / f"{metadata['name']}.token"
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(result.stdout.strip())
    return path


def _start_sidecar(story: Story, app: str, pod: Manifest) -> None:
    narrator = story.narrator
    container = host_sidecar.sidecar_container(pod)
    baked = host_sidecar.baked_config(container)
    taken = {sidecar.listen_port for sidecar in story.sidecars.values()} | {
        sidecar.admin_port for sidecar in story.sidecars.values()
    }

    def port_for(port: int) -> int | None:
        if port not in taken and host_sidecar.port_is_free(port):
            return None
        return host_sidecar.free_port()

    narrator.command(
        f"kubectl create token {pod['spec'].get('serviceAccountName', 'default')} "
        f"--namespace={NAMESPACE} --audience={TOKEN_AUDIENCE} --bound-object-kind=Pod "
        f"--bound-object-name={pod['metadata']['name']} --bound-object-uid=… --duration=1h"
    )
    token = _pod_token(story, pod)
    sidecar = host_sidecar.host_command(
        container,
        python=sys.executable,
        substitutions=host_sidecar.Substitutions(
            token_path=token,
            ca_path=install.files_for(story.cluster_layout).certificate,
            listen_port=port_for(int(baked["listenPort"])),
            admin_port=port_for(int(baked["adminPort"])),
        ),
    )
    shown = " ".join(["hush", *sidecar.argv[3:]])
    narrator.command(f"HUSH_SIDECAR_CONFIG=… {shown} &   # from pod {pod['metadata']['name']}")
    narrator.output("\n".join(f"substituted {change}" for change in sidecar.changes))
    name = f"demo-sidecar-{app}"
    story.stack.enter_context(
        host_sidecar.running(
            sidecar,
            log_file=story.cluster_layout.log_file(name),
            pid_file=story.cluster_layout.pid_file(name),
        )
    )
    story.sidecars[app] = sidecar
    narrator.claim(
        f"{app}'s sidecar is ready on 127.0.0.1:{sidecar.listen_port}, in front of the app on "
        f"port {story.app_port}, enforcing policy hash {sidecar.policy_hash}."
    )


def _sidecars(story: Story, pods: Mapping[str, Manifest]) -> None:
    story.narrator.say(
        "kwok runs no containers, so each pod's sidecar runs here: the command, args and "
        "environment of the hush-sidecar container of the real Pod, changing only what a host "
        "cannot share with a pod. The sample app (a small HTTP API over a fixed synthetic "
        f"dataset of {len(sample_app.PEOPLE)} people) runs in this demo process on port "
        f"{story.app_port}."
    )
    for app in (objects.ANALYTICS_APP, objects.GROWTH_APP):
        _start_sidecar(story, app, pods[app])


def _queries(story: Story) -> None:
    narrator = story.narrator
    narrator.say(
        "An analyst queries the analytics API through its sidecar: every answer is noised, "
        "charged to the team's quota before it is released, and labelled."
    )
    first = story.query(objects.ANALYTICS_APP, "/count?region=north")
    _check(first.status == 200, f"the first query answered {first.status}")
    _check("X-DP-Epsilon" in first.headers, "the answer has no X-DP-Epsilon header")
    narrator.say("The identical query again: the same noisy answer from the cache, not charged.")
    before = story.ledger_sequence()
    again = story.query(objects.ANALYTICS_APP, "/count?region=north", show_raw=False)
    _check(
        again.status == 200 and again.body == first.body, "the repeated query got another answer"
    )
    _check(again.headers.get("X-DP-Cache") == "hit", "the repeated query was not a cache hit")
    _check(story.ledger_sequence() == before, "the repeated query was charged")
    narrator.claim(
        f"Identical answer, X-DP-Cache: hit, ledger still at {before} entries: repeating a "
        "query cannot average the noise away."
    )
    narrator.say(
        f"Distinct queries until the {objects.ANALYTICS} quota "
        f"({objects.QUOTAS[objects.ANALYTICS]:g}) is spent:"
    )
    queries = [
        "/income?region=north",
        "/ages?region=north",
        *(f"/count?region={region}" for region in sample_app.REGIONS[1:]),
    ]
    refusal: Reply | None = None
    for path in queries:
        reply = story.query(objects.ANALYTICS_APP, path)
        if reply.status == 429:
            refusal = reply
            break
        _check(reply.status == 200, f"{path} answered {reply.status}")
    _check(refusal is not None, f"the {objects.ANALYTICS} quota was never exhausted")
    narrator.claim(
        "429: the next release would overspend the team's quota, so the sidecar refused it "
        "without releasing anything."
    )


def _exhausted(story: Story) -> None:
    narrator = story.narrator
    narrator.say(
        f"The {objects.GROWTH} team's dashboard still has its own quota "
        f"({objects.QUOTAS[objects.GROWTH]:g}) and spends it; together the two teams spend the "
        "whole dataset's budget."
    )
    reply = story.query(objects.GROWTH_APP, "/count?region=east")
    _check(reply.status == 200, f"the {objects.GROWTH} team's query answered {reply.status}")
    refused = story.query(objects.GROWTH_APP, "/count?region=west")
    _check(
        refused.status == 429, f"the {objects.GROWTH} team's second query answered {refused.status}"
    )

    def exhausted() -> Manifest | None:
        budget = story.kubectl.get(f"privacybudget/{objects.BUDGET}")
        return budget if (budget.get("status") or {}).get("state") == "Exhausted" else None

    _wait_for("the budget to turn Exhausted", exhausted, timeout=60)
    story.kubectl.run(["get", "privacybudgets", f"--namespace={NAMESPACE}"])
    story.kubectl.run(
        [
            "get",
            f"privacybudget/{objects.BUDGET}",
            f"--namespace={NAMESPACE}",
            "--output=jsonpath={range .status.teams[*]}team {.team}: spent {.epsilon.spent} of "
            "{.epsilon.total}{'\\n'}{end}{range .status.conditions[*]}{.type}={.status} "
            "{.reason}: {.message}{'\\n'}{end}",
        ]
    )
    narrator.claim(
        f"PrivacyBudget {objects.BUDGET} is Exhausted: every further release is refused."
    )


def _ledger(story: Story) -> None:
    story.narrator.say(
        "Every charge is in the budget's hash-chained ledger, with its mechanism, epsilon, "
        "consumer and request id. `verify` recomputes the chain and the totals."
    )
    shown = story.hush("ledger", "show", objects.BUDGET, f"--namespace={NAMESPACE}")
    _check(shown.returncode == 0, "hush ledger show failed")
    verified = story.hush("ledger", "verify", objects.BUDGET, f"--namespace={NAMESPACE}")
    _check(verified.returncode == 0 and "verified" in verified.stdout, "hush ledger verify failed")


def _policy_change(story: Story, pods: Mapping[str, Manifest]) -> None:
    narrator = story.narrator
    old_pod = pods[objects.ANALYTICS_APP]
    old_hash = story.sidecars[objects.ANALYTICS_APP].policy_hash
    narrator.say(
        "The privacy owner lowers the count route's epsilon to "
        f"{objects.CHANGED_EPSILON:g}. Sidecar configuration is baked into pods and keyed by "
        "the policy hash, so the change is "
        "delivered by replacing pods, never by editing a running one."
    )
    story.kubectl.run(
        [
            "patch",
            f"dppolicy/{objects.ANALYTICS_POLICY}",
            f"--namespace={NAMESPACE}",
            "--type=json",
            f'--patch=[{{"op": "replace", "path": "/spec/routes/0/epsilon", '
            f'"value": {objects.CHANGED_EPSILON}}}]',
        ]
    )

    def new_hash() -> str | None:
        policy = story.kubectl.get(f"dppolicy/{objects.ANALYTICS_POLICY}")
        current = (policy.get("status") or {}).get("policyHash")
        return str(current) if current and current != old_hash else None

    changed = _wait_for("the operator to hash the changed policy", new_hash, timeout=60)
    narrator.claim(f"Policy hash {old_hash} -> {changed}.")
    narrator.say(
        "The old pod's sidecar stops releasing at once: the accountant refuses its next charge "
        "(its baked hash is stale), and from then on it refuses even answers it has cached."
    )
    stale = story.query(objects.ANALYTICS_APP, "/income?region=central", show_raw=False)
    _check(stale.status == 503, f"the stale sidecar answered {stale.status}")
    _check(stale.json().get("error") == "stale-policy", f"the stale sidecar said {stale.body!r}")
    cached = story.query(objects.ANALYTICS_APP, "/count?region=north", show_raw=False)
    _check(cached.status == 503, f"the stale sidecar served a cached answer ({cached.status})")
    admin = story.sidecars[objects.ANALYTICS_APP].admin_port
    narrator.command(f"curl -i http://127.0.0.1:{admin}/readyz")
    readiness = http_get(f"http://127.0.0.1:{admin}/readyz")
    narrator.output(f"HTTP {readiness.status}  {readiness.body.decode(errors='replace')}")
    _check(readiness.status == 503, "the stale sidecar still reports ready")
    narrator.say(
        "...and the operator rolls every workload that uses the policy: a new pod, injected "
        "with the new hash, replaces the old one."
    )
    new_pod = _wait_for_injected_pod(story, objects.ANALYTICS_APP, changed)

    def old_pod_gone() -> bool | None:
        listed = story.kubectl.get("pods", f"--selector=app={objects.ANALYTICS_APP}")
        names = {pod["metadata"]["name"] for pod in listed.get("items", [])}
        return True if old_pod["metadata"]["name"] not in names else None

    _wait_for(f"the old pod {old_pod['metadata']['name']} to go", old_pod_gone)
    story.kubectl.run(
        [
            "get",
            "pods",
            f"--namespace={NAMESPACE}",
            f"--selector=app={objects.ANALYTICS_APP}",
            "--output=custom-columns=POD:.metadata.name,PHASE:.status.phase,"
            "POLICY-HASH:.metadata.annotations.hush\\.dev/policy-hash",
        ]
    )

    def rollout_complete() -> bool | None:
        policy = story.kubectl.get(f"dppolicy/{objects.ANALYTICS_POLICY}")
        status = policy.get("status") or {}
        complete = any(
            condition.get("type") == "RolloutComplete" and condition.get("status") == "True"
            for condition in status.get("conditions") or []
        )
        desired = (status.get("rollout") or {}).get("desiredHash")
        return True if complete and desired == changed else None

    _wait_for("the DPPolicy to report RolloutComplete", rollout_complete)
    baked = host_sidecar.baked_config(host_sidecar.sidecar_container(new_pod))
    epsilon = baked["policy"]["routes"][0]["epsilon"]
    _check(float(epsilon) == objects.CHANGED_EPSILON, f"the new pod baked epsilon {epsilon}")
    story.kubectl.run(
        [
            "get",
            f"dppolicy/{objects.ANALYTICS_POLICY}",
            f"--namespace={NAMESPACE}",
            "--output=jsonpath={range .status.conditions[*]}{.type}={.status} {.reason}: "
            "{.message}{'\\n'}{end}",
        ]
    )
    narrator.claim(
        f"Pod {new_pod['metadata']['name']} runs policy hash {changed} (count epsilon "
        f"{epsilon}); the old pod is gone. Privacy-relevant changes are all-or-nothing."
    )


def _what_next(story: Story, elapsed: float) -> None:
    name = story.cluster_layout.name
    venv_bin = Path(sys.executable).parent
    operator_log = story.cluster_layout.log_file(install.OPERATOR_PROCESS)
    story.narrator.section("What to try next")
    story.narrator.say(
        f"The demo took {elapsed:.0f}s. Cluster {name} keeps running, with Hush and the demo "
        "objects, until you stop it. The sample app and the sidecars stopped with the demo."
    )
    story.narrator.output(
        "\n".join(
            [
                f"export KUBECONFIG={story.kubeconfig}",
                f"export PATH={story.bin_dir}:{venv_bin}:$PATH   # this cluster's kubectl, hush",
                f"kubectl -n {NAMESPACE} get privacybudgets,dppolicies,deployments,pods",
                f"kubectl -n {NAMESPACE} describe dppolicy {objects.ANALYTICS_POLICY}   # rollout",
                f"kubectl -n {NAMESPACE} get events --sort-by=.lastTimestamp",
                f"hush ledger export {objects.BUDGET} -n {NAMESPACE}",
                "hush audit   # workloads in enforced namespaces that break the rules",
                f"kubectl label namespace {NAMESPACE} {objects.ENFORCEMENT_LABEL}=warn --overwrite",
                f"    # then apply the {objects.UNLABELLED_APP} Deployment again: a warning,"
                " not a refusal",
                f"hush dev status --name {name}",
                f"tail -f {operator_log}",
                f"hush dev down --name {name}   # stop everything and delete the cluster",
            ]
        )
    )


# -- entry point -------------------------------------------------------------------------------


def _app_port() -> int:
    if host_sidecar.port_is_free(PREFERRED_APP_PORT):
        return PREFERRED_APP_PORT
    return host_sidecar.free_port()


@contextlib.contextmanager
def _story(name: str, environ: Mapping[str, str], out: TextIO, color: bool) -> Iterator[Story]:
    narrator = Narrator(out, color=color)
    narrator.section(f"Local cluster {name} with Hush installed")
    narrator.command(f"hush dev up --name {name}")
    kubeconfig = cluster.up(
        name=name,
        nodes=None,
        environ=environ,
        install_hush=True,
        now=datetime.datetime.now(datetime.UTC),
    )
    narrator.output(str(kubeconfig))
    recorded = cluster.bin_dir(name=name, environ=environ)
    bins = binaries.Binaries(recorded) if recorded is not None else binaries.locate(environ)
    with contextlib.ExitStack() as stack:
        yield Story(
            narrator=narrator,
            kubectl=Kubectl(bins.kubectl, kubeconfig, narrator),
            cluster_layout=layout.layout_for(name, environ),
            kubeconfig=kubeconfig,
            bin_dir=bins.bin_dir,
            environ=environ,
            stack=stack,
        )


def run(
    *, name: str, environ: Mapping[str, str], color: bool = False, out: TextIO | None = None
) -> float:
    """Tell the story on cluster ``name``; return its duration in seconds."""
    began = time.monotonic()
    with _story(name, environ, out or sys.stdout, color) as story:
        try:
            return _tell(story, began)
        except errors.DevClusterError:
            _diagnostics(story)
            raise


def _diagnostics(story: Story) -> None:
    """What a failed step needs to be understood: objects, events, the operator's log."""
    story.narrator.section("The demo failed; what the cluster shows")
    for arguments in (
        [
            "get",
            "deployments,replicasets,pods",
            f"--namespace={NAMESPACE}",
            "--output=wide",
        ],
        ["get", "events", f"--namespace={NAMESPACE}", "--sort-by=.lastTimestamp"],
    ):
        story.kubectl.run(arguments, check=False)
    log_file = story.cluster_layout.log_file(install.OPERATOR_PROCESS)
    story.narrator.command(f"tail -n 30 {log_file}")
    story.narrator.output(processes.log_tail(log_file, lines=30))


def _tell(story: Story, began: float) -> float:
    narrator = story.narrator
    _cluster_with_hush(story)
    narrator.section(f"A fresh namespace, {NAMESPACE}")
    _fresh_namespace(story)
    story.app_port = story.stack.enter_context(sample_app.serving("127.0.0.1", _app_port()))
    narrator.section("A budget with two team quotas, and a policy per team")
    _budget_and_policies(story)
    narrator.section("Enforcement: an unlabelled Deployment is refused")
    _enforcement(story)
    narrator.section("An annotated Deployment: its pods get the sidecar")
    pods = _injected_deployments(story)
    narrator.section("The pods' sidecars, run on this host")
    _sidecars(story, pods)
    narrator.section("Queries through the sidecar: noised, labelled, cached, charged")
    _queries(story)
    narrator.section("Two teams, one dataset: the budget is exhausted")
    _exhausted(story)
    narrator.section("The ledger")
    _ledger(story)
    narrator.section("A policy change rolls the workload")
    _policy_change(story, pods)
    elapsed = time.monotonic() - began
    _what_next(story, elapsed)
    return elapsed
