"""The baseline: a trivial aiohttp JSON POST handler, served like ``gateway serve`` (uvloop, one process)."""

from __future__ import annotations

import sys

import orjson
import uvloop
from aiohttp import web


async def handle(request: web.Request) -> web.Response:
    body = orjson.loads(await request.read())
    return web.Response(body=orjson.dumps({"status": "OK", "balance": "100.00", "currency": "EUR",
                                           "transaction_id": body.get("transaction_id", "")}),
                        content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_post("/{tail:.*}", handle)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)


if __name__ == "__main__":
    main()
