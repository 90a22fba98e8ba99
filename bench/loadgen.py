"""The local platform's own capacity: small-file uploads per second at a fixed concurrency.

Each of `concurrency` keep-alive HTTP/1.1 connections sends POST /files back to back, with the
request bytes built before the clock starts and responses parsed only as far as Content-Length,
so the generator costs far less CPU than the server it measures (it reports its own CPU time to
prove it). Run as a child process:

    python -m bench.loadgen --url http://127.0.0.1:8787 --key mk_... --project pod-16f -c 8
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import random
import resource
import statistics
import sys
import time
from urllib.parse import urlsplit

from bench.sites import SMALL, Kind


def _body(kind: Kind, rng: random.Random, name: str) -> dict[str, str]:
    size = max(kind.low, min(kind.high, int(kind.median * (0.5 + rng.random()))))
    if kind.ext == ".png":
        return {
            "filename": name,
            "content": base64.b64encode(rng.randbytes(size)).decode(),
            "encoding": "base64",
        }
    return {"filename": name, "content": "x" * size}


def build_requests(
    host: str, prefix: str, key: str, project: str, count: int, seed: int
) -> list[bytes]:
    """`count` complete HTTP requests for distinct files, mixed like the "small" site profile."""
    rng = random.Random(seed)
    kinds = [k for k in SMALL for _ in range(round(k.share * 20))]
    out = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        body = json.dumps(_body(kind, rng, f"load/{seed}/f{i:06d}{kind.ext}")).encode()
        head = (
            f"POST {prefix}/{project}/files HTTP/1.1\r\nHost: {host}\r\nX-API-Key: {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        ).encode()
        out.append(head + body)
    return out


async def _read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
            break
    await reader.readexactly(length)
    return status


async def _connection(
    host: str, port: int, requests: list[bytes], latencies: list[float], errors: list[int]
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        for request in requests:
            started = time.perf_counter()
            writer.write(request)
            status = await _read_response(reader)
            latencies.append(time.perf_counter() - started)
            if status != 200:
                errors.append(status)
    finally:
        writer.close()


async def run_load(url: str, key: str, project: str, concurrency: int, total: int) -> dict:
    """Send `total` uploads over `concurrency` connections; rates, latencies and our own CPU."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    per = max(1, total // concurrency)
    batches = [
        build_requests(f"{host}:{port}", "/v1/project", key, project, per, seed=c + 1)
        for c in range(concurrency)
    ]
    latencies: list[float] = []
    errors: list[int] = []
    cpu_before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    await asyncio.gather(*(_connection(host, port, batch, latencies, errors) for batch in batches))
    elapsed = time.perf_counter() - started
    cpu_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_after.ru_utime - cpu_before.ru_utime) + (cpu_after.ru_stime - cpu_before.ru_stime)
    latencies.sort()
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": len(errors),
        "seconds": elapsed,
        "rps": len(latencies) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p95_ms": latencies[int(len(latencies) * 0.95) - 1] * 1000,
        "generator_cpu_s": cpu,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="the platform's base URL")
    parser.add_argument("--key", default=os.environ.get("MOSAIC_API_KEY", ""))
    parser.add_argument("--project", required=True)
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("-n", "--requests", type=int, default=2000)
    args = parser.parse_args(argv)
    try:
        import uvloop

        runner = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(run_load(args.url, args.key, args.project, args.concurrency, args.requests))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
