"""The least a Python HTTP server in front of an upstream can add: a pass-through proxy for benchmarks.

A raw ASGI app on uvicorn (the same server and the same defaults as ``alignware serve``: httptools and
uvloop when installed) that sends each ``POST .../chat/completions`` body as it came to the upstream on one
shared aiohttp session and passes the answer's bytes back as they arrive. No parsing, no pipeline, no
checks: ``benchmarks/server.py`` runs it as its ``floor`` arm, so the latency ``alignware serve`` adds is
read beside what one more hop through Python costs on the same machine in the same run.

Run alone: ``python benchmarks/floor_proxy.py UPSTREAM_BASE PORT`` (``UPSTREAM_BASE`` ends in ``/v1``).
"""

from __future__ import annotations

import sys
from typing import Any

import aiohttp
import uvicorn

_session: aiohttp.ClientSession | None = None


async def close() -> None:
    """Close the shared upstream session (the server does on shutdown; an in-process caller when done)."""
    global _session
    if _session is not None:
        await _session.close()
        _session = None


def make_app(upstream: str) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        global _session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["path"] == "/health":
            await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": b'{"status":"ok"}'})
            return
        body = b""
        more = True
        while more:
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        if _session is None:
            _session = aiohttp.ClientSession()
        headers = {"content-type": "application/json", "authorization": "Bearer sk-bench"}
        async with _session.post(upstream + scope["path"].removeprefix("/v1"), data=body, headers=headers) as r:
            kind = r.headers.get("content-type", "application/json").encode()
            await send({"type": "http.response.start", "status": r.status, "headers": [(b"content-type", kind)]})
            async for piece in r.content.iter_any():
                await send({"type": "http.response.body", "body": piece, "more_body": True})
            await send({"type": "http.response.body", "body": b""})

    return app


if __name__ == "__main__":
    uvicorn.run(make_app(sys.argv[1]), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
