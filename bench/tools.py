"""The benchmark tools (Debian's nginx and wrk, the Go load generator hush-fixed-rate),
fetched or built and cached by hack/bench-tools.sh."""

from __future__ import annotations

import subprocess
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[1]


def bin_dir() -> Path:
    """The directory holding the tools (the script's last line of output)."""
    result = subprocess.run(
        [str(REPOSITORY / "hack" / "bench-tools.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
    )
    return Path(result.stdout.strip().splitlines()[-1])
