"""Metrics and structured logs. Nothing here may ever see a query answer."""
