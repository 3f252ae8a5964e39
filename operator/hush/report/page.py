"""The report as one self-contained HTML page (``render``).

Self-contained: the style is inline, the plot is inline SVG, the icon is a ``data:`` URL, and
the page loads nothing else (no fonts, scripts or images from anywhere), so it opens offline
and can be filed as it is. The report's model is embedded as JSON
(``<script type="application/json" id="hush-report-data">``, data, never run) so that a tool
can check the numbers without scraping the tables.

The verification result comes first: a ledger that fails verification puts a red banner
saying so, with every problem, above everything else.
"""

from __future__ import annotations

import html
import json
from collections.abc import Iterable, Sequence

from hush.report import model, plot

_STYLE = """
@page { size: A4 landscape; margin: 12mm; }
body { font-family: "DejaVu Sans", Helvetica, Arial, sans-serif; color: #1b1b1b;
  margin: 1.5em auto; padding: 0 1.5em; max-width: 1200px; font-size: 13px; line-height: 1.4; }
h1 { font-size: 22px; margin: 0 0 .2em 0; }
h2 { font-size: 16px; border-bottom: 1px solid #bbb; margin-top: 1.6em; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .5em 0; width: 100%; }
th, td { border: 1px solid #ccc; padding: 3px 6px; text-align: left; vertical-align: top; }
.wrap { overflow-wrap: anywhere; word-break: break-all; }
th { background: #f0f0f0; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
code, .hash { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 11px;
  overflow-wrap: anywhere; word-break: break-all; }
.banner { padding: 12px 16px; border-radius: 4px; margin: 0 0 1em 0; font-size: 15px; }
.banner.ok { background: #e6f4ea; border: 2px solid #1e7e34; color: #14532d; }
.banner.tampered { background: #fde8e8; border: 4px solid #b00020; color: #7a0014; }
.banner.tampered strong.head { font-size: 22px; display: block; margin-bottom: .3em; }
.muted { color: #555; }
.plot svg { max-width: 100%; height: auto; }
.entries td, .entries th { font-size: 11px; }
dl.facts { display: grid; grid-template-columns: max-content auto; gap: 2px 14px; }
dl.facts dt { font-weight: bold; }
dl.facts dd { margin: 0; }
/* After the body rule, so that it wins in print (the PDF: @page sets the margins). */
@media print { body { padding: 0; margin: 0; max-width: none; } }
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _w(value: object) -> str:
    """A long value without spaces (a time, a scale) that may break anywhere to fit."""
    return f'<span class="wrap">{_e(value)}</span>'


def _units(cost: Sequence[int]) -> str:
    return "[" + ", ".join(str(unit) for unit in cost) + "]"


def _table(
    headers: Sequence[str],
    rows: Iterable[Sequence[str]],
    *,
    numeric: frozenset[int] = frozenset(),
    css: str = "",
    row_class: str = "",
) -> str:
    head = "".join(f"<th>{_e(header)}</th>" for header in headers)
    body: list[str] = []
    for row in rows:
        cells = "".join(
            f'<td class="num">{cell}</td>' if index in numeric else f"<td>{cell}</td>"
            for index, cell in enumerate(row)
        )
        body.append(f'<tr class="{row_class}">{cells}</tr>' if row_class else f"<tr>{cells}</tr>")
    if not body:
        return '<p class="muted">None.</p>'
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _banner(verification: model.Verification) -> str:
    if verification.verified:
        return (
            '<div class="banner ok" id="verification">'
            f"<strong>Ledger verified.</strong> {verification.sequence} entries; the hash chain "
            "and the totals are consistent. Head hash "
            f'<code class="hash">{_e(verification.head_hash)}</code></div>'
        )
    problems = "".join(f"<li>{_e(problem)}</li>" for problem in verification.problems)
    return (
        '<div class="banner tampered" id="verification">'
        '<strong class="head">LEDGER FAILED VERIFICATION: it was tampered with.</strong>'
        "The hash chain or the totals of this budget's ledger do not match what the operator "
        "wrote; the numbers below are as found and cannot be trusted. Head hash as found "
        f'<code class="hash">{_e(verification.head_hash)}</code>'
        f"<ul>{problems}</ul></div>"
    )


def _amount_cells(amount: model.Amount | None) -> list[str]:
    if amount is None:
        return ["-", "-", "-"]
    return [_e(amount.total), _e(amount.spent), _e(amount.remaining)]


def _totals(report: model.Report) -> str:
    rows: list[list[str]] = [
        ["dataset epsilon", *_amount_cells(report.epsilon)],
    ]
    if report.delta is not None:
        rows.append(["dataset delta", *_amount_cells(report.delta)])
    for team in report.teams:
        rows.append([f"team {_e(team.team)} epsilon", *_amount_cells(team.epsilon)])
        if team.delta is not None:
            rows.append([f"team {_e(team.team)} delta", *_amount_cells(team.delta)])
    return _table(
        ["", "total", "spent", "remaining"], rows, numeric=frozenset({1, 2, 3}), css="totals"
    )


def _facts(report: model.Report) -> str:
    verification = report.verification
    folded = (
        f"entries {verification.checkpoint[0]}-{verification.checkpoint[1]} folded into the "
        "checkpoint"
        if verification.checkpoint
        else "none folded"
    )
    facts = [
        ("Budget", f"{report.namespace}/{report.name}"),
        ("Dataset", report.dataset),
        ("Accounting", report.accounting),
        ("Total", f"epsilon {report.total_epsilon}, delta {report.total_delta}"),
        ("Enforcement", report.enforcement),
        ("Renewal", report.renewal),
        ("State", report.state),
        ("Ledger", f"{verification.sequence} entries, {verification.retained} retained, {folded}"),
        ("Generated", report.generated),
    ]
    items = "".join(f"<dt>{_e(key)}</dt><dd>{_e(value)}</dd>" for key, value in facts)
    return f'<dl class="facts">{items}</dl>'


def _histories(report: model.Report) -> str:
    if not report.policies:
        return '<p class="muted">No policy charges this budget.</p>'
    parts: list[str] = []
    folded = report.verification.checkpoint
    if folded is not None:
        parts.append(
            f'<p class="muted">Entries {folded[0]}-{folded[1]} are folded into the checkpoint, '
            "which keeps each consumer's totals but not the releases: the periods below are "
            "those of the retained entries.</p>"
        )
    for policy in report.policies:
        state = (
            f'current hash <code class="hash">{_e(policy.current_hash or "-")}</code>'
            if policy.exists
            else "the policy no longer exists"
        )
        parts.append(f"<h3>DPPolicy {_e(policy.name)} (team {_e(policy.team)}): {state}</h3>")
        rows = [
            [
                "current spec" + (f" ({_e(policy.current_hash)})" if policy.current_hash else "")
                if period.current
                else "an earlier spec",
                f'<code class="hash">{_e(period.policy_hash)}</code>'
                if period.policy_hash
                else '<span class="muted">not recorded</span>',
                _e(", ".join(period.routes) or "-"),
                _e(period.mechanism),
                _w(period.noise_scale),
                _w(period.sensitivity),
                _e(period.epsilon),
                _e(period.delta),
                f"{period.first_sequence} ({_w(period.first_time)})",
                f"{period.last_sequence} ({_w(period.last_time)})",
                str(period.entries),
            ]
            for period in policy.periods
        ]
        parts.append(
            _table(
                [
                    "in force",
                    "policy hash",
                    "routes",
                    "mechanism",
                    "scale",
                    "sensitivity",
                    "epsilon",
                    "delta",
                    "first entry",
                    "last entry",
                    "entries",
                ],
                rows,
                numeric=frozenset({10}),
            )
        )
    return "".join(parts)


def render(report: model.Report) -> str:
    """The page, as text (UTF-8 when written)."""
    verification = report.verification
    svg = plot.spend_svg(report.series)
    entries = _table(
        [
            "seq",
            "time",
            "action",
            "team",
            "policy",
            "route",
            "mechanism",
            "epsilon",
            "delta",
            "cost units",
            "request",
            "hash",
        ],
        (
            [
                str(row.sequence),
                _w(row.time),
                _e(row.action),
                _e(row.team),
                _e(row.policy),
                _e(row.route or "-"),
                _e(row.mechanism or "-"),
                _e(row.epsilon or "-"),
                _e(row.delta or "-"),
                _e(_units(row.cost)),
                f'<code class="hash">{_e(row.request_id)}</code>',
                f'<code class="hash">{_e(row.hash)}</code>',
            ]
            for row in report.entries
        ),
        numeric=frozenset({0, 7, 8}),
        css="entries",
        row_class="entry",
    )
    consumers = _table(
        ["namespace", "policy", "team", "entries", "cost units", "epsilon"],
        (
            [
                _e(row.namespace),
                _e(row.policy or "-"),
                _e(row.team),
                str(row.entries),
                _e(_units(row.cost)),
                _e(row.epsilon),
            ]
            for row in report.consumers
        ),
        numeric=frozenset({3, 5}),
        css="consumers",
        row_class="consumer",
    )
    releases = _table(
        ["policy", "route", "mechanism", "epsilon per release", "releases", "cost units"],
        (
            [
                _e(row.policy),
                _e(row.route),
                _e(row.mechanism),
                _e(row.epsilon),
                str(row.releases),
                _e(_units(row.cost)),
            ]
            for row in report.releases
        ),
        numeric=frozenset({3, 4}),
        css="releases",
        row_class="release",
    )
    alerts = _table(
        ["time", "source", "subject", "reason", "count", "message"],
        (
            [
                _e(alert.time or "-"),
                _e(alert.source),
                _e(alert.subject),
                _e(alert.reason),
                str(alert.count),
                _e(alert.message),
            ]
            for alert in report.alerts
        ),
        numeric=frozenset({4}),
        css="alerts",
        row_class="alert",
    )
    data = json.dumps(report.as_json(), sort_keys=True).replace("</", "<\\/")
    plot_part = (
        f'<div class="plot">{svg}</div>'
        if svg
        else '<p class="muted">No retained entry with a time: nothing to plot.</p>'
    )
    title = f"Privacy compliance report: {report.namespace}/{report.name}"
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{"LEDGER FAILED VERIFICATION: " if not verification.verified else ""}{_e(title)}</title>
<style>{_STYLE}</style>
</head>
<body>
{_banner(verification)}
<h1>{_e(title)}</h1>
<p class="muted">Made by <code>hush report</code> from the PrivacyBudget, its ledger, the
DPPolicies that charge it and the cluster's Events. Every amount is as the budget's accountant
counts it; cost units are the integers the ledger adds.</p>
{_facts(report)}
<h2>Guarantee</h2>
<p id="guarantee">{_e(report.guarantee)}</p>
<h2>Totals (epsilon and delta)</h2>
{_totals(report)}
<h2>Spend over time per team and policy</h2>
<p class="muted">Cumulative epsilon after each retained entry; a line starts at what the
checkpoint had folded before the first retained entry. A renewal starts a team's window again.
</p>
{plot_part}
<h3>Spent per team and policy (checkpoint and retained entries)</h3>
{consumers}
<h2>Releases by route and mechanism (retained entries)</h2>
{releases}
<h2>Policy-hash history</h2>
<p class="muted">Each ledger entry records the policy hash its pod was built from (checked
against the policy's hash when it was charged) and the release it charged (mechanism, scale,
sensitivity, epsilon, delta): each distinct pair is a period during which that version of the
policy was in force, and the one whose hash is the policy's current hash is current. Entries
written before the ledger recorded hashes show "not recorded"; such a period is current when
the current spec still charges its release.</p>
{_histories(report)}
<h2>Alerts fired</h2>
<p class="muted">The budget's alerting conditions while True, policies not Ready, and Warning
Events about the budget or its policies (Events expire after the apiserver's TTL, an hour by
default).</p>
{alerts}
<h2>Ledger entries (retained)</h2>
{entries}
<h2>Chain verification</h2>
<p>Result: <strong>{"verified" if verification.verified else "FAILED"}</strong>; head hash
<code class="hash" id="head-hash">{_e(verification.head_hash)}</code>; newest sequence
{verification.sequence}.</p>
<script type="application/json" id="hush-report-data">{data}</script>
</body>
</html>
"""
