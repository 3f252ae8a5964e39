"""Run the shipped Argo CD health checks (argocd/resource_customizations) in real Lua 5.4.

Argo CD evaluates ``health.lua`` with the live object bound to the global ``obj`` and reads
the returned ``{status, message}``. This harness does the same: the object is turned into a
Lua table constructor, the script runs in a function, and the result is printed as JSON-safe
lines. The interpreter is Debian's, provided by ``hack/lua.sh`` (cached, no root).
"""

from __future__ import annotations

import functools
import subprocess
from pathlib import Path
from typing import Any

REPOSITORY = Path(__file__).resolve().parents[1]
CUSTOMIZATIONS = REPOSITORY / "argocd" / "resource_customizations"


@functools.cache
def interpreter() -> str:
    result = subprocess.run(
        [str(REPOSITORY / "hack" / "lua.sh")], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"hack/lua.sh failed: {result.stderr}")
    return result.stdout.strip().splitlines()[-1]


def _lua_string(text: str) -> str:
    """A Lua string literal: UTF-8 bytes, with quotes, backslashes and controls escaped."""
    escaped = []
    for byte in text.encode("utf-8"):
        if byte in (0x22, 0x5C) or byte < 0x20 or byte == 0x7F:
            escaped.append(f"\\{byte:03d}")
        else:
            escaped.append(chr(byte) if byte < 0x80 else f"\\{byte:03d}")
    return '"' + "".join(escaped) + '"'


def to_lua(value: Any) -> str:
    """A Lua expression for a JSON value (arrays 1-based, as Argo CD's conversion does)."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return _lua_string(value)
    if isinstance(value, list):
        return "{" + ", ".join(to_lua(item) for item in value) + "}"
    if isinstance(value, dict):
        return "{" + ", ".join(f"[{_lua_string(k)}] = {to_lua(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"cannot convert {type(value).__name__}")


def health(group: str, kind: str, obj: dict[str, Any]) -> tuple[str, str]:
    """(status, message) that Argo CD would show for ``obj``."""
    script = (CUSTOMIZATIONS / group / kind / "health.lua").read_text()
    program = (
        f"obj = {to_lua(obj)}\n"
        f"local hs = (function()\n{script}\nend)()\n"
        'io.write(hs.status, "\\n", hs.message or "", "\\n")\n'
    )
    result = subprocess.run(
        [interpreter(), "-"], input=program, capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise RuntimeError(f"{kind} health.lua failed: {result.stderr}")
    status, _, message = result.stdout.partition("\n")
    return status, message.rstrip("\n")
