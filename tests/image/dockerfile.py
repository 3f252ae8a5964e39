"""Reading the Dockerfile and the build context it gets, without Docker.

Two small readers, enough for this repository's files and no more:

- ``instructions`` splits a Dockerfile into (keyword, arguments) pairs, joining
  backslash-continued lines and dropping comments, and ``stages`` groups them by ``FROM``.
- ``context_files`` lists what ``docker build`` would send as its context, applying
  ``.dockerignore`` the way Docker's pattern matcher (moby/patternmatcher) does: patterns
  are paths relative to the context root, ``*`` matches within one path element, ``**``
  across elements, a leading ``!`` re-includes, the last matching pattern wins, and a
  pattern that matches a directory matches everything below it.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Iterator
from pathlib import Path


@dataclasses.dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case, e.g. "RUN"
    arguments: str  # the rest, continuation lines joined with single spaces


@dataclasses.dataclass(frozen=True)
class Stage:
    base: str  # what FROM names (an ARG reference or an earlier stage)
    name: str | None
    instructions: tuple[Instruction, ...]


def instructions(text: str) -> list[Instruction]:
    """The Dockerfile's instructions in order (parser directives and comments dropped)."""
    result: list[Instruction] = []
    pending = ""
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # a comment inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1].strip() + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        if whole:
            keyword, _, arguments = whole.partition(" ")
            result.append(Instruction(keyword.upper(), arguments.strip()))
    if pending.strip():
        raise ValueError("The Dockerfile ends inside a continued line")
    return result


def stages(text: str) -> tuple[dict[str, str], list[Stage]]:
    """The global ARG defaults (before the first FROM) and the build stages."""
    global_arguments: dict[str, str] = {}
    result: list[Stage] = []
    current: list[Instruction] | None = None
    base = name = None
    for instruction in instructions(text):
        if instruction.keyword == "FROM":
            if current is not None and base is not None:
                result.append(Stage(base, name, tuple(current)))
            words = instruction.arguments.split()
            base = words[0]
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            current = []
        elif current is None:
            if instruction.keyword == "ARG":
                key, _, value = instruction.arguments.partition("=")
                global_arguments[key.strip()] = value.strip()
        else:
            current.append(instruction)
    if current is not None and base is not None:
        result.append(Stage(base, name, tuple(current)))
    return global_arguments, result


# -- .dockerignore ------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IgnorePattern:
    regex: re.Pattern[str]
    exclusion: bool  # False for a "!" pattern (re-include)
    text: str


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    parts: list[str] = []
    index = 0
    while index < len(pattern):
        if pattern.startswith("**/", index):
            parts.append("(?:.*/)?")
            index += 3
        elif pattern.startswith("**", index):
            parts.append(".*")
            index += 2
        elif pattern[index] == "*":
            parts.append("[^/]*")
            index += 1
        elif pattern[index] == "?":
            parts.append("[^/]")
            index += 1
        else:
            parts.append(re.escape(pattern[index]))
            index += 1
    return re.compile("".join(parts) + r"\Z")


def ignore_patterns(text: str) -> list[IgnorePattern]:
    patterns = []
    for raw_line in text.splitlines():
        line = raw_line.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = not line.startswith("!")
        body = line.lstrip("!").strip()
        cleaned = os.path.normpath(body).lstrip("/")
        patterns.append(IgnorePattern(_pattern_regex(cleaned), exclusion, line))
    return patterns


def is_excluded(relative_path: str, patterns: list[IgnorePattern]) -> bool:
    """Whether Docker leaves ``relative_path`` (a file, ``/``-separated) out of the context."""
    elements = relative_path.split("/")
    prefixes = ["/".join(elements[: length + 1]) for length in range(len(elements))]
    excluded = False
    for pattern in patterns:
        if any(pattern.regex.match(prefix) for prefix in prefixes):
            excluded = pattern.exclusion
    return excluded


def _may_reinclude_below(directory: str, patterns: list[IgnorePattern]) -> bool:
    return any(
        not pattern.exclusion
        and (pattern.text.lstrip("!").strip().startswith(directory + "/") or "**" in pattern.text)
        for pattern in patterns
    )


def context_files(root: Path) -> Iterator[str]:
    """Every file ``docker build root`` sends, as ``/``-separated paths relative to root."""
    ignore_file = root / ".dockerignore"
    patterns = ignore_patterns(ignore_file.read_text()) if ignore_file.exists() else []
    for directory, subdirectories, files in os.walk(root):
        relative_directory = Path(directory).relative_to(root).as_posix()
        prefix = "" if relative_directory == "." else relative_directory + "/"
        # Do not walk .git, .venv and the like when nothing below them can come back.
        subdirectories[:] = sorted(
            name
            for name in subdirectories
            if not is_excluded(prefix + name, patterns)
            or _may_reinclude_below(prefix + name, patterns)
        )
        for name in sorted(files):
            path = prefix + name
            if not is_excluded(path, patterns):
                yield path
