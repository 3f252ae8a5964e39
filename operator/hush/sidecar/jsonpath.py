"""The JSON-path subset of ``DPPolicy`` fields: select the values to noise, replace them.

Grammar (``hush.api.dppolicy.JSON_PATH_PATTERN``): ``$`` then any sequence of ``.key``,
``[*]`` (every element of an array) and ``.*`` (every value of an object). No filters,
indices, slices or recursive descent: a path must name the same places whatever the data.

``select`` fails (``MissingFieldError``) when a key is absent or a step meets the wrong
type, so a covered field can never slip through unnoised because the answer changed shape.
A wildcard over an empty array or object selects nothing, which is not an error.

Owns path parsing and location bookkeeping; it does not look at the selected values.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any, Literal

StepKind = Literal["key", "items", "values"]

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[\*\]|\.\*")


class MissingFieldError(LookupError):
    """A covered path does not exist in the answer (the message names the path, no values)."""


@dataclasses.dataclass(frozen=True)
class Step:
    kind: StepKind
    key: str = ""


@dataclasses.dataclass(frozen=True)
class Location:
    """One selected value: ``container[key]``, and its concrete path for messages."""

    container: Any  # dict or list of the parsed answer
    key: str | int
    path: str

    def get(self) -> Any:
        return self.container[self.key]

    def set(self, value: Any) -> None:
        self.container[self.key] = value


@functools.lru_cache(maxsize=512)
def parse(path: str) -> tuple[Step, ...]:
    """The steps of ``path``; ``ValueError`` outside the documented subset."""
    if not path.startswith("$"):
        raise ValueError(f"JSON path {path!r} must start with $")
    steps: list[Step] = []
    position = 1
    while position < len(path):
        match = _STEP.match(path, position)
        if match is None:
            raise ValueError(
                f"JSON path {path!r} is outside the supported subset ($.key, [*], .*) at "
                f"character {position}"
            )
        text = match.group(0)
        if text == "[*]":
            steps.append(Step("items"))
        elif text == ".*":
            steps.append(Step("values"))
        else:
            steps.append(Step("key", match.group(1)))
        position = match.end()
    return tuple(steps)


def select(document: Any, path: str) -> list[Location]:
    """Every location ``path`` names in ``document``, in document order."""
    steps = parse(path)
    if not steps:
        raise MissingFieldError(f"JSON path {path} selects the whole answer, not a field")
    found: list[Location] = []
    _walk(document, steps, "$", found, path)
    return found


def _walk(node: Any, steps: tuple[Step, ...], here: str, found: list[Location], path: str) -> None:
    step, rest = steps[0], steps[1:]
    children: list[tuple[str | int, str]]
    if step.kind == "key":
        if not isinstance(node, dict) or step.key not in node:
            raise MissingFieldError(f"The answer has no {here}.{step.key} (field {path})")
        children = [(step.key, f"{here}.{step.key}")]
    elif step.kind == "items":
        if not isinstance(node, list):
            raise MissingFieldError(f"{here} is not an array (field {path})")
        children = [(index, f"{here}[{index}]") for index in range(len(node))]
    else:
        if not isinstance(node, dict):
            raise MissingFieldError(f"{here} is not an object (field {path})")
        children = [(key, f"{here}.{key}") for key in node]
    for key, child_path in children:
        if rest:
            _walk(node[key], rest, child_path, found, path)
        else:
            found.append(Location(container=node, key=key, path=child_path))
