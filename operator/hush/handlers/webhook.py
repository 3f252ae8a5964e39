"""Start and stop the admission webhook server with the operator."""

from __future__ import annotations

from typing import Any

import kopf

from hush.handlers import resources
from hush.webhook import service


@kopf.on.startup(id="webhook_start")
async def webhook_start(**_: Any) -> None:
    await service.current().start()


@kopf.on.cleanup(id="webhook_stop")
async def webhook_stop(**_: Any) -> None:
    await service.current().stop()


@kopf.on.event(*resources.DP_POLICIES, id="webhook_policy_cache")
async def webhook_policy_cache(type: str | None, body: kopf.Body, **_: Any) -> None:
    """The injector reads policies from the operator's watch, not with a GET per pod."""
    service.current().policies.observe(type, body)
