"""Reading the sample manifests under samples/ (shared by unit and e2e tests)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

SAMPLES = Path(__file__).resolve().parents[1] / "samples"
EXPECT_PREFIX = "# expect-error:"


@dataclasses.dataclass(frozen=True)
class Sample:
    path: Path
    manifest: dict[str, Any]
    expected_error: str | None

    @property
    def id(self) -> str:
        return self.path.stem


def load(kind: str) -> list[Sample]:
    """Every sample under samples/<kind>/ (valid or invalid), in a stable order."""
    samples = []
    for path in sorted((SAMPLES / kind).glob("*.yaml")):
        text = path.read_text(encoding="utf-8")
        expected = None
        for line in text.splitlines():
            if line.startswith(EXPECT_PREFIX):
                expected = line.removeprefix(EXPECT_PREFIX).strip()
        samples.append(Sample(path=path, manifest=yaml.safe_load(text), expected_error=expected))
    return samples
