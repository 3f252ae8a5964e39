"""``hush report BUDGET``: a PrivacyBudget's compliance report, as HTML (and PDF with --pdf).

Reads the budget, the DPPolicies and the Events of its namespace from the cluster
(``KUBECONFIG``), builds the report (``hush.report.model``, pure) and writes the
self-contained page (``hush.report.page``) and, with ``--pdf``, the same page as PDF
(``hush.report.pdf``, WeasyPrint).

Exit status: 0 when the report was written and the ledger verified; 3 when the report was
written but the ledger failed verification (the report says so at the top); 1 when the cluster
or the budget could not be read, or a file could not be written.
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path
from typing import Any

from hush.api import common
from hush.cli import policy as policy_commands

EXIT_TAMPERED = 3

_EXAMPLES = """\
examples:
  hush report census -n census                      # writes census-report.html
  hush report census -n census -o census.html --pdf census.pdf
exit status: 0 written and verified, 3 written but the ledger failed verification,
1 not written (cluster, budget or file could not be read or written)
"""


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "report",
        help="Write a PrivacyBudget's compliance report (self-contained HTML, and PDF).",
        description=(
            "Writes a compliance report of a PrivacyBudget from its ledger and the DPPolicies "
            "that charge it: dataset, accounting mode and its guarantee, spend over time per "
            "team and policy, releases by route and mechanism, policy-hash history, the "
            "chain's verification with the head hash, delta, and the alerts fired. The HTML "
            "loads nothing from outside; --pdf also writes it as PDF. Reads the cluster "
            "from KUBECONFIG."
        ),
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("budget", help="PrivacyBudget name")
    parser.add_argument("--namespace", "-n", default="default")
    parser.add_argument(
        "--output",
        "-o",
        type=Path,
        default=None,
        metavar="FILE",
        help="Where to write the HTML (default BUDGET-report.html).",
    )
    parser.add_argument("--pdf", type=Path, default=None, metavar="FILE", help="Also write a PDF.")
    parser.set_defaults(handler=run)


def now() -> datetime.datetime:
    """The report's time (a function, so that tests can fix it)."""
    return datetime.datetime.now(datetime.UTC)


def _read(
    namespace: str, name: str
) -> tuple[dict[str, Any] | None, list[dict[str, Any]], list[dict[str, Any]]]:
    from hush.kube import client  # imported here so other commands start fast

    budget = client.read_custom(
        group=common.API_GROUP,
        version=common.API_VERSION,
        plural="privacybudgets",
        namespace=namespace,
        name=name,
    )
    if budget is None:
        return None, [], []
    policies = client.list_objects(
        group=common.API_GROUP, version=common.API_VERSION, plural="dppolicies", namespace=namespace
    )
    events = client.list_objects(group="", version="v1", plural="events", namespace=namespace)
    return budget, policies, events


def run(arguments: argparse.Namespace) -> int:
    # Imported here: matplotlib and WeasyPrint come with the ``report`` extra, which the
    # operator's image (whose entry point is this same CLI) does not install.
    try:
        from hush.report import model, page
    except ImportError as error:
        print(
            f"hush report needs the report extra ({error}): pip install 'hush[report]'",
            file=sys.stderr,
        )
        return 1
    try:
        budget, policies, events = _read(arguments.namespace, arguments.budget)
    except policy_commands.cluster_errors() as error:
        print(
            f"Could not read the cluster ({error}): check KUBECONFIG and that you may read "
            "privacybudgets, dppolicies and events",
            file=sys.stderr,
        )
        return 1
    if budget is None:
        print(f"PrivacyBudget {arguments.namespace}/{arguments.budget} not found", file=sys.stderr)
        return 1
    try:
        report = model.build(budget, policies, events, now())
    except model.ReportError as error:
        print(str(error), file=sys.stderr)
        return 1
    text = page.render(report)
    output: Path = arguments.output or Path(f"{arguments.budget}-report.html")
    try:
        output.write_text(text, encoding="utf-8")
        print(f"Wrote {output}")
        if arguments.pdf is not None:
            from hush.report import pdf  # imported here: only --pdf needs WeasyPrint

            arguments.pdf.write_bytes(pdf.render(text))
            print(f"Wrote {arguments.pdf}")
    except OSError as error:
        print(f"Could not write the report: {error}", file=sys.stderr)
        return 1
    verification = report.verification
    if not verification.verified:
        for problem in verification.problems:
            print(f"TAMPERED {problem}", file=sys.stderr)
        print(
            f"Ledger of {arguments.namespace}/{arguments.budget} failed verification: the "
            "report says so at the top",
            file=sys.stderr,
        )
        return EXIT_TAMPERED
    print(f"Ledger verified: {verification.sequence} entries, head {verification.head_hash}")
    return 0
