"""Start and stop the background audit (``hush.controllers.audit``) with the operator."""

from __future__ import annotations

from typing import Any

import kopf

from hush.controllers import audit


@kopf.on.startup(id="audit_start")
async def audit_start(**_: Any) -> None:
    loop = audit.current()
    if loop is not None:
        loop.start()


@kopf.on.cleanup(id="audit_stop")
async def audit_stop(**_: Any) -> None:
    loop = audit.current()
    if loop is not None:
        await loop.stop()
