"""``hush sidecar``: run the noise sidecar from the configuration baked into the pod.

Reads ``HUSH_SIDECAR_CONFIG`` (``hush.sidecar.config``), serves the proxy on the listen port
and ``/healthz``, ``/readyz``, ``/metrics`` on the admin port, and stops cleanly on SIGTERM
or SIGINT. Exits 2 with a message when the configuration cannot be used.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from typing import Any


def register(commands: Any) -> None:
    parser: argparse.ArgumentParser = commands.add_parser(
        "sidecar", help="Run the noise sidecar (configured from HUSH_SIDECAR_CONFIG)."
    )
    parser.add_argument(
        "--config-env",
        default="HUSH_SIDECAR_CONFIG",
        help="Environment variable holding the baked JSON configuration.",
    )
    parser.add_argument(
        "--policy-check-interval",
        default="10s",
        help="How often to ask the accountant whether the baked policy hash is still current "
        "(a duration such as 10s); once it is not, /readyz and covered routes answer 503.",
    )
    parser.add_argument(
        "--noise-pool-size",
        type=int,
        default=None,
        help="Noise samples drawn ahead per distribution (refilled in the background below a "
        "quarter; an empty pool draws on the request path and counts a miss). Default: "
        "$HUSH_NOISE_POOL_SIZE or 4096.",
    )
    parser.add_argument("--log-format", choices=("json", "text"), default="json")
    parser.add_argument("--log-level", default="INFO")
    parser.set_defaults(handler=run)


def run(arguments: argparse.Namespace) -> int:
    from hush.observability import logging as hush_logging
    from hush.sidecar import config

    hush_logging.configure(
        level=getattr(logging, str(arguments.log_level).upper(), logging.INFO),
        log_format=arguments.log_format,
    )
    raw = os.environ.get(arguments.config_env)
    if not raw:
        print(f"{arguments.config_env} is not set: the injector bakes it", file=sys.stderr)
        return 2
    try:
        settings = config.load(raw)
        interval = config.check_interval_seconds(arguments.policy_check_interval)
    except config.ConfigError as error:
        print(str(error), file=sys.stderr)
        return 2
    pool_size = _noise_pool_size(arguments.noise_pool_size)
    if pool_size is None:
        print("the noise pool size must be a whole number of at least 1", file=sys.stderr)
        return 2
    asyncio.run(
        _serve(
            settings,
            policy_check_interval=interval,
            noise_pool_size=pool_size,
        )
    )
    return 0


def _noise_pool_size(flag: int | None) -> int | None:
    """The flag, else ``$HUSH_NOISE_POOL_SIZE``, else 4096; None when not a size."""
    if flag is None:
        raw = os.environ.get("HUSH_NOISE_POOL_SIZE", "4096")
        try:
            flag = int(raw)
        except ValueError:
            return None
    return flag if flag >= 1 else None


async def _serve(settings: Any, *, policy_check_interval: float, noise_pool_size: int) -> None:
    from aiohttp import web

    from hush.sidecar import accountant_client, proxy

    sidecar = proxy.Sidecar(
        settings,
        accountant=accountant_client.AccountantClient(
            url=settings.accountant_url,
            token_path=settings.token_path,
            ca_path=settings.ca_path,
            timeout_seconds=settings.accountant_timeout_seconds,
        ),
        policy_check_interval=policy_check_interval,
        noise_pool_size=noise_pool_size,
    )
    main = web.AppRunner(sidecar.application(), access_log=None)
    admin = web.AppRunner(sidecar.admin_application(), access_log=None)
    await main.setup()
    await admin.setup()
    await web.TCPSite(main, settings.listen_host, settings.listen_port).start()
    await web.TCPSite(admin, settings.listen_host, settings.admin_port).start()
    logging.getLogger("hush.sidecar").info(
        "Started sidecar for DPPolicy %s (%s) on port %d",
        settings.policy_name,
        settings.policy_hash,
        settings.listen_port,
    )
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stopping.set)
    try:
        await stopping.wait()
    finally:
        await main.cleanup()
        await admin.cleanup()
