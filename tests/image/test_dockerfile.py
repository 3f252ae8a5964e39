"""The Dockerfile, its build context and its lock files, read without Docker.

What the image promises (docs/image.md) is checked on the files that make it: a base pinned
by digest, two stages of which only the venv reaches the final one, the install steps
delegated to hack/image-install.sh (which test_image_install.py runs), UID 65532 as in the
chart and the injected sidecar, the two entrypoints, a context that sends only what the
Dockerfile copies, and lock files that pin exactly what pyproject.toml asks for.
"""

from __future__ import annotations

import re
import shlex
import tomllib

import pytest

from hush.injection import sidecar
from tests.conftest import REPO_ROOT
from tests.image import dockerfile

DOCKERFILE = REPO_ROOT / "Dockerfile"
LOCK = REPO_ROOT / "hack" / "image-requirements.txt"
BUILD_LOCK = REPO_ROOT / "hack" / "image-build-requirements.txt"
INSTALL_SCRIPT = "hack/image-install.sh"
DIGEST = re.compile(r"@sha256:[0-9a-f]{64}\Z")
REQUIREMENT = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", re.M)
# The subcommands test_image_install.py runs, in the order the Dockerfile runs them.
INSTALL_STEPS = [
    ["toolchain", "/opt/toolchain"],
    ["dependencies", "/opt/toolchain", "/opt/hush"],
    ["hush", "/opt/toolchain", "/src", "/opt/hush"],
]


def _stages() -> tuple[dict[str, str], list[dockerfile.Stage]]:
    return dockerfile.stages(DOCKERFILE.read_text())


def _final() -> dockerfile.Stage:
    return _stages()[1][-1]


def _keyword(stage: dockerfile.Stage, keyword: str) -> list[str]:
    return [item.arguments for item in stage.instructions if item.keyword == keyword]


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(text: str) -> dict[str, str]:
    return {_normalise(name): version for name, version in REQUIREMENT.findall(text)}


def test_every_stage_starts_from_the_base_pinned_by_digest() -> None:
    arguments, stages = _stages()
    assert DIGEST.search(arguments["PYTHON_IMAGE"]), arguments["PYTHON_IMAGE"]
    assert arguments["PYTHON_IMAGE"].startswith("python:3.11")
    assert len(stages) >= 2, "multi-stage: the build tools stay out of the final image"
    assert {stage.base for stage in stages} == {"${PYTHON_IMAGE}"}


def test_the_install_steps_are_the_script_that_the_install_test_runs() -> None:
    build = _stages()[1][0]
    steps = []
    for command in _keyword(build, "RUN"):
        for part in command.split("&&"):
            words = [word for word in shlex.split(part) if not word.startswith("--mount=")]
            assert words[0] == INSTALL_SCRIPT, f"install steps belong in {INSTALL_SCRIPT}: {part}"
            steps.append(words[1:])
    assert steps == INSTALL_STEPS


def test_the_final_stage_gets_the_venv_and_nothing_else() -> None:
    build_name = _stages()[1][0].name
    copies = _keyword(_final(), "COPY")
    assert copies == [f"--from={build_name} /opt/hush /opt/hush"]
    assert not [run for run in _keyword(_final(), "RUN") if "pip" in run]


def test_the_image_runs_as_the_uid_of_the_chart_and_the_injected_sidecar() -> None:
    final = _final()
    assert _keyword(final, "USER") == [f"{sidecar.RUN_AS_USER}:{sidecar.RUN_AS_USER}"]
    # kopf names itself with getpass.getuser(), which needs a passwd entry for the UID.
    runs = " ".join(_keyword(final, "RUN"))
    assert f"--uid {sidecar.RUN_AS_USER}" in runs
    assert "--no-create-home" in runs
    # The base ships its standard library without .pyc files; nothing can write them later.
    assert "compileall" in runs
    deployment = (REPO_ROOT / "charts" / "hush" / "templates" / "deployment.yaml").read_text()
    assert f"runAsUser: {sidecar.RUN_AS_USER}" in deployment
    assert "readOnlyRootFilesystem: true" in deployment


def test_the_entrypoint_is_hush_and_the_default_command_the_operator() -> None:
    final = _final()
    assert _keyword(final, "ENTRYPOINT") == ['["hush"]']
    assert _keyword(final, "CMD") == ['["operator", "--all-namespaces"]']
    environment = " ".join(_keyword(final, "ENV"))
    # The injector runs `hush sidecar` by command, so hush must be on PATH.
    assert "PATH=/opt/hush/bin:$PATH" in environment
    assert "PYTHONDONTWRITEBYTECODE=1" in environment


def test_the_build_context_is_exactly_what_the_dockerfile_copies() -> None:
    sent = set(dockerfile.context_files(REPO_ROOT))
    build = _stages()[1][0]
    sources: list[str] = []
    for copy in _keyword(build, "COPY"):
        sources.extend(copy.split()[:-1])
    for source in sources:
        assert source in sent or any(path.startswith(source + "/") for path in sent), source
    assert all(
        path in sources or any(path.startswith(source + "/") for source in sources) for path in sent
    ), sorted(sent)
    assert "operator/hush/cli/main.py" in sent
    assert not [path for path in sent if "__pycache__" in path or ".egg-info" in path]


@pytest.mark.parametrize(
    ("path", "excluded"),
    [
        (".git/config", True),
        (".venv/bin/python", True),
        ("tests/unit/test_crds.py", True),
        ("charts/hush/values.yaml", True),
        ("hack/demo.sh", True),
        ("hack/image-install.sh", False),
        ("operator/hush/__init__.py", False),
        ("operator/hush/__pycache__/x.cpython-311.pyc", True),
        ("operator/hush.egg-info/PKG-INFO", True),
        ("README.md", False),
    ],
)
def test_dockerignore_patterns(path: str, excluded: bool) -> None:
    patterns = dockerfile.ignore_patterns((REPO_ROOT / ".dockerignore").read_text())
    assert dockerfile.is_excluded(path, patterns) is excluded


def test_the_lock_pins_what_pyproject_asks_for() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    wanted = _pins("\n".join(project["project"]["dependencies"]))
    locked = _pins(LOCK.read_text())
    assert wanted, "pyproject.toml pins its dependencies with =="
    different = {
        name: (version, locked.get(name))
        for name, version in wanted.items()
        if locked.get(name) != version
    }
    assert not different, f"run `make image-lock`: pyproject vs lock {different}"
    assert "hush" not in locked


def test_every_locked_requirement_carries_a_hash() -> None:
    for lock in (LOCK, BUILD_LOCK):
        entries = re.split(r"\n(?=[A-Za-z0-9])", lock.read_text().split("\n\n", 1)[-1])
        for entry in entries:
            if REQUIREMENT.match(entry):
                assert "--hash=sha256:" in entry, f"{lock.name}: {entry.splitlines()[0]}"


def test_the_build_toolchain_is_the_one_pyproject_and_the_makefile_name() -> None:
    project = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    toolchain = _pins(BUILD_LOCK.read_text())
    assert _pins("\n".join(project["build-system"]["requires"])) == {
        "setuptools": toolchain["setuptools"]
    }
    makefile = (REPO_ROOT / "Makefile").read_text()
    assert f"pip=={toolchain['pip']}" in makefile
