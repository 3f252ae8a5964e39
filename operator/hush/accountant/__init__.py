"""The accountant: the operator's HTTPS endpoint where sidecars charge the cost of each
release before they read their upstream, and the single writer of ``PrivacyBudget`` status.

A charge names the policy and route only; the cost is computed here from the policy
(``pricing``), and it is final: there is no refund (docs/design/0018). See
docs/design/0007-spending-protocol.md for why the operator (not the sidecars) writes the
ledger, how batching works and why compare-and-swap keeps it correct with any number of
writers.
"""
