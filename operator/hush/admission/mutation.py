"""The Pod mutation: inject the noise sidecar into pods annotated ``hush.dev/policy``.

``mutate_pod`` is a pure function of the Pod, the DPPolicy it names (looked up by the
server) and the operator's injection settings. It returns a ``Mutation``: a JSON Patch, a
refusal with a reason, or nothing to do. The rules:

- Only Pod CREATE is mutated (never Deployments: GitOps tools would see drift, and never
  running pods: invariant 6).
- Exactly once: a pod that already has a container named ``hush-sidecar`` gets no patch, so
  re-running the webhook on its own output changes nothing (reinvocation, retries, a second
  webhook that copies the pod).
- The sidecar is a *native* sidecar: an init container with ``restartPolicy: Always``, so it
  starts before and stops after the app, and Jobs still complete.
- The app's port that the policy names (``spec.upstream.port``) is renamed to
  ``hush-upstream`` and the sidecar's listening port takes its old name, so Services that
  target the port by name reach the sidecar. An unnamed port is reported as a warning:
  Services that target it by number bypass the sidecar.
- Refused, with the fix: host-network pods (the sidecar's ports would be the node's, and the
  app's raw port would be reachable on the node), a missing or unready policy, a policy that
  does not parse.
- Stamped: ``hush.dev/injected`` (the injector version) and ``hush.dev/policy-hash`` (the
  hash of the normalised policy spec, the same one the accountant checks), and labelled
  ``hush.dev/policy`` so that the operator watches injected pods by label selector.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Mapping, Sequence
from typing import Any

import pydantic

from hush.api import dppolicy
from hush.injection import sidecar
from hush.reconcile import dppolicy as dppolicy_reconcile

POLICY_ANNOTATION = "hush.dev/policy"
POLICY_LABEL = "hush.dev/policy"
MAX_LABEL_VALUE_LENGTH = 63
INJECTED_ANNOTATION = "hush.dev/injected"
POLICY_HASH_ANNOTATION = "hush.dev/policy-hash"
INJECTOR_VERSION = "v1"
UPSTREAM_PORT_NAME = "hush-upstream"
UNNAMED_SIDECAR_PORT_NAME = "hush-dp"
# Ports the sidecar may listen on; the first two not used by the pod are taken.
CANDIDATE_PORTS = (15080, 15090, 15081, 15091, 15082, 15092)
ACCOUNTANT_CA_CONFIG_MAP = "hush-accountant-ca"


@dataclasses.dataclass(frozen=True, kw_only=True)
class Settings:
    """What the operator injects (from ``hush operator`` flags)."""

    image: str  # pinned by digest: name@sha256:...
    accountant_url: str
    ca_config_map: str = ACCOUNTANT_CA_CONFIG_MAP
    resources: Mapping[str, Mapping[str, str]] = dataclasses.field(
        default_factory=lambda: {k: dict(v) for k, v in sidecar.DEFAULT_RESOURCES.items()}
    )

    @functools.cached_property
    def resources_json(self) -> str:
        return json.dumps(self.resources, sort_keys=True)

    def __post_init__(self) -> None:
        if "@sha256:" not in self.image:
            raise ValueError(
                f"The sidecar image {self.image} is not pinned by digest: "
                "use <repository>@sha256:<digest>"
            )


@dataclasses.dataclass(frozen=True, kw_only=True)
class Mutation:
    """``allowed`` with a JSON Patch (``patch_json``, possibly empty), or refused with
    ``message``. The patch is kept encoded, as the AdmissionReview answer carries it."""

    allowed: bool
    patch_json: str = ""
    message: str = ""
    warnings: tuple[str, ...] = ()
    policy_name: str = ""
    policy_hash: str = ""

    @property
    def patch(self) -> tuple[dict[str, Any], ...]:
        """The patch's operations, decoded (for tests and tooling; the webhook sends
        ``patch_json`` as it is)."""
        return tuple(json.loads(self.patch_json)) if self.patch_json else ()

    @property
    def injected(self) -> bool:
        return self.allowed and bool(self.patch_json)


def policy_name_of(pod: Mapping[str, Any]) -> str | None:
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    name = annotations.get(POLICY_ANNOTATION)
    return name if isinstance(name, str) and name else None


def is_injected(pod: Mapping[str, Any]) -> bool:
    spec = pod.get("spec") or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    return any(container.get("name") == sidecar.CONTAINER_NAME for container in containers)


def _escape(key: str) -> str:
    """A JSON Pointer token (RFC 6901)."""
    return key.replace("~", "~0").replace("/", "~1")


def _refuse(message: str, policy_name: str = "") -> Mutation:
    return Mutation(allowed=False, message=message, policy_name=policy_name)


def _ready_problem(policy: Mapping[str, Any]) -> str | None:
    for condition in (policy.get("status") or {}).get("conditions") or []:
        if condition.get("type") == dppolicy_reconcile.READY and condition.get("status") == "False":
            return f"{condition.get('reason')}: {condition.get('message')}"
    return None


def _used_ports(spec: Mapping[str, Any]) -> set[int]:
    used: set[int] = set()
    for container in [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]:
        for port in container.get("ports") or []:
            if isinstance(port.get("containerPort"), int):
                used.add(port["containerPort"])
    return used


def _free_ports(spec: Mapping[str, Any], count: int) -> list[int]:
    used = _used_ports(spec)
    return [port for port in CANDIDATE_PORTS if port not in used][:count]


def _find_upstream_port(
    containers: Sequence[Mapping[str, Any]], port_number: int
) -> tuple[int, int] | None:
    """(container index, port index) of the app's port the policy names."""
    for container_index, container in enumerate(containers):
        for port_index, port in enumerate(container.get("ports") or []):
            if port.get("containerPort") == port_number:
                return container_index, port_index
    return None


