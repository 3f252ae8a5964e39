"""The privacy ledger: pure transitions (``book``), the hash chain (``chain``) and checks.

Nothing here does I/O: ``hush.accountant`` reads a budget, applies operations with a
``Book`` and writes the result back with compare-and-swap.
"""
