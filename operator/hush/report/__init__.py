"""The compliance report of one PrivacyBudget (``hush report BUDGET``), pure.

Owns: the report's model, built from the budget object (spec and status with its ledger), the
DPPolicies that charge it and the Events about them (``model``); the spend-over-time plot as
inline SVG (``plot``, matplotlib); the self-contained HTML (``page``) and its PDF (``pdf``,
WeasyPrint). Nothing here reads the cluster or the network: ``hush.cli.report`` fetches the
objects and writes the files.
"""
