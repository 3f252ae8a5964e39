"""The benchmark tools (Debian's nginx and wrk, the Go load generator hush-fixed-rate),
fetched or built and cached by hack/bench-tools.sh."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def process_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of one process so far, all its threads (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_memory_mib(pid: int, field: str = "VmRSS") -> float:
    """A memory line of /proc/PID/status in MiB: ``VmRSS`` (resident now) or ``VmHWM``
    (its peak); NaN if the kernel has no such line."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def bin_dir() -> Path:
    """The directory holding the tools (the script's last line of output)."""
    result = subprocess.run(
        [str(REPOSITORY / "hack" / "bench-tools.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])
