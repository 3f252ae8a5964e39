"""The source layout must not break the standard library's ``operator`` module."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_stdlib_operator_module_still_works_in_the_project_environment() -> None:
    result = subprocess.run(
        [sys.executable, "-c", "import operator; print(operator.eq(1, 1), operator.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO_ROOT,
    )
    assert result.stdout.startswith("True ")
    assert "site-packages" not in result.stdout or "hush" not in result.stdout


def test_operator_source_root_is_not_a_package() -> None:
    assert not (REPO_ROOT / "operator" / "__init__.py").exists()


def test_hush_is_imported_from_the_source_root() -> None:
    import hush

    assert hush.__file__ is not None
    assert (REPO_ROOT / "operator" / "hush").resolve() in [
        parent.resolve() for parent in [__import__("pathlib").Path(hush.__file__).parent]
    ]
