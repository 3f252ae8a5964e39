"""Start and stop the accountant with the operator."""

from __future__ import annotations

from typing import Any

import kopf

from hush.accountant import service


@kopf.on.startup(id="accountant_start")
async def accountant_start(**_: Any) -> None:
    await service.current().start()


@kopf.on.cleanup(id="accountant_stop")
async def accountant_stop(**_: Any) -> None:
    await service.current().stop()
