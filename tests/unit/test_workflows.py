"""The GitHub Actions workflows: least privilege, and every action pinned by commit SHA.

A tag such as ``@v4`` can be moved to other code by whoever controls the action's
repository; a full commit SHA cannot. So every ``uses:`` names a 40-hex commit, with the
release it is in as a comment for people (``# v7.0.1``), and one action is pinned to one
commit throughout. The token every job gets is read-only, and no workflow runs on
``pull_request_target`` (which hands a writable token to code from forks).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO_ROOT

WORKFLOWS = sorted((REPO_ROOT / ".github" / "workflows").glob("*.y*ml"))
PINNED = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+(?:/[A-Za-z0-9_./-]+)?@[0-9a-f]{40}$")
USES_LINE = re.compile(r"^\s*(?:-\s*)?uses:\s*(\S+)\s*(?:#\s*(\S+))?")
VERSION_COMMENT = re.compile(r"^v\d+(?:\.\d+){0,2}$")
READ_ONLY = {"read", "none"}


def _load(path: Path) -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(path.read_text())
    return document


def _triggers(workflow: dict[str, Any]) -> Any:
    # YAML 1.1 (PyYAML) reads the bare key `on` as the boolean True.
    return workflow.get("on", workflow.get(True))


def _uses_lines(path: Path) -> list[tuple[str, str | None]]:
    found = []
    for line in path.read_text().splitlines():
        match = USES_LINE.match(line)
        if match:
            found.append((match.group(1), match.group(2)))
    return found


def test_there_are_workflows() -> None:
    assert [path.name for path in WORKFLOWS] == ["ci.yml"]


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_the_token_is_read_only(path: Path) -> None:
    workflow = _load(path)
    permissions = workflow.get("permissions")
    assert isinstance(permissions, dict), "set top-level permissions explicitly, per scope"
    assert permissions.get("contents") == "read"
    assert set(permissions.values()) <= READ_ONLY, permissions
    for name, job in workflow["jobs"].items():
        job_permissions = job.get("permissions", {})
        assert isinstance(job_permissions, dict), f"job {name}: {job_permissions!r}"
        assert set(job_permissions.values()) <= READ_ONLY, f"job {name}: {job_permissions}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_no_pull_request_target(path: Path) -> None:
    triggers = _triggers(_load(path))
    names = [triggers] if isinstance(triggers, str) else list(triggers)
    assert "pull_request_target" not in names


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_every_action_is_pinned_by_commit_with_its_release(path: Path) -> None:
    workflow = _load(path)
    parsed = [
        step["uses"]
        for job in workflow["jobs"].values()
        for step in [job, *job.get("steps", [])]
        if "uses" in step
    ]
    lines = _uses_lines(path)
    assert parsed, "no uses: found"
    assert [reference for reference, _ in lines] == parsed
    commits: dict[str, tuple[str, str | None]] = {}
    for reference, version in lines:
        if reference.startswith("./"):
            continue  # an action in this repository, pinned by the checkout itself
        assert PINNED.match(reference), f"{reference}: pin to a full 40-hex commit SHA"
        assert version, f"{reference}: name the release in a comment, e.g. # v1.2.3"
        assert VERSION_COMMENT.match(version), f"{reference}: {version} is not like v1.2.3"
        repository = "/".join(reference.split("@")[0].split("/")[:2]).lower()
        commit = reference.split("@")[1]
        assert commits.setdefault(repository, (commit, version)) == (commit, version), (
            f"{repository} is pinned to two commits"
        )


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda path: path.name)
def test_checkouts_do_not_keep_the_token(path: Path) -> None:
    for name, job in _load(path)["jobs"].items():
        for step in job.get("steps", []):
            if str(step.get("uses", "")).startswith("actions/checkout@"):
                assert step.get("with", {}).get("persist-credentials") is False, name


def test_ci_runs_the_make_targets_a_developer_runs() -> None:
    workflow = _load(REPO_ROOT / ".github" / "workflows" / "ci.yml")
    makefile = (REPO_ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([a-zA-Z0-9_-]+):.*##", makefile, re.M))
    commands = [
        step["run"]
        for job in workflow["jobs"].values()
        for step in job.get("steps", [])
        if "run" in step
    ]
    for command in commands:
        if command.startswith("make "):
            assert command.split()[1] in targets, command
        else:
            assert command == ".ci/run", command
    assert set(workflow["jobs"]) >= {"lint", "unit", "e2e", "e2e-kind", "chart"}
