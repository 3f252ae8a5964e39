"""The accountant: the operator's HTTPS endpoint where sidecars reserve, commit and release
privacy charges, and the single writer of ``PrivacyBudget`` status.

See docs/design/0007-spending-protocol.md for why the operator (not the sidecars) writes the
ledger, how batching works and why compare-and-swap keeps it correct with any number of
writers.
"""
