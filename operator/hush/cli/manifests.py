"""``hush manifests``: write the generated manifests (``make manifests`` calls this).

The CRDs go into each directory given; with ``--chart-templates`` the chart's generated
templates (the ValidatingAdmissionPolicies of ``hush.admission.policies``) go there too.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from hush.admission import policies
from hush.api import crds


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "manifests", help="Write the CRDs generated from the API models into directories."
    )
    parser.add_argument(
        "directories", nargs="+", type=Path, help="Directories to write the CRD YAML files into."
    )
    parser.add_argument(
        "--chart-templates",
        type=Path,
        default=None,
        metavar="DIRECTORY",
        help="Also write the chart's generated templates (ValidatingAdmissionPolicies) here.",
    )
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    directories: list[Path] = arguments.directories
    for directory in directories:
        for path in crds.write(directory):
            print(f"Wrote {path}")
    if arguments.chart_templates is not None:
        print(f"Wrote {policies.write_chart_template(arguments.chart_templates)}")
    return 0
