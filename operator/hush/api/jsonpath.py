"""The grammar of the JSON paths a ``DPPolicy`` names: steps, wildcard prefixes, collisions.

Grammar (``hush.api.dppolicy.JSON_PATH_PATTERN``): ``$`` then any sequence of ``.key``,
``[*]`` (every element of an array) and ``.*`` (every value of an object). No filters,
indices, slices or recursive descent: a path names the same places whatever the data.

Owns parsing and the relations between two paths that the policy's checks need
(``wildcard_prefixes``: where a path needs a domain; ``collide``: two paths that would claim
the same place of the released document). Reading or writing documents is the sidecar's
(``hush.sidecar.release``); which domain a prefix has is ``hush.privacy.route_cost``'s.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Literal

StepKind = Literal["key", "items", "values"]

_STEP = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[\*\]|\.\*")


@dataclasses.dataclass(frozen=True)
class Step:
    kind: StepKind
    key: str = ""

    @property
    def wildcard(self) -> bool:
        return self.kind != "key"

    def text(self) -> str:
        if self.kind == "items":
            return "[*]"
        if self.kind == "values":
            return ".*"
        return f".{self.key}"


@functools.lru_cache(maxsize=1024)
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


def render(steps: tuple[Step, ...]) -> str:
    """The path text of ``steps`` (``parse``'s inverse)."""
    return "$" + "".join(step.text() for step in steps)


def wildcard_prefixes(path: str) -> tuple[str, ...]:
    """Each prefix of ``path`` that ends at a wildcard, outermost first.

    ``$.days[*].regions.*.count`` -> ``($.days[*], $.days[*].regions.*)``: each needs a domain.
    """
    steps = parse(path)
    return tuple(render(steps[: index + 1]) for index, step in enumerate(steps) if step.wildcard)


def collide(first: str, second: str) -> bool:
    """True when the two paths could name the same place, or one a place inside the other's.

    Two paths are independent only when they part at two different keys of the same object
    before either ends; a key against ``.*`` may be the same key, ``[*]`` against a key or
    ``.*`` asks the same place to be an array and an object, and a path that ends where the
    other continues would put a value where the other needs a container.
    """
    for one, other in zip(parse(first), parse(second), strict=False):
        if one.kind == "key" and other.kind == "key":
            if one.key != other.key:
                return False
            continue
        if one.kind == other.kind:
            continue
        return True  # a key against .* (maybe the same key) or an array against an object
    return True  # one is a prefix of the other (or they are equal)