# One encoder for every operation: ``json.dumps(..., separators=...)`` builds a new
# JSONEncoder per call, which cost more than the encoding of these small operations.
_encode = json.JSONEncoder(separators=(",", ":")).encode


@functools.lru_cache(maxsize=16)
def _volume_operation(ca_config_map: str, append: bool) -> str:
    volume = sidecar.build_accountant_volume(ca_config_map=ca_config_map)
    if append:
        return _encode({"op": "add", "path": "/spec/volumes/-", "value": volume})
    return _encode({"op": "add", "path": "/spec/volumes", "value": [volume]})


# A DPPolicy's canonical spec JSON by (namespace, name, uid, resourceVersion): the apiserver
# never gives one uid and resourceVersion two specs, so the webhook encodes each version of a
# policy once instead of once per pod. Bounded: dropped whole when full.
_SPEC_JSON_CACHE: dict[tuple[str, str, str, str], str] = {}
_SPEC_JSON_CACHE_SIZE = 256


def _spec_json(policy: Mapping[str, Any]) -> str:
    metadata = policy.get("metadata") or {}
    namespace, name, uid, version = (
        str(metadata.get(field) or "") for field in ("namespace", "name", "uid", "resourceVersion")
    )
    key = (namespace, name, uid, version)
    cached = _SPEC_JSON_CACHE.get(key) if uid and version else None
    if cached is not None:
        return cached
    encoded = json.dumps(policy.get("spec") or {}, sort_keys=True, separators=(",", ":"))
    if uid and version:
        if len(_SPEC_JSON_CACHE) >= _SPEC_JSON_CACHE_SIZE:
            _SPEC_JSON_CACHE.clear()
        _SPEC_JSON_CACHE[key] = encoded
    return encoded


@functools.lru_cache(maxsize=256)
def _parsed_policy(spec_json: str, image: str) -> tuple[dppolicy.DPPolicySpec, str]:
    """The parsed spec and its hash, cached by the spec's canonical JSON: the webhook sees
    the same few policies for every pod (parsing and hashing were most of a review's cost,
    docs/benchmarks.md "Admission")."""
    parsed = dppolicy_reconcile.parse_spec(json.loads(spec_json))
    return parsed, dppolicy_reconcile.policy_hash(parsed, image)


@functools.lru_cache(maxsize=256)
def _container_json(
    name: str,
    spec_json: str,
    image: str,
    accountant_url: str,
    resources_json: str,
    *,
    listen_port: int,
    admin_port: int,
    port_name: str,
) -> str:
    """The sidecar container as JSON (spliced into each pod's encoded patch), cached:
    building it validates the whole baked configuration, which is the same for every pod
    of a policy."""
    parsed, policy_hash = _parsed_policy(spec_json, image)
    container = sidecar.build_sidecar_container(
        policy_name=name,
        policy_spec=parsed.model_dump(mode="json", by_alias=True),
        policy_hash=policy_hash,
        image=image,
        accountant_url=accountant_url,
        upstream_port=parsed.upstream.port,
        listen_port=listen_port,
        admin_port=admin_port,
        port_name=port_name,
        resources=json.loads(resources_json),
    )
    container["restartPolicy"] = "Always"  # a native sidecar (KEP-753)
    return json.dumps(container, separators=(",", ":"))


