"""The smallest aiohttp reverse proxy: the ceiling of the sidecar's stack, without Hush.

Usage: aiohttp_proxy.py --port N --upstream http://127.0.0.1:M

bench/bench_sidecar.py measures it beside nginx and the sidecar: aiohttp's server reads the
request, one shared keep-alive ClientSession GETs the same path from the upstream, and the
body goes back unchanged. No routing, JSON, noise, accounting, cache, logging or metrics:
whatever the sidecar costs above this row is Hush's own code; what this row costs is the
Python HTTP stack, which no change inside Hush can remove.
"""

from __future__ import annotations

import argparse

import aiohttp
from aiohttp import web


def application(upstream: str) -> web.Application:
    app = web.Application()
    session: dict[str, aiohttp.ClientSession] = {}

    async def open_session(_: web.Application) -> None:
        session["client"] = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=64, keepalive_timeout=60)
        )

    async def close_session(_: web.Application) -> None:
        await session["client"].close()

    async def forward(request: web.Request) -> web.Response:
        async with session["client"].get(upstream + request.path_qs) as reply:
            body = await reply.read()
            return web.Response(body=body, status=reply.status, content_type=reply.content_type)

    app.on_startup.append(open_session)
    app.on_cleanup.append(close_session)
    app.router.add_get("/{tail:.*}", forward)
    return app


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    arguments = parser.parse_args()
    web.run_app(
        application(arguments.upstream.rstrip("/")),
        host="127.0.0.1",
        port=arguments.port,
        access_log=None,
        print=None,
    )


if __name__ == "__main__":
    main()
