"""The e2e harness: a real Kubernetes API server, a fresh namespace per test, diagnostics.

The cluster comes from ``HUSH_KUBECONFIG`` when set (that is how the same suite runs against
kind or any other cluster) and otherwise from ``hush dev up --no-hush``, which starts the
local control plane or reuses the running one (without Hush's background operator, webhooks
and admission policies: the tests install their own) and prints its kubeconfig path as the
last line of stdout.
The dev cluster is left running at the end: ``make`` (or ``hush dev down``) owns its life.

Build the control plane binaries before running the suite (``hack/controlplane/build.sh``;
``make`` does it): a cold build takes 15-30 minutes, far beyond the test timeouts.

When a test fails, its report gets the events and ``kubectl describe`` of its namespace and,
for the dev cluster, the tail of every component log: enough to tell a bug in the code under
test from a control plane that fell over.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

import devcluster
import waiting

E2E_LABEL = "hush.dev/e2e"
_KUBECONFIG_KEY = pytest.StashKey[Path]()
_DEV_STATE_DIR_KEY = pytest.StashKey[Path | None]()
_KUBECTL_KEY = pytest.StashKey[Path]()
_LOG_TAIL_LINES = 40


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Everything under e2e/ needs a cluster: mark it so `-m "not e2e"` deselects it.
    e2e_dir = Path(__file__).parent
    for item in items:
        if e2e_dir in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.e2e)


@pytest.fixture(scope="session")
def uses_dev_cluster() -> bool:
    """True when the suite runs against ``hush dev up`` rather than ``HUSH_KUBECONFIG``."""
    return not os.environ.get("HUSH_KUBECONFIG")


@pytest.fixture(scope="session")
def kubeconfig(request: pytest.FixtureRequest, uses_dev_cluster: bool) -> Path:
    if not uses_dev_cluster:
        path = Path(os.environ["HUSH_KUBECONFIG"]).expanduser().resolve()
        request.config.stash[_DEV_STATE_DIR_KEY] = None
    else:
        # --no-hush: the tests start their own operators and register their own webhooks and
        # admission policies; a background operator would answer (and inject) in their place.
        result = devcluster.run_hush("dev", "up", "--name", devcluster.DEFAULT_CLUSTER, "--no-hush")
        if result.returncode != 0:
            pytest.fail(f"hush dev up failed (exit {result.returncode}):\n{result.stderr}")
        path = Path(devcluster.last_line(result.stdout))
        request.config.stash[_DEV_STATE_DIR_KEY] = path.parent
    if not path.is_file():
        pytest.fail(f"Kubeconfig {path} does not exist")
    request.config.stash[_KUBECONFIG_KEY] = path
    return path


@pytest.fixture(scope="session")
def kubectl(request: pytest.FixtureRequest, uses_dev_cluster: bool) -> Path:
    """The dev control plane's own kubectl; for other clusters the one on PATH, if any."""
    on_path = shutil.which("kubectl")
    if on_path and not uses_dev_cluster and not os.environ.get("HUSH_CONTROLPLANE_BIN"):
        found = Path(on_path)
    else:
        from hush.dev import binaries

        found = binaries.locate(os.environ).kubectl
    request.config.stash[_KUBECTL_KEY] = found
    return found


@pytest.fixture(scope="session")
def api_client(kubeconfig: Path, kubectl: Path) -> Iterator[client.ApiClient]:
    # kubectl is requested here only so that failure diagnostics can always use it.
    api: client.ApiClient = config.new_client_from_config(  # type: ignore[no-untyped-call]
        config_file=str(kubeconfig)
    )
    yield api
    api.close()  # type: ignore[no-untyped-call]


@pytest.fixture
def namespace(api_client: client.ApiClient) -> Iterator[str]:
    """A fresh namespace whose ``default`` ServiceAccount exists; deleted afterwards."""
    core = client.CoreV1Api(api_client)
    name = f"hush-e2e-{secrets.token_hex(4)}"
    core.create_namespace(
        client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels={E2E_LABEL: "true"}))
    )

    def default_service_account_exists() -> bool:
        accounts = core.list_namespaced_service_account(
            name, field_selector="metadata.name=default"
        )
        return bool(accounts.items)

    waiting.wait_for(
        default_service_account_exists,
        timeout=60,
        description=f"the default ServiceAccount in namespace {name}",
    )
    yield name
    try:
        core.delete_namespace(name, propagation_policy="Background")
    except ApiException as error:
        if error.status != 404:
            raise


# -- diagnostics on failure ---------------------------------------------------------------


def _kubectl_output(kubectl_path: Path, kubeconfig_path: Path, *arguments: str) -> str:
    try:
        result = subprocess.run(
            [str(kubectl_path), f"--kubeconfig={kubeconfig_path}", *arguments],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"(kubectl {' '.join(arguments)} timed out)"
    return (result.stdout + result.stderr).strip() or "(nothing)"


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as error:
        return f"({error})"
    return "\n".join(text.splitlines()[-lines:])


def _diagnostics(item: pytest.Item) -> str:
    stash = item.config.stash
    kubeconfig_path = stash.get(_KUBECONFIG_KEY, None)
    kubectl_path = stash.get(_KUBECTL_KEY, None)
    state_dir = stash.get(_DEV_STATE_DIR_KEY, None)
    funcargs: dict[str, Any] = getattr(item, "funcargs", {})
    test_namespace = funcargs.get("namespace")
    sections: list[str] = []
    if kubeconfig_path and kubectl_path and isinstance(test_namespace, str):
        sections.append(
            f"== events in {test_namespace}\n"
            + _kubectl_output(
                kubectl_path,
                kubeconfig_path,
                "get",
                "events",
                f"--namespace={test_namespace}",
                "--sort-by=.lastTimestamp",
            )
        )
        sections.append(
            f"== kubectl describe pods,deployments in {test_namespace}\n"
            + _kubectl_output(
                kubectl_path,
                kubeconfig_path,
                "describe",
                "pods,deployments",
                f"--namespace={test_namespace}",
            )
        )
    if kubeconfig_path and kubectl_path:
        sections.append(
            "== nodes\n"
            + _kubectl_output(kubectl_path, kubeconfig_path, "get", "nodes", "--output=wide")
        )
    if state_dir is not None:
        for log_file in sorted((state_dir / "logs").glob("*.log")):
            sections.append(f"== tail of {log_file}\n{_tail(log_file, _LOG_TAIL_LINES)}")
    return "\n\n".join(sections)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, Any, None]:
    outcome = yield
    report: pytest.TestReport = outcome.get_result()
    if report.failed and report.when in ("setup", "call"):
        text = _diagnostics(item)
        if text:
            report.sections.append(("hush e2e diagnostics", text))
