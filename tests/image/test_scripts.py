"""The image's shell scripts, run against stand-ins for the tools they drive.

``make e2e-kind`` needs Docker and kind and ``make image-pin`` needs Docker Hub, none of
which these machines have; so each script runs here with fake ``docker``, ``kind``,
``helm``, ``kubectl``, ``openssl``, ``pytest`` or ``crane`` on ``PATH`` that record how
they were called. That checks the glue (the order of the steps, the image reference
handed from one to the next, the exit status) but not the tools themselves: the e2e-kind
job in .github/workflows/ci.yml runs the real thing.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT

IMAGE_ID = "sha256:0123456789ab" + "c" * 52
DIGEST = "sha256:" + "d" * 64

# Each fake appends "<name> <arguments>" to $CALLS and behaves just enough like the tool.
FAKES = {
    "docker": """
        if [ "$1" = build ]; then
          while [ $# -gt 0 ]; do
            if [ "$1" = --iidfile ]; then printf '%s' "$IMAGE_ID" > "$2"; fi
            shift
          done
        fi
    """,
    "kind": """
        if [ "$1 $2" = "get kubeconfig" ]; then echo "apiVersion: v1"; fi
    """,
    "kubectl": """
        case "$*" in
          *"get secret"*) exit 1 ;;
          *"create namespace"*) echo "kind: Namespace" ;;
        esac
    """,
    "openssl": """
        while [ $# -gt 0 ]; do
          case "$1" in -keyout|-out) : > "$2" ;; esac
          shift
        done
    """,
    "helm": "",
    "pytest": """
        printf 'pytest-env HUSH_KUBECONFIG=%s HUSH_E2E_RELEASE=%s HUSH_E2E_IMAGE=%s\n' \
          "${HUSH_KUBECONFIG:-}" "${HUSH_E2E_RELEASE:-}" "${HUSH_E2E_IMAGE:-}" >> "$CALLS"
        case "$*" in *test_release.py*) exit "${RELEASE_STATUS:-0}" ;; esac
    """,
    "crane": """
        echo "${CRANE_ANSWER}"
    """,
}


def _fakes(directory: Path) -> Path:
    directory.mkdir()
    for name, body in FAKES.items():
        path = directory / name
        path.write_text(f'#!/bin/sh\necho "{name} $*" >> "$CALLS"\n{body}\n')
        path.chmod(0o755)
    return directory


def _run_e2e_kind(tmp_path: Path, **environment: str) -> tuple[int, list[str]]:
    fakes = _fakes(tmp_path / "bin")
    calls = tmp_path / "calls"
    calls.touch()
    result = subprocess.run(
        [str(REPO_ROOT / "hack" / "e2e-kind.sh")],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{fakes}:/usr/bin:/bin",
            "HOME": str(tmp_path),
            "CALLS": str(calls),
            "IMAGE_ID": IMAGE_ID,
            "PYTEST": str(fakes / "pytest"),
            "HUSH_E2E_KIND_DIR": str(tmp_path / "state"),
            **environment,
        },
        timeout=60,
        check=False,
    )
    return result.returncode, calls.read_text().splitlines()


def _index(calls: list[str], prefix: str) -> int:
    return next(index for index, call in enumerate(calls) if call.startswith(prefix))


def test_e2e_kind_builds_loads_installs_checks_uninstalls_then_runs_the_suite(
    tmp_path: Path,
) -> None:
    status, calls = _run_e2e_kind(tmp_path, PYTEST_FLAGS="-x --maxfail 1")
    assert status == 0, calls
    tag = IMAGE_ID.removeprefix("sha256:")[:12]
    order = [
        "kind create cluster --name hush-e2e",
        "docker build",
        f"docker tag {IMAGE_ID} hush-e2e:{tag}",
        f"kind load docker-image hush-e2e:{tag} --name hush-e2e",
        "kubectl --namespace hush-system create secret generic hush-accountant-tls",
        "helm upgrade --install hush charts/hush --namespace hush-system",
        "pytest e2e/test_release.py -x --maxfail 1",
        "helm uninstall hush --namespace hush-system",
        "pytest e2e -x --maxfail 1",
    ]
    positions = [_index(calls, prefix) for prefix in order]
    assert positions == sorted(positions), calls
    helm = shlex.split(calls[_index(calls, "helm upgrade")])
    assert f"image.tag={tag}" in helm
    assert "image.repository=hush-e2e" in helm
    assert "hack/e2e-kind-values.yaml" in helm
    release_run = calls[_index(calls, "pytest e2e/test_release.py") + 1]
    assert re.search(r"HUSH_KUBECONFIG=\S+/kubeconfig", release_run)
    assert "HUSH_E2E_RELEASE=hush-system/hush" in release_run
    assert f"HUSH_E2E_IMAGE=hush-e2e:{tag}" in release_run
    suite_run = calls[_index(calls, "pytest e2e -x") + 1]
    assert "HUSH_E2E_RELEASE= " in suite_run, "the suite must not see the uninstalled release"


def test_e2e_kind_stops_before_the_suite_when_the_release_fails(tmp_path: Path) -> None:
    status, calls = _run_e2e_kind(tmp_path, RELEASE_STATUS="1", KIND_DELETE="1")
    assert status == 1
    assert any(call.startswith("helm uninstall") for call in calls), calls
    assert not any(call.startswith("pytest e2e ") for call in calls), calls
    assert calls[-1] == "kind delete cluster --name hush-e2e"


def _run_image_pin(tmp_path: Path, answer: str) -> tuple[subprocess.CompletedProcess[str], Path]:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text((REPO_ROOT / "Dockerfile").read_text())
    fakes = _fakes(tmp_path / "bin")
    result = subprocess.run(
        [str(REPO_ROOT / "hack" / "image-pin.sh")],
        capture_output=True,
        text=True,
        env={
            "PATH": f"{fakes}:/usr/bin:/bin",
            "CALLS": str(tmp_path / "calls"),
            "CRANE": str(fakes / "crane"),
            "CRANE_ANSWER": answer,
            "DOCKERFILE": str(dockerfile),
        },
        timeout=60,
        check=False,
    )
    return result, dockerfile


def test_image_pin_rewrites_only_the_base_image_line(tmp_path: Path) -> None:
    result, dockerfile = _run_image_pin(tmp_path, DIGEST)
    assert result.returncode == 0, result.stderr
    before = (REPO_ROOT / "Dockerfile").read_text().splitlines()
    after = dockerfile.read_text().splitlines()
    changed = [(old, new) for old, new in zip(before, after, strict=True) if old != new]
    (old, new), *rest = changed
    assert not rest
    tag = old.removeprefix("ARG PYTHON_IMAGE=").split("@")[0]
    assert new == f"ARG PYTHON_IMAGE={tag}@{DIGEST}"
    assert (tmp_path / "calls").read_text() == f"crane digest {tag}\n"


@pytest.mark.parametrize("answer", ["", "sha256:short", "Error: unauthorized"])
def test_image_pin_refuses_an_answer_that_is_not_a_digest(tmp_path: Path, answer: str) -> None:
    result, dockerfile = _run_image_pin(tmp_path, answer)
    assert result.returncode == 1
    assert "not a sha256 digest" in result.stderr
    assert dockerfile.read_text() == (REPO_ROOT / "Dockerfile").read_text()


def test_the_scripts_are_executable() -> None:
    for name in ("image-install.sh", "image-lock.sh", "image-pin.sh", "e2e-kind.sh"):
        assert os.access(REPO_ROOT / "hack" / name, os.X_OK), name
