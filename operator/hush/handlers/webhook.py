"""Start and stop the admission webhook server with the operator."""

from __future__ import annotations

from typing import Any

import kopf

from hush.webhook import service


@kopf.on.startup(id="webhook_start")
async def webhook_start(**_: Any) -> None:
    await service.current().start()


@kopf.on.cleanup(id="webhook_stop")
async def webhook_stop(**_: Any) -> None:
    await service.current().stop()
