"""A fast OpenAI-compatible upstream for benchmarks: raw asyncio streams, fixed replies, keep-alive.

``POST .../chat/completions`` answers a fixed ``chat.completion`` JSON, or (``"stream": true`` in the
body) a fixed server-sent-event stream (chunked transfer encoding, one chunk per event, a usage event when
``include_usage`` is asked for). It parses only what it must (request line, ``Content-Length``, the
``stream`` flag), so its own cost per request is tens of microseconds and a benchmark's figures are the
client's and the server's, not this upstream's. Any other request gets a 404.

Run alone: ``python benchmarks/fast_upstream.py [--port 0]``: prints ``READY <port>`` once listening.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re

REPLY_WORDS = "Paris is the capital of France . It has been since the tenth century .".split()
MODEL = "bench-model"
_USAGE = {"prompt_tokens": 12, "completion_tokens": len(REPLY_WORDS), "total_tokens": 12 + len(REPLY_WORDS)}
_STREAM_TRUE = re.compile(rb'"stream"\s*:\s*true')


def _json_body() -> bytes:
    text = " ".join(REPLY_WORDS)
    return json.dumps({
        "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop", "logprobs": None}],
        "usage": _USAGE,
    }).encode()


def _events(with_usage: bool) -> list[bytes]:
    base = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1700000000, "model": MODEL}

    def chunk(delta: dict[str, str], finish: str | None = None) -> dict[str, object]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}]}

    out = [chunk({"role": "assistant", "content": ""})]
    out += [chunk({"content": (" " if i else "") + w}) for i, w in enumerate(REPLY_WORDS)]
    out.append(chunk({}, "stop"))
    if with_usage:
        out.append({**base, "choices": [], "usage": _USAGE})
    events = [f"data: {json.dumps(o)}\n\n".encode() for o in out] + [b"data: [DONE]\n\n"]
    return [b"%x\r\n%s\r\n" % (len(e), e) for e in events] + [b"0\r\n\r\n"]


JSON_BODY = _json_body()
JSON_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % len(JSON_BODY))
SSE_HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
SSE_PLAIN, SSE_USAGE = _events(False), _events(True)
NOT_FOUND = b"HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: 21\r\n\r\n{\"error\":\"not found\"}"


async def read_request(reader: asyncio.StreamReader) -> "tuple[bytes, bytes] | None":
    """The next request on a keep-alive connection: its head (request line and headers) and its body
    (``Content-Length`` bytes); ``None`` once the client has closed the connection."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
        return None
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    return head, (await reader.readexactly(length) if length else b"")


async def _handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Serve one keep-alive connection until the client closes it."""
    try:
        while True:
            request = await read_request(reader)
            if request is None:
                return
            head, body = request
            if not head.startswith(b"POST ") or b"/chat/completions" not in head.split(b" ", 2)[1]:
                writer.write(NOT_FOUND)
            elif _STREAM_TRUE.search(body):
                writer.write(SSE_HEAD)
                for event in SSE_USAGE if b"include_usage" in body else SSE_PLAIN:
                    writer.write(event)
            else:
                writer.write(JSON_HEAD + JSON_BODY)
            await writer.drain()
    except (ConnectionError, asyncio.IncompleteReadError):
        return
    finally:
        writer.close()


async def serve(port: int = 0, host: str = "127.0.0.1") -> None:
    server = await asyncio.start_server(_handle, host, port, backlog=1024)
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    try:
        asyncio.run(serve(args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
