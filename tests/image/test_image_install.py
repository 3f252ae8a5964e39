"""The image's install steps, run for real in a fresh directory outside the repository.

No Docker here, so this runs what the Dockerfile's RUN lines run, the same way: the build
context is copied as ``docker build`` would send it (``.dockerignore`` applied), and
``hack/image-install.sh`` from that copy builds the toolchain, the locked dependencies and
Hush's wheel into a new venv, all hash-checked. Then the result is used as the image uses
it: ``hush``, ``hush operator --help`` and ``hush sidecar --help`` run with the image's
environment (``PATH`` to the venv, no bytecode writing, no home directory), and the sidecar
serves real requests with the configuration the injector bakes while a Python audit hook
reports any file written outside ``$TMPDIR``, and the venv must not change at all: on a
read-only root filesystem there is nowhere to write.

What differs from the image: the interpreter is the one running the tests (the image's is
the base image's CPython 3.11), and where pip finds the files. The pip commands are the
same, but they read a local wheelhouse (``PIP_FIND_LINKS``, ``PIP_NO_INDEX``) that
``pip download`` filled once from PyPI with exactly the locked files, hash-checked, under
``~/.cache/hush/image-wheels/<hash of the locks>`` (about 120 MB): the install checks the
same hashes either way, and a warm run needs no network. Most of the time (a minute or so
on two cores) is compiling every module to bytecode, as the image build does.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hush.api import dppolicy
from hush.dev import pki
from hush.injection import sidecar
from hush.reconcile import dppolicy as policy_reconcile
from tests.conftest import REPO_ROOT
from tests.image import dockerfile

pytestmark = pytest.mark.image

INSTALL_TIMEOUT = 600  # seconds per step; a cold pip cache downloads ~100 MB
AUDIT_MARK = "hush-write-audit:"
RAW_COUNT = 987654321  # the raw answer, which must never leave through the sidecar

# Installed as sitecustomize (through PYTHONPATH) in the processes under test: reports every
# file or directory that Python code opens for writing, creates, renames, removes or
# changes outside the directories in $HUSH_TEST_WRITABLE, on stderr. C libraries writing on
# their own are not seen; the snapshot of the venv catches those that write there.
AUDIT_HOOK = textwrap.dedent(
    f"""
    import os
    import sys

    _WRITABLE = tuple(
        os.path.join(os.path.realpath(path), "")
        for path in os.environ.get("HUSH_TEST_WRITABLE", "").split(os.pathsep)
        if path
    )
    _WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    _CHANGES = {{
        "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link",
        "os.truncate", "os.chmod", "os.chown", "os.utime", "shutil.copyfile",
        "shutil.rmtree",
    }}

    def _report(event, path):
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not isinstance(path, str):
            return  # a file descriptor: opened (and reported) before
        full = os.path.realpath(path)
        if not os.path.join(full, "").startswith(_WRITABLE):
            os.write(2, f"{AUDIT_MARK} {{event}} {{full}}\\n".encode())

    def _hook(event, arguments):
        if event == "open":
            path, mode, flags = arguments
            writes = isinstance(mode, str) and any(letter in mode for letter in "wax+")
            if writes or (isinstance(flags, int) and flags & _WRITE_FLAGS):
                _report(event, path)
        elif event in _CHANGES:
            _report(event, arguments[0])

    sys.addaudithook(_hook)
    """
)


@dataclasses.dataclass(frozen=True)
class Installed:
    root: Path
    prefix: Path  # the venv, /opt/hush in the image
    durations: dict[str, float]

    @property
    def hush(self) -> Path:
        return self.prefix / "bin" / "hush"


LOCKS = [
    REPO_ROOT / "hack" / "image-requirements.txt",
    REPO_ROOT / "hack" / "image-build-requirements.txt",
]


def _wheelhouse() -> Path:
    """Every locked file for this platform, downloaded (hash-checked) once per lock."""
    key = hashlib.sha256(b"".join(lock.read_bytes() for lock in LOCKS)).hexdigest()[:16]
    cache = os.environ.get("HUSH_CACHE_DIR") or str(
        Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "hush"
    )
    wheelhouse = Path(cache) / "image-wheels" / key
    if (wheelhouse / ".complete").is_file():
        return wheelhouse
    partial = wheelhouse.with_name(f"{key}.partial-{os.getpid()}")
    shutil.rmtree(partial, ignore_errors=True)
    requirements = [argument for lock in LOCKS for argument in ("--requirement", str(lock))]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
         "--require-hashes", "--only-binary=:all:", "--no-deps", "--dest", str(partial),
         *requirements],
        check=True,
        timeout=INSTALL_TIMEOUT,
    )  # fmt: skip
    (partial / ".complete").touch()
    with contextlib.suppress(OSError):  # another run got there first: use its copy
        partial.rename(wheelhouse)
    shutil.rmtree(partial, ignore_errors=True)
    return wheelhouse


def _install_environment(wheelhouse: Path) -> dict[str, str]:
    environment = dict(os.environ)
    for variable in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME", "PIP_REQUIRE_VIRTUALENV"):
        environment.pop(variable, None)
    # The interpreter the image's steps run: a base CPython, not this test's venv.
    environment["PYTHON"] = getattr(sys, "_base_executable", sys.executable)
    environment.update(PIP_FIND_LINKS=str(wheelhouse), PIP_NO_INDEX="1")
    return environment


def _copy_build_context(destination: Path) -> None:
    for relative in dockerfile.context_files(REPO_ROOT):
        target = destination / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO_ROOT / relative, target)


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    root = tmp_path_factory.mktemp("image")
    context = root / "src"  # /src in the build stage
    _copy_build_context(context)
    toolchain, prefix = root / "toolchain", root / "hush"
    script = context / "hack" / "image-install.sh"
    durations: dict[str, float] = {}
    steps = {
        "toolchain": [str(toolchain)],
        "dependencies": [str(toolchain), str(prefix)],
        "hush": [str(toolchain), str(context), str(prefix)],
    }
    environment = _install_environment(_wheelhouse())
    for step, arguments in steps.items():
        started = time.monotonic()
        result = subprocess.run(
            [str(script), step, *arguments],
            capture_output=True,
            text=True,
            env=environment,
            cwd=context,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        durations[step] = time.monotonic() - started
        assert result.returncode == 0, f"{step} failed:\n{result.stdout}\n{result.stderr}"
    print(f"Install steps (seconds): {durations}")
    return Installed(root=root, prefix=prefix, durations=durations)


def _runtime_environment(installed: Installed, **extra: str) -> dict[str, str]:
    """The image's environment (Dockerfile ENV), plus ``extra``."""
    temporary = installed.root / "tmp"
    temporary.mkdir(exist_ok=True)
    return {
        "PATH": f"{installed.prefix / 'bin'}:/usr/local/bin:/usr/bin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
        "PYTHONUNBUFFERED": "1",
        "HOME": "/nonexistent",
        "TMPDIR": str(temporary),
        "LANG": "C.UTF-8",
        **extra,
    }


