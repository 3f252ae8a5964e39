"""``build_sidecar_container`` against a whole golden dict (kubespawner style)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hush.api import dppolicy
from hush.cli import main as cli_main
from hush.injection import sidecar
from hush.reconcile import dppolicy as policy_reconcile
from hush.sidecar import config

SPEC: dict[str, Any] = {
    "budgetRef": {"name": "survey", "team": "analytics"},
    "upstream": {"port": 8080},
    "routes": [
        {
            "path": "/count",
            "mechanism": "laplace",
            "epsilon": 0.1,
            "fields": [{"path": "$.count", "kind": "count"}],
        }
    ],
}
IMAGE = "registry.example/hush@sha256:" + "a" * 64
HASH = policy_reconcile.policy_hash(dppolicy.DPPolicySpec.model_validate(SPEC), IMAGE)


def _build(**overrides: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {
        "policy_name": "survey",
        "policy_spec": SPEC,
        "policy_hash": HASH,
        "image": "registry.example/hush@sha256:" + "a" * 64,
        "accountant_url": "https://hush-accountant.hush-system.svc:8443",
        "upstream_port": 8080,
        "listen_port": 8081,
    }
    arguments.update(overrides)
    return sidecar.build_sidecar_container(**arguments)


def test_the_container_is_exactly_the_golden_one() -> None:
    container = _build()
    baked = container["env"][0]["value"]
    assert container == {
        "name": "hush-sidecar",
        "image": "registry.example/hush@sha256:" + "a" * 64,
        "imagePullPolicy": "IfNotPresent",
        "command": ["hush", "sidecar"],
        "args": ["--log-format=json", "--policy-check-interval=10s"],
        "env": [
            {"name": "HUSH_SIDECAR_CONFIG", "value": baked},
            {"name": "HUSH_POLICY_HASH", "value": HASH},
        ],
        "ports": [
            {"name": "http", "containerPort": 8081, "protocol": "TCP"},
            {"name": "hush-admin", "containerPort": 9901, "protocol": "TCP"},
        ],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": 9901},
            "periodSeconds": 5,
            "failureThreshold": 1,
            "timeoutSeconds": 2,
        },
        "livenessProbe": {
            "httpGet": {"path": "/healthz", "port": 9901},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": 2,
        },
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
        "securityContext": {
            "runAsNonRoot": True,
            "runAsUser": 65532,
            "runAsGroup": 65532,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "privileged": False,
            "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"},
        },
        "volumeMounts": [
            {
                "name": "hush-accountant",
                "mountPath": "/var/run/secrets/hush.dev/accountant",
                "readOnly": True,
            }
        ],
    }
    assert json.loads(baked) == {
        "policyName": "survey",
        "policyHash": HASH,
        "policy": dppolicy.DPPolicySpec.model_validate(SPEC).model_dump(mode="json", by_alias=True),
        "sidecarImage": IMAGE,
        "listenHost": "0.0.0.0",  # noqa: S104 - the pod port, by design
        "listenPort": 8081,
        "adminPort": 9901,
        "upstreamHost": "127.0.0.1",
        "upstreamPort": 8080,
        "accountantUrl": "https://hush-accountant.hush-system.svc:8443",
        "caPath": "/var/run/secrets/hush.dev/accountant/ca.crt",
        "tokenPath": "/var/run/secrets/hush.dev/accountant/token",
        "upstreamTimeoutSeconds": 10.0,
        "accountantTimeoutSeconds": 5.0,
        "maxBodyBytes": 8388608,
        "cacheEntries": 10000,
    }


def test_the_policy_check_interval_is_an_argument_and_must_be_a_positive_duration() -> None:
    assert _build(policy_check_interval="2s")["args"][-1] == "--policy-check-interval=2s"
    for bad in ("0s", "soon"):
        with pytest.raises(config.ConfigError):
            _build(policy_check_interval=bad)


def test_the_baked_config_is_what_the_sidecar_reads() -> None:
    loaded = config.load(_build()["env"][0]["value"])
    assert loaded.policy_hash == HASH
    assert loaded.policy == dppolicy.DPPolicySpec.model_validate(SPEC)


def test_a_hash_that_does_not_match_the_spec_is_not_baked() -> None:
    with pytest.raises(config.ConfigError, match="does not match"):
        _build(policy_hash="sha256:" + "0" * 64)


def test_the_accountant_volume_projects_an_audience_bound_token_and_the_ca() -> None:
    assert sidecar.build_accountant_volume(ca_config_map="hush-accountant-ca") == {
        "name": "hush-accountant",
        "projected": {
            "defaultMode": 0o444,
            "sources": [
                {
                    "serviceAccountToken": {
                        "audience": "hush-accountant",
                        "expirationSeconds": 3600,
                        "path": "token",
                    }
                },
                {
                    "configMap": {
                        "name": "hush-accountant-ca",
                        "items": [{"key": "ca.crt", "path": "ca.crt"}],
                    }
                },
            ],
        },
    }


def test_hush_sidecar_is_a_command_and_refuses_a_missing_config(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("HUSH_SIDECAR_CONFIG", raising=False)
    assert cli_main.main(["sidecar", "--log-format=text"]) == 2
    assert "HUSH_SIDECAR_CONFIG is not set" in capsys.readouterr().err
    monkeypatch.setenv("HUSH_SIDECAR_CONFIG", "{}")
    assert cli_main.main(["sidecar", "--log-format=text"]) == 2


def test_hush_sidecar_refuses_a_bad_policy_check_interval(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("HUSH_SIDECAR_CONFIG", _build()["env"][0]["value"])
    assert cli_main.main(["sidecar", "--log-format=text", "--policy-check-interval=0s"]) == 2
    assert "must be positive" in capsys.readouterr().err
