"""Unit tests: pure code only. No cluster, no network, no clock, no randomness unless injected."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import pytest
from hypothesis import settings

REPO_ROOT = Path(__file__).resolve().parents[1]

# CI (CI=true) runs every property test with the same examples, so a run is red only for a
# change, never for the draw: property tests explore freely on developers' machines (and keep
# what they find in .hypothesis/), and CI replays a fixed, derandomised set.
settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    settings.load_profile("ci")


@pytest.fixture
def now() -> datetime.datetime:
    return datetime.datetime(2026, 11, 22, 12, 0, 0, tzinfo=datetime.UTC)
