#!/usr/bin/env python3
"""The demo lab's backend: a TCP echo server on every address of its namespace
(IPv4 and IPv6), so relayed clients get their line back."""

from __future__ import annotations

import asyncio
import sys


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(4096):
            writer.write(data)
            await writer.drain()
    except ConnectionError:
        pass
    finally:
        writer.close()


async def main(port: int) -> None:
    server = await asyncio.start_server(echo, host=["0.0.0.0", "::"], port=port, backlog=256)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 9000))
