"""The ``hush`` command line: one entry point, one sub-command module per area.

This module only assembles the argument parser and dispatches; each area
(``dev``, ``operator``, ...) lives in its own module that registers its sub-commands.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from hush.cli import audit as audit_commands
from hush.cli import dev as dev_commands
from hush.cli import images as images_commands
from hush.cli import ledger as ledger_commands
from hush.cli import manifests as manifests_commands
from hush.cli import operator as operator_commands
from hush.cli import policy as policy_commands
from hush.cli import report as report_commands
from hush.cli import sidecar as sidecar_commands
from hush.cli import status as status_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hush",
        description="Differential privacy and immutable delivery for Kubernetes.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    dev_commands.register(commands)
    operator_commands.register(commands)
    manifests_commands.register(commands)
    ledger_commands.register(commands)
    sidecar_commands.register(commands)
    audit_commands.register(commands)
    images_commands.register(commands)
    policy_commands.register(commands)
    status_commands.register(commands)
    report_commands.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    arguments = parser.parse_args(argv)
    handler = arguments.handler
    exit_code: int = handler(arguments)
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
