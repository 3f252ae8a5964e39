"""Prometheus metrics of the operator and its accountant.

Labels are bounded: budget (namespace/name), team, outcome code. Never a request id, pod
name or value: those would make series unbounded or leak data.
"""

from __future__ import annotations

import prometheus_client

CHARGES = prometheus_client.Counter(
    "hush_accountant_charges",
    "Spend operations answered by the accountant, by outcome.",
    ["namespace", "budget", "team", "action", "outcome"],
)
EPSILON_CHARGED = prometheus_client.Counter(
    "hush_accountant_epsilon_charged",
    "Epsilon of granted charges, as the policy prices them (a charge is never refunded).",
    ["namespace", "budget", "team"],
)
CHARGE_LATENCY = prometheus_client.Histogram(
    "hush_accountant_charge_seconds",
    "Time from receiving a spend request to answering it (includes the durable write).",
    ["action"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
LEASES_WRITTEN_OFF = prometheus_client.Counter(
    "hush_ledger_leases_written_off",
    "Leases that expired unsettled: their unused units stay spent (docs/design/0021).",
    ["namespace", "budget", "team"],
)
STATUS_WRITES = prometheus_client.Counter(
    "hush_ledger_status_writes",
    "Compare-and-swap writes of PrivacyBudget status, by result.",
    ["namespace", "budget", "result"],
)
BATCH_SIZE = prometheus_client.Histogram(
    "hush_ledger_batch_operations",
    "Operations group-committed by one status write.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 512),
)
EPSILON_SPENT = prometheus_client.Gauge(
    "hush_budget_epsilon_spent",
    "Epsilon spent (rounded up) per budget and team; team '' is the dataset total.",
    ["namespace", "budget", "team"],
)
EPSILON_REMAINING = prometheus_client.Gauge(
    "hush_budget_epsilon_remaining",
    "Epsilon remaining per budget and team; team '' is the dataset total.",
    ["namespace", "budget", "team"],
)

ADMISSION_REQUESTS = prometheus_client.Counter(
    "hush_admission_requests",
    "AdmissionReviews answered by the webhook server, by webhook path and decision.",
    ["webhook", "decision"],
)
ADMISSION_LATENCY = prometheus_client.Histogram(
    "hush_admission_request_seconds",
    "Time to answer an AdmissionReview, including lookups.",
    ["webhook"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
ADMISSION_ERRORS = prometheus_client.Counter(
    "hush_admission_errors",
    "AdmissionReviews that could not be decided (malformed body, failed lookup).",
    ["webhook", "reason"],
)
WEBHOOK_CERTIFICATE_EXPIRY = prometheus_client.Gauge(
    "hush_webhook_certificate_expiry_timestamp_seconds",
    "When the webhook serving certificate this replica serves expires (Unix time); set each "
    "time a certificate is loaded (hush.webhook.certificates), so a renewal that keeps "
    "failing shows as an approaching value (the chart's HushWebhookCertificateNearExpiry).",
)

DRIFTED_PODS = prometheus_client.Gauge(
    "hush_drifted_pods",
    "Pods whose injected sidecar differs from what the policy and injector produce now.",
    ["namespace", "policy"],
)
ROLLOUTS_TRIGGERED = prometheus_client.Counter(
    "hush_rollouts_triggered",
    "Workloads rolled (pod-template annotation applied) after a policy hash changed.",
    ["namespace", "policy"],
)

AUDIT_VIOLATIONS = prometheus_client.Gauge(
    "hush_audit_violations",
    "Existing workloads breaking the admission rules, from the background audit.",
    ["namespace", "mode", "rule"],
)


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped in-cluster
    prometheus_client.start_http_server(port, addr=address)
