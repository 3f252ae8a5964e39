"""Unit tests: pure code only. No cluster, no network, no clock, no randomness unless injected."""

from __future__ import annotations

import datetime
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def now() -> datetime.datetime:
    return datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)
