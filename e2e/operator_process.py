"""Run ``hush operator`` as a host process for e2e tests (pods do not really run here)."""

from __future__ import annotations

import contextlib
import datetime
import os
import socket
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

from hush.dev import pki

import waiting


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def write_serving_certificate(directory: Path) -> tuple[Path, Path]:
    """A serving certificate for 127.0.0.1; returns (certificate chain, key) paths. The
    chain file is also the clients' trust bundle."""
    cert_path, key_path = directory / "tls.crt", directory / "tls.key"
    pki.write_loopback_serving_files(
        cert_path,
        key_path,
        common_name="hush-accountant",
        now=datetime.datetime.now(datetime.UTC),
    )
    return cert_path, key_path


@contextlib.contextmanager
def running_operator(
    kubeconfig: Path,
    log_path: Path,
    *extra_arguments: str,
    environment: Mapping[str, str] | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Start the operator, wait for its liveness endpoint, stop it (and print its log).

    ``environment`` adds variables, e.g. the downward API's ``POD_NAME``/``POD_NAMESPACE``
    that the chart gives the operator."""
    port = free_port()
    environment = {**os.environ, **(environment or {}), "KUBECONFIG": str(kubeconfig)}
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "hush", "operator", "--all-namespaces",
             "--liveness", f"http://127.0.0.1:{port}/healthz", *extra_arguments],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=environment,
        )  # fmt: skip

    def alive() -> bool:
        if process.poll() is not None:
            raise AssertionError(
                f"Operator exited with {process.returncode}:\n{log_path.read_text()[-4000:]}"
            )
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as reply:
                return bool(reply.status == 200)
        except OSError:
            return False

    try:
        waiting.wait_for(alive, timeout=60, description="the operator's liveness endpoint")
        yield process
    finally:
        stop(process)
        print(f"Operator log ({log_path}):\n{log_path.read_text()[-6000:]}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def client_ssl_context(cert_path: Path) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(cert_path))