def mutate_pod(
    pod: Mapping[str, Any],
    *,
    namespace: str,
    policy: Mapping[str, Any] | None,
    settings: Settings,
) -> Mutation:
    """The patch that injects the sidecar, or why the pod is refused (see module doc)."""
    name = policy_name_of(pod)
    if name is None:
        return Mutation(allowed=True)
    if is_injected(pod):
        return Mutation(allowed=True, policy_name=name)
    spec = pod.get("spec") or {}
    if len(name) > MAX_LABEL_VALUE_LENGTH:
        return _refuse(
            f"DP policy name {name} is longer than {MAX_LABEL_VALUE_LENGTH} characters, so "
            f"pods cannot carry it as the {POLICY_LABEL} label that rollouts track: "
            "use a shorter policy name",
            name,
        )
    if spec.get("hostNetwork"):
        return _refuse(
            f"Pod asks for DP policy {name} but uses the host network: the sidecar cannot "
            "guard a port on the node. Remove spec.hostNetwork, or remove the "
            f"{POLICY_ANNOTATION} annotation",
            name,
        )
    if policy is None:
        return _refuse(
            f"DPPolicy {name} does not exist in namespace {namespace}: create it "
            f"(kubectl -n {namespace} get dppolicies), or fix the {POLICY_ANNOTATION} "
            "annotation",
            name,
        )
    problem = _ready_problem(policy)
    if problem is not None:
        return _refuse(f"DPPolicy {namespace}/{name} is not Ready ({problem})", name)
    try:
        spec_json = _spec_json(policy)
        parsed, policy_hash = _parsed_policy(spec_json, settings.image)
    except pydantic.ValidationError as error:
        return _refuse(f"DPPolicy {namespace}/{name} does not parse: {error}", name)

    containers: list[Mapping[str, Any]] = list(spec.get("containers") or [])
    located = _find_upstream_port(containers, parsed.upstream.port)
    ports = _free_ports(spec, 2)
    if len(ports) < 2:
        return _refuse(
            f"Pod uses every port Hush can give its sidecar ({CANDIDATE_PORTS}): free two",
            name,
        )
    listen_port, admin_port = ports
    patch: list[str] = []  # encoded operations
    warnings: list[str] = []
    port_name = UNNAMED_SIDECAR_PORT_NAME
    if located is None:
        warnings.append(
            f"No container declares port {parsed.upstream.port} (DPPolicy {name} "
            "spec.upstream.port); Services cannot reach the app through the sidecar by "
            f"port name: declare it, named, in the app container"
        )
    else:
        container_index, port_index = located
        old_name = (containers[container_index].get("ports") or [])[port_index].get("name")
        port_path = f"/spec/containers/{container_index}/ports/{port_index}/name"
        if isinstance(old_name, str) and old_name:
            port_name = old_name
            patch.append(_encode({"op": "replace", "path": port_path, "value": UPSTREAM_PORT_NAME}))
        else:
            patch.append(_encode({"op": "add", "path": port_path, "value": UPSTREAM_PORT_NAME}))
            warnings.append(
                f"Port {parsed.upstream.port} has no name, so Services that target it by "
                f"number bypass the sidecar: name it and target the name (the sidecar now "
                f"listens on {listen_port} as {UNNAMED_SIDECAR_PORT_NAME})"
            )

    container_json = _container_json(
        name, spec_json, settings.image, settings.accountant_url, settings.resources_json,
        listen_port=listen_port, admin_port=admin_port, port_name=port_name,
    )  # fmt: skip
    # The container is most of the patch: its JSON (cached with it) is spliced into the
    # encoded patch instead of being decoded and encoded again for every pod.
    if spec.get("initContainers"):
        patch.append(f'{{"op":"add","path":"/spec/initContainers/-","value":{container_json}}}')
    else:
        patch.append(f'{{"op":"add","path":"/spec/initContainers","value":[{container_json}]}}')
    patch.append(_volume_operation(settings.ca_config_map, bool(spec.get("volumes"))))
    # The policy as a label, so the operator can watch exactly the injected pods with a
    # server-side label selector (rollout progress and drift, hush.rollout).
    label_path = f"/metadata/labels/{_escape(POLICY_LABEL)}"
    if (pod.get("metadata") or {}).get("labels"):
        patch.append(_encode({"op": "add", "path": label_path, "value": name}))
    else:
        patch.append(
            _encode({"op": "add", "path": "/metadata/labels", "value": {POLICY_LABEL: name}})
        )
    for key, value in (
        (INJECTED_ANNOTATION, INJECTOR_VERSION),
        (POLICY_HASH_ANNOTATION, policy_hash),
    ):
        # The pod has annotations: it is annotated with hush.dev/policy.
        path = f"/metadata/annotations/{_escape(key)}"
        patch.append(_encode({"op": "add", "path": path, "value": value}))
    return Mutation(
        allowed=True,
        patch_json="[" + ",".join(patch) + "]",
        warnings=tuple(warnings),
        policy_name=name,
        policy_hash=policy_hash,
    )