def _snapshot(directory: Path) -> dict[str, tuple[int, int]]:
    found = {}
    for path in directory.rglob("*"):
        status = path.lstat()
        found[str(path.relative_to(directory))] = (status.st_size, status.st_mtime_ns)
    return found


def test_the_runtime_venv_carries_no_installer(installed: Installed) -> None:
    python = installed.prefix / "bin" / "python"
    for module in ("pip", "setuptools"):
        result = subprocess.run(
            [str(python), "-c", f"import {module}"], capture_output=True, check=False
        )
        assert result.returncode != 0, f"{module} is in the runtime venv"
    assert not list(installed.prefix.glob("bin/pip*"))


def test_hush_runs_the_venv_interpreter(installed: Installed) -> None:
    first_line = installed.hush.read_text().splitlines()[0]
    assert first_line == f"#!{installed.prefix / 'bin' / 'python'}"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [
        (["--help"], ["operator", "sidecar", "ledger", "audit"]),
        (["operator", "--help"], ["--leader-election", "--webhook-certs", "--accountant-port"]),
        (["sidecar", "--help"], ["--policy-check-interval", "--config-env"]),
    ],
    ids=["hush", "hush-operator", "hush-sidecar"],
)
def test_the_entrypoints_run_without_writing(
    installed: Installed, arguments: list[str], expected: list[str]
) -> None:
    hook_directory = _audit_hook_directory(installed)
    before = _snapshot(installed.prefix)
    result = subprocess.run(
        ["hush", *arguments],
        capture_output=True,
        text=True,
        env=_runtime_environment(installed, PYTHONPATH=str(hook_directory)),
        cwd="/",
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout
    assert AUDIT_MARK not in result.stderr, result.stderr
    assert _snapshot(installed.prefix) == before


def test_the_write_audit_sees_a_write(installed: Installed) -> None:
    # The hook must not pass vacuously: a write outside $HUSH_TEST_WRITABLE is reported.
    outside = installed.root / "outside"
    outside.mkdir(exist_ok=True)
    result = subprocess.run(
        ["python", "-c", f"open({str(outside / 'written')!r}, 'w').close()"],
        capture_output=True,
        text=True,
        env=_runtime_environment(
            installed,
            PYTHONPATH=str(_audit_hook_directory(installed)),
            HUSH_TEST_WRITABLE=str(installed.root / "tmp"),
        ),
        cwd="/",
        timeout=60,
        check=True,
    )
    assert f"{AUDIT_MARK} open {outside / 'written'}" in result.stderr


def _audit_hook_directory(installed: Installed) -> Path:
    directory = installed.root / "audit-hook"
    directory.mkdir(exist_ok=True)
    (directory / "sitecustomize.py").write_text(AUDIT_HOOK)
    return directory


# -- the sidecar, serving ------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class _Upstream(http.server.BaseHTTPRequestHandler):
    """The application behind the sidecar: one aggregate route."""

    def do_GET(self) -> None:
        body = json.dumps({"count": RAW_COUNT}).encode()
        self.send_response(200 if self.path == "/count" else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextlib.contextmanager
def _upstream(port: int) -> Iterator[None]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", port), _Upstream)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown()
        server.server_close()


def _get(url: str) -> tuple[int, dict[str, Any] | str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:  # noqa: S310 - loopback
            status, text = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, text = error.code, error.read().decode()
    except (urllib.error.URLError, ConnectionError):
        return 0, ""
    try:
        return status, json.loads(text)
    except json.JSONDecodeError:
        return status, text


def _sidecar_container(files: Path, ports: dict[str, int]) -> dict[str, Any]:
    """The container the injector builds, with the projected volume's files in ``files``."""
    spec = {
        "budgetRef": {"name": "census", "team": "analytics"},
        "upstream": {"port": ports["upstream"]},
        "routes": [
            {
                "path": "/count",
                "mechanism": "laplace",
                "epsilon": 0.5,
                "fields": [{"path": "$.count", "kind": "count"}],
            }
        ],
    }
    image = "registry.invalid/hush@sha256:" + "5" * 64
    container = sidecar.build_sidecar_container(
        policy_name="census-stats",
        policy_spec=spec,
        policy_hash=policy_reconcile.policy_hash(dppolicy.DPPolicySpec.model_validate(spec), image),
        image=image,
        # Nothing listens there: a covered request must be refused, never released raw.
        accountant_url=f"https://127.0.0.1:{ports['accountant']}",
        upstream_port=ports["upstream"],
        listen_port=ports["listen"],
        admin_port=ports["admin"],
    )
    # The kubelet mounts the accountant's CA and the pod's token at these paths; here they
    # are files in the test's directory.
    certificate, key = files / "ca.crt", files / "ca.key"
    pki.write_loopback_serving_files(
        certificate, key, common_name="hush-accountant", now=datetime.datetime.now(datetime.UTC)
    )
    (files / "token").write_text("not-a-real-token")
    for variable in container["env"]:
        if variable["name"] == "HUSH_SIDECAR_CONFIG":
            baked = json.loads(variable["value"])
            baked.update(caPath=str(certificate), tokenPath=str(files / "token"))
            variable["value"] = json.dumps(baked)
    return container


def test_the_sidecar_serves_and_fails_closed_without_writing(installed: Installed) -> None:
    files = installed.root / "projected"
    files.mkdir(exist_ok=True)
    ports = {name: _free_port() for name in ("upstream", "accountant", "listen", "admin")}
    container = _sidecar_container(files, ports)
    environment = _runtime_environment(
        installed,
        PYTHONPATH=str(_audit_hook_directory(installed)),
        HUSH_TEST_WRITABLE=str(installed.root / "tmp"),
        **{variable["name"]: variable["value"] for variable in container["env"]},
    )
    before = _snapshot(installed.prefix)
    log_path = installed.root / "sidecar.log"
    with _upstream(ports["upstream"]), log_path.open("wb") as log:
        process = subprocess.Popen(
            [*container["command"], *container["args"]],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
            cwd="/",
        )
        try:
            admin = f"http://127.0.0.1:{ports['admin']}"
            deadline = time.monotonic() + 60
            while _get(f"{admin}/healthz")[0] != 200:
                assert process.poll() is None, log_path.read_text()[-4000:]
                assert time.monotonic() < deadline, "the sidecar never served /healthz"
                time.sleep(0.2)
            assert _get(f"{admin}/metrics")[0] == 200
            listen = f"http://127.0.0.1:{ports['listen']}"
            status, answer = _get(f"{listen}/count")
            assert status == 503, answer
            assert isinstance(answer, dict)
            assert answer["error"] == "accountant-unreachable"
            assert str(RAW_COUNT) not in json.dumps(answer)
            status, answer = _get(f"{listen}/not-in-the-policy")
            assert status == 404, answer
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
    log = log_path.read_text()
    assert process.returncode == 0, log[-4000:]
    assert AUDIT_MARK not in log, log[-4000:]
    assert _snapshot(installed.prefix) == before
    assert not list((installed.root / "tmp").iterdir()), "the sidecar wrote to $TMPDIR"
