"""The control target of the hostile-client load test: a minimal HTTP/1.1 server in a process
of its own that answers every request head with `200 hello`, at once.

    control.py        prints `control listening on 127.0.0.1:PORT`, serves until killed

The legitimate client sends a few requests a second here beside those to the gateway. A stall
that these requests see too came from the machine (the scheduler, memory, the client itself),
not from the gateway; one that only the gateway's requests see came from the gateway.
"""

from __future__ import annotations

import asyncio

ANSWER = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
HEAD_BYTES_MAX = 16 * 1024


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")  # requests carry no body
            if len(head) > HEAD_BYTES_MAX:
                break
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


async def main() -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", 0, limit=HEAD_BYTES_MAX)
    host, port = server.sockets[0].getsockname()[:2]
    print(f"control listening on {host}:{port}", flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
