"""Start and stop the webhook certificate keeper with the operator.

Registered before ``hush.handlers.webhook`` so that the first certificate is loaded before
the webhook server starts listening (kopf runs startup handlers in registration order;
``Keeper.start`` is idempotent, so the server may also call it itself). A failed first load
(the apiserver unreachable, RBAC missing) fails the handler, and kopf retries it.
"""

from __future__ import annotations

from typing import Any

import kopf

from hush.webhook import certificates


@kopf.on.startup(id="webhook_certificates_start")
async def webhook_certificates_start(**_: Any) -> None:
    keeper = certificates.current()
    if keeper is not None:
        await keeper.start()


@kopf.on.cleanup(id="webhook_certificates_stop")
async def webhook_certificates_stop(**_: Any) -> None:
    keeper = certificates.current()
    if keeper is not None:
        await keeper.stop()
