"""What the injector bakes into the sidecar container, and how the sidecar reads it back.

The whole configuration travels as one JSON document in the environment variable
``HUSH_SIDECAR_CONFIG`` of the sidecar container (``hush.injection.sidecar`` writes it). It is
immutable for the life of the pod (invariant 6): no ConfigMap or custom resource is read to
decide how to noise a request. ``load`` refuses a document whose policy hash does not match
its policy spec, so a hand-edited pod cannot claim one policy and enforce another.

Owns parsing and validating that document; it deliberately knows nothing about HTTP.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import pydantic
from pydantic import alias_generators

from hush.api import dppolicy
from hush.reconcile import dppolicy as policy_reconcile

ENVIRONMENT_VARIABLE = "HUSH_SIDECAR_CONFIG"
DEFAULT_TOKEN_PATH = "/var/run/secrets/hush.dev/accountant/token"  # noqa: S105 - a path
DEFAULT_CA_PATH = "/var/run/secrets/hush.dev/accountant/ca.crt"

_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)")
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


class ConfigError(ValueError):
    """The baked configuration cannot be used; the message says what to fix."""


class SidecarConfig(pydantic.BaseModel):
    """Everything the sidecar needs, as baked by ``build_sidecar_container``."""

    model_config = pydantic.ConfigDict(
        alias_generator=alias_generators.to_camel,
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )

    policy_name: str = pydantic.Field(min_length=1, max_length=253)
    policy_hash: str = pydantic.Field(min_length=1, max_length=80)
    policy: dppolicy.DPPolicySpec
    sidecar_image: str = pydantic.Field(
        default="", max_length=512, description="The image the injector used; in the hash."
    )
    listen_host: str = "0.0.0.0"  # noqa: S104 - the sidecar is the pod's public port
    listen_port: int = pydantic.Field(ge=1, le=65535)
    admin_port: int = pydantic.Field(ge=1, le=65535)
    upstream_host: str = "127.0.0.1"
    upstream_port: int = pydantic.Field(ge=1, le=65535)
    accountant_url: str = pydantic.Field(pattern=r"^https?://")
    ca_path: str | None = DEFAULT_CA_PATH
    token_path: str = DEFAULT_TOKEN_PATH
    upstream_timeout_seconds: float = pydantic.Field(default=10.0, gt=0)
    accountant_timeout_seconds: float = pydantic.Field(default=5.0, gt=0)
    max_body_bytes: int = pydantic.Field(default=8 * 1024 * 1024, ge=1024)
    cache_entries: int = pydantic.Field(default=10_000, ge=0)

    def to_environment(self) -> str:
        """The compact JSON that ``load`` reads back (stable key order)."""
        return json.dumps(
            self.model_dump(mode="json", by_alias=True), sort_keys=True, separators=(",", ":")
        )


def load(raw: str | Mapping[str, Any]) -> SidecarConfig:
    """Parse and check a baked configuration; ``ConfigError`` says what is wrong."""
    try:
        document = json.loads(raw) if isinstance(raw, str) else dict(raw)
    except json.JSONDecodeError as error:
        raise ConfigError(f"{ENVIRONMENT_VARIABLE} is not JSON: {error}") from error
    try:
        config = SidecarConfig.model_validate(document)
    except pydantic.ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in problem['loc'])}: {problem['msg']}"
            for problem in error.errors()
        )
        raise ConfigError(f"The sidecar configuration is invalid: {problems}") from error
    actual = policy_reconcile.policy_hash(config.policy, config.sidecar_image)
    if actual != config.policy_hash:
        raise ConfigError(
            f"The baked policy hash {config.policy_hash} does not match the baked policy "
            f"({actual}): re-create the pod so the injector bakes both again"
        )
    if config.listen_port in (config.upstream_port, config.admin_port):
        raise ConfigError("listenPort must differ from upstreamPort and adminPort")
    return config


def duration_seconds(text: str) -> float:
    """Seconds in a duration such as ``5m``, ``1h30m`` or ``250ms``."""
    position = 0
    total = 0.0
    for match in _DURATION_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ConfigError(f"{text!r} is not a duration like 5m, 1h30m or 250ms")
    return total


def check_interval_seconds(text: str) -> float:
    """Seconds in the policy-check interval (a positive duration such as ``10s``)."""
    seconds = duration_seconds(text)
    if seconds <= 0:
        raise ConfigError(f"The policy check interval must be positive, not {text!r}")
    return seconds
