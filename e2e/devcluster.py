"""Driving ``hush dev`` from e2e tests: run the CLI as a user would and read its output.

The CLI is run as a subprocess of this interpreter (``python -m hush``), never imported:
the tests then cover argument parsing, stdout/stderr discipline and exit codes, and the
control plane processes are daemonised exactly as in real use.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
# `make e2e` runs the suite on its own cluster (hush-test) so that it never disturbs the
# developer's hush-dev cluster; a plain `pytest e2e` uses hush-dev.
DEFAULT_CLUSTER = os.environ.get("HUSH_DEV_CLUSTER", "hush-dev")


def run_hush(
    *arguments: str, env: dict[str, str] | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    """Run ``python -m hush ARGUMENTS`` with this interpreter, capturing its output."""
    return subprocess.run(
        [sys.executable, "-m", "hush", *arguments],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def last_line(text: str) -> str:
    lines = text.strip().splitlines()
    return lines[-1] if lines else ""


def status(*, name: str = DEFAULT_CLUSTER, env: dict[str, str] | None = None) -> dict[str, Any]:
    """``hush dev status --json`` as a dict, plus its ``exitCode``."""
    result = run_hush("dev", "status", "--name", name, "--json", env=env, timeout=60)
    document: dict[str, Any] = json.loads(result.stdout)
    document["exitCode"] = result.returncode
    return document


def pids(status_document: dict[str, Any]) -> dict[str, int]:
    """The pid of each component that has one."""
    return {c["name"]: c["pid"] for c in status_document["components"] if c["pid"] is not None}


def process_exists(pid: int) -> bool:
    """True for a live process; a zombie (exited, not yet reaped) counts as gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")
