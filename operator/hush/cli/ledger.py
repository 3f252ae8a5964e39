"""``hush ledger show|verify|export BUDGET``: read a PrivacyBudget's ledger from the cluster.

``show`` lists the open leases and the leases written off besides the newest entries (a
"report" entry records how many releases were made under a lease, with the digest of their
request ids) and, per entry, the policy hash it was charged under (shortened; "-" for
entries written before the ledger recorded it). ``verify`` recomputes the hash chain and the
totals (and checks that no open lease used more than it was granted) and exits 1 naming
every entry that was edited, dropped or reordered. ``export`` writes JSON lines: the
checkpoint (if any), every retained entry oldest first (with its ``policyHash`` when
recorded), then every open lease.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from hush.api import common
from hush.api import ledger as wire
from hush.ledger import chain


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "ledger", help="Show, verify or export a PrivacyBudget's ledger."
    )
    actions = parser.add_subparsers(dest="ledger_action", required=True, metavar="ACTION")
    for action, description in (
        ("show", "Summarise the ledger and list its newest entries."),
        ("verify", "Check the hash chain and the totals; exit 1 on any tampering."),
        ("export", "Write the checkpoint and entries as JSON lines."),
    ):
        sub = actions.add_parser(action, help=description)
        sub.add_argument("budget", help="PrivacyBudget name")
        sub.add_argument("--namespace", "-n", default="default")
        sub.set_defaults(handler=_HANDLERS[action])


def _load(arguments: argparse.Namespace) -> wire.Ledger | None:
    from hush.kube import client  # imported here so other commands start fast

    found = client.read_custom(
        group=common.API_GROUP,
        version=common.API_VERSION,
        plural="privacybudgets",
        namespace=arguments.namespace,
        name=arguments.budget,
    )
    if found is None:
        print(f"PrivacyBudget {arguments.namespace}/{arguments.budget} not found", file=sys.stderr)
        return None
    raw = (found.get("status") or {}).get("ledger")
    return wire.Ledger.model_validate(raw) if raw else wire.Ledger()


def show(arguments: argparse.Namespace) -> int:
    ledger = _load(arguments)
    if ledger is None:
        return 1
    checkpoint = ledger.checkpoint
    print(f"Budget:        {arguments.namespace}/{arguments.budget} ({ledger.accounting or '-'})")
    print(f"Entries:       {ledger.sequence} (newest {len(ledger.entries)} kept in full)")
    print(f"Epsilon spent: {ledger.epsilon_spent}")
    print(f"Head hash:     {ledger.head_hash}")
    print(f"Open reservations: {len(ledger.reservations)}")
    print(
        f"Open leases:   {len(ledger.leases)}; written off at expiry: "
        f"{ledger.leases_written_off} (units {ledger.written_off or [0]})"
    )
    for lease in ledger.leases:
        print(
            f"  lease {lease.lease_id} pod {lease.consumer.namespace}/{lease.consumer.pod} "
            f"route {lease.route}: granted {lease.granted}, used {lease.used} by "
            f"{lease.releases} release(s), expires {lease.expires}"
        )
    if checkpoint is not None:
        print(f"Checkpoint:    entries {checkpoint.first_sequence}-{checkpoint.last_sequence}")
        for consumer in checkpoint.consumers:
            print(
                f"  {consumer.namespace}/{consumer.policy} team {consumer.team}: "
                f"{consumer.count} entries, cost {consumer.cost}"
            )
    print(
        "SEQ     ACTION     TEAM           POLICY               POLICY HASH   EPSILON   "
        "RELEASES REQUEST"
    )
    for entry in ledger.entries:
        releases = entry.releases if entry.releases is not None else "-"
        print(
            f"{entry.sequence:<7} {entry.action:<10} {entry.consumer.team:<14} "
            f"{entry.consumer.policy:<20} {_short_hash(entry.policy_hash):<13} "
            f"{entry.epsilon or '-':<9} {releases!s:<8} {entry.request_id}"
        )
    return 0


def _short_hash(policy_hash: str | None) -> str:
    """A recorded policy hash's first 12 digits, without its "sha256:" prefix (enough to
    tell specs apart; ``export`` has the full hash), "-" when the entry did not record one."""
    if not policy_hash:
        return "-"
    return policy_hash.removeprefix("sha256:")[:12]


def verify(arguments: argparse.Namespace) -> int:
    ledger = _load(arguments)
    if ledger is None:
        return 1
    problems = chain.verify(ledger)
    if problems:
        for problem in problems:
            print(f"TAMPERED {problem}", file=sys.stderr)
        print(
            f"Ledger of {arguments.namespace}/{arguments.budget} failed verification: "
            f"{len(problems)} problem(s)",
            file=sys.stderr,
        )
        return 1
    print(
        f"Ledger of {arguments.namespace}/{arguments.budget} verified: {ledger.sequence} "
        f"entries, head {ledger.head_hash}"
    )
    return 0


def export(arguments: argparse.Namespace) -> int:
    ledger = _load(arguments)
    if ledger is None:
        return 1
    if ledger.checkpoint is not None:
        record = {"type": "checkpoint", **ledger.checkpoint.model_dump(mode="json", by_alias=True)}
        print(json.dumps(record, sort_keys=True))
    for entry in ledger.entries:
        record = {
            "type": "entry",
            **entry.model_dump(mode="json", by_alias=True, exclude_none=True),
        }
        print(json.dumps(record, sort_keys=True))
    for lease in ledger.leases:
        print(
            json.dumps(
                {"type": "lease", **lease.model_dump(mode="json", by_alias=True)}, sort_keys=True
            )
        )
    return 0


_HANDLERS = {"show": show, "verify": verify, "export": export}
