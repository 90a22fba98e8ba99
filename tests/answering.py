"""A stand-in `wire.Transport` for unit tests of the client's mechanisms (retries, error mapping,
redaction): it answers every request from a function, with no network.

The function takes and returns httpx's request and response, used here only as convenient value
types (headers, JSON bodies); it may raise `wire`'s errors to stand for a failed exchange.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx

from mosaicsync import wire

Handler = Callable[[httpx.Request], httpx.Response]


class Answering:
    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.closed = False

    def _answer(
        self, method: str, url: str, headers: dict[str, str], body: wire.Body
    ) -> httpx.Response:
        content = body if body is None or isinstance(body, bytes) else b"".join(body)
        response = self.handler(httpx.Request(method, url, headers=headers, content=content))
        response.read()
        return response

    def send(
        self, method: str, url: str, headers: dict[str, str], body: wire.Body
    ) -> wire.Response:
        r = self._answer(method, url, headers, body)
        return wire.Response(method, url, r.status_code, r.reason_phrase, r.headers, r.content)

    @contextmanager
    def stream(self, method: str, url: str, headers: dict[str, str]) -> Iterator[wire.Stream]:
        r = self._answer(method, url, headers, None)
        rest = memoryview(r.content)

        def read(size: int) -> bytes:
            nonlocal rest
            chunk, rest = rest[:size], rest[size:]
            return bytes(chunk)

        yield wire.Stream(method, url, r.status_code, r.reason_phrase, r.headers, read=read)

    def close(self) -> None:
        self.closed = True
