"""A TCP proxy on 127.0.0.1 that delays each direction, to stand in for a real link's latency.

Every chunk is forwarded `delay` seconds after it arrived, so a request/response exchange costs
one round trip of 2 * delay while bytes still stream (a pipe, not a stop-and-wait relay). Run as
a child process so its event loop never competes with the measured client for the GIL:

    python -m bench.proxy --target 127.0.0.1:8787 --delay 0.025   # prints "Listening on PORT"
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import socket
import sys

QUEUE_CHUNKS = 256  # chunks in flight per direction before the reader waits (back-pressure)


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, delay: float) -> None:
    """Copy reader to writer, each chunk `delay` seconds late; end the write side at EOF."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)

    async def send() -> None:
        while True:
            due, data = await queue.get()
            wait = due - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if not data:
                with contextlib.suppress(OSError):
                    if writer.can_write_eof():
                        writer.write_eof()
                return
            writer.write(data)
            await writer.drain()

    sender = asyncio.create_task(send())
    try:
        while data := await reader.read(256 * 1024):
            await queue.put((loop.time() + delay, data))
    except (ConnectionError, OSError):
        pass
    await queue.put((loop.time() + delay, b""))
    with contextlib.suppress(ConnectionError, OSError):
        await sender


async def _handle(
    client_reader: asyncio.StreamReader,
    client_writer: asyncio.StreamWriter,
    target: tuple[str, int],
    delay: float,
) -> None:
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(*target)
    except OSError:
        client_writer.close()
        return
    for w in (client_writer, upstream_writer):
        sock = w.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        await asyncio.gather(
            _pipe(client_reader, upstream_writer, delay),
            _pipe(upstream_reader, client_writer, delay),
        )
    finally:
        for w in (client_writer, upstream_writer):
            w.close()


async def serve(target: tuple[str, int], delay: float, port: int = 0) -> None:
    """Listen on 127.0.0.1:`port` until SIGINT/SIGTERM; print the port once listening."""

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        await _handle(r, w, target, delay)

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    print(f"Listening on {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="host:port to forward to")
    parser.add_argument("--delay", type=float, default=0.025, help="seconds added each way")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args(argv)
    host, _, port = args.target.rpartition(":")
    try:
        import uvloop  # the platform's own dependency: a cheaper loop leaves the CPU to others

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    runner(serve((host, int(port)), args.delay, args.port))
    sys.exit(0)


if __name__ == "__main__":
    main()
