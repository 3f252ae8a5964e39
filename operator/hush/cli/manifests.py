"""``hush manifests``: write the generated CRDs (``make manifests`` calls this)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hush.api import crds


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "manifests", help="Write the CRDs generated from the API models into directories."
    )
    parser.add_argument(
        "directories", nargs="+", type=Path, help="Directories to write the CRD YAML files into."
    )
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    directories: list[Path] = arguments.directories
    for directory in directories:
        for path in crds.write(directory):
            print(f"Wrote {path}")
    return 0
