"""A fault-injecting HTTP/1.1 proxy between mosaicsync and the local platform, for the tests.

It speaks HTTP on both sides, so it can break an exchange at the places a real network or load
balancer breaks it: an error answered instead of the request (500, 502, 503, 429 with
`Retry-After`), the connection dropped before the request reaches the platform, or after the
platform processed it (the client never learns it succeeded), a response cut half-way, or a slow
one. Everything else is relayed byte for byte, keep-alive included; the `Host` header is kept, so
the presigned upload URLs and site URLs the platform builds from it point back at the proxy.

Which fault a request meets is drawn from `random.Random(seed | request identity | occurrence)`:
the same seed gives the same fates to the same requests, whatever order concurrent uploads
arrive in. `counts()` says what was injected; `down()` makes the platform unreachable.

    with FaultProxy(server.base_url, Faults(server_error=0.2), seed=7) as proxy:
        run mosaicsync with MOSAIC_API_URL=proxy.api_url
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlsplit

# Fault kinds, in the order the draw walks them.
KINDS = ("server_error", "rate_limit", "drop_before", "drop_after", "truncate", "slow")
SERVER_ERRORS = (500, 502, 503)
MAX_HEAD = 64 * 1024


@dataclass(frozen=True)
class Faults:
    """The share of requests (0..1) that meets each fault; the rest pass untouched."""

    server_error: float = 0.0  # 500/502/503 instead of forwarding: the platform did nothing
    rate_limit: float = 0.0  # 429 with Retry-After instead of forwarding
    drop_before: float = 0.0  # connection closed before forwarding
    drop_after: float = 0.0  # forwarded and processed, then the connection closed unanswered
    truncate: float = 0.0  # forwarded; half the response, then the connection closed
    slow: float = 0.0  # forwarded; the response body held back for `slow_seconds`
    retry_after: str = "1"
    slow_seconds: float = 0.25

    def __post_init__(self) -> None:
        total = sum(getattr(self, kind) for kind in KINDS)
        if not 0.0 <= total <= 1.0:
            raise ValueError(f"fault rates add up to {total}, not within 0..1")


@dataclass(frozen=True)
class Request:
    """One request as read from the client: what a rule or the seeded draw decides on."""

    method: str
    target: str  # path and query, as sent
    headers: tuple[tuple[str, str], ...]
    body: bytes  # decoded from chunked encoding when it was chunked

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)


@dataclass(frozen=True)
class Reply:
    """A canned answer a rule can give instead of forwarding."""

    status: int
    body: bytes = b""
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()


# A rule sees each request first; it returns a Reply, a fault kind to force, "pass" to forward
# untouched, or None to leave the request to the seeded draw.
Rule = Callable[[Request], "Reply | str | None"]


class _Message:
    """A request or response head plus its body, raw (for relaying) and decoded."""

    def __init__(self, head: bytes, raw_body: bytes, body: bytes) -> None:
        self.head = head
        self.raw_body = raw_body
        self.body = body
        lines = head.decode("latin-1").split("\r\n")
        self.start = lines[0]
        self.headers = tuple(
            (k.strip(), v.strip())
            for k, _, v in (line.partition(":") for line in lines[1:] if line)
        )

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k.lower() == name), None)

    def keep_alive(self) -> bool:
        connection = (self.header("connection") or "").lower()
        return "close" not in connection and not self.start.upper().startswith("HTTP/1.0")


class _Closed(Exception):
    """The peer closed the connection between messages."""


async def _read_body(
    reader: asyncio.StreamReader, head: _Message, *, response_to: str | None
) -> tuple[bytes, bytes]:
    """(raw, decoded) body after `head`; `response_to` is the request method for a response."""
    if "chunked" in (head.header("transfer-encoding") or "").lower():
        raw, decoded = bytearray(), bytearray()
        while True:
            line = await reader.readuntil(b"\r\n")
            raw += line
            size = int(line.split(b";")[0].strip(), 16)
            if size == 0:
                while True:  # trailers, up to the blank line
                    trailer = await reader.readuntil(b"\r\n")
                    raw += trailer
                    if trailer == b"\r\n":
                        return bytes(raw), bytes(decoded)
            chunk = await reader.readexactly(size + 2)
            raw += chunk
            decoded += chunk[:-2]
    length = head.header("content-length")
    if length is not None:
        data = await reader.readexactly(int(length))
        return data, data
    if response_to is None:
        return b"", b""  # a request without a length has no body
    status = int(head.start.split()[1])
    if response_to == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b"", b""
    data = await reader.read()  # delimited by the connection closing
    return data, data


async def _read_message(
    reader: asyncio.StreamReader, *, response_to: str | None = None
) -> _Message:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial:
            raise _Closed from None
        raise
    message = _Message(head, b"", b"")
    raw, body = await _read_body(reader, message, response_to=response_to)
    message.raw_body, message.body = raw, body
    return message


def _reply_bytes(reply: Reply) -> bytes:
    head = [
        f"HTTP/1.1 {reply.status} {_REASONS.get(reply.status, 'Error')}",
        f"Content-Type: {reply.content_type}",
        f"Content-Length: {len(reply.body)}",
        *(f"{k}: {v}" for k, v in reply.headers),
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + reply.body


_REASONS = {
    200: "OK",
    401: "Unauthorized",
    402: "Payment Required",
    403: "Forbidden",
    404: "Not Found",
    413: "Content Too Large",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


def injected_error(status: int, retry_after: str | None = None) -> Reply:
    """What a struggling platform or its load balancer answers: JSON, or HTML for a 502."""
    if status == 502:
        return Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>\n", "text/html")
    headers = (("Retry-After", retry_after),) if retry_after is not None else ()
    body = f'{{"success": false, "error": "injected fault: HTTP {status}"}}'.encode()
    return Reply(status, body, headers=headers)


@dataclass
class _Upstream:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    used: bool = False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.used = False


@dataclass
class _State:
    counts: Counter[str] = field(default_factory=Counter)
    seen: Counter[str] = field(default_factory=Counter)
    lock: threading.Lock = field(default_factory=threading.Lock)


class FaultProxy:
    """A real HTTP proxy on 127.0.0.1, port 0, run in its own thread; `stop()` joins it."""

    def __init__(
        self,
        upstream: str,
        faults: Faults | None = None,
        *,
        seed: int = 0,
        rules: list[Rule] | None = None,
    ) -> None:
        parts = urlsplit(upstream)
        assert parts.hostname and parts.port, upstream
        self.upstream = (parts.hostname, parts.port)
        self.faults = faults or Faults()
        self.seed = seed
        self.rules: list[Rule] = list(rules or [])
        self.port = 0
        self._state = _State()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    # -- the test's side ---------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return self.base_url + "/v1/project"

    def counts(self) -> dict[str, int]:
        """What happened so far: `requests`, `forwarded`, and one entry per injected fault."""
        with self._state.lock:
            return dict(self._state.counts)

    def injected(self) -> dict[str, int]:
        """Only the faults, by kind (server errors by status)."""
        return {k: v for k, v in self.counts().items() if k not in ("requests", "forwarded")}

    def reset_counts(self) -> None:
        with self._state.lock:
            self._state.counts.clear()

    def start(self) -> FaultProxy:
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start() below
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

        self._thread = threading.Thread(target=run, name="fault-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(10) or failure:
            raise RuntimeError(f"the fault proxy did not start: {failure}")
        return self

    def stop(self) -> None:
        """Close the listener and every connection, stop the loop and join its thread."""
        if self._loop is None or self._thread is None:
            return
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the fault proxy thread did not stop"
        self._thread = None
        self._loop = None

    def down(self) -> None:
        """The platform becomes unreachable: connections are refused, open ones are cut."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._go_down(), self._loop).result(10)

    def up(self) -> None:
        """Listen again, on the same port, after `down()`."""
        assert self._loop is not None
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- the loop's side -----------------------------------------------------------------------

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(
            self._serve, "127.0.0.1", self.port, reuse_address=True, backlog=512
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _go_down(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        await self._cancel_connections()

    async def _shutdown(self) -> None:
        await self._go_down()

    async def _cancel_connections(self) -> None:
        tasks = list(self._connections)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _count(self, key: str) -> None:
        with self._state.lock:
            self._state.counts[key] += 1

    def _draw(self, request: Request) -> tuple[str | None, int]:
        """The seeded fate of this request: (fault kind or None, status for a server error)."""
        identity = hashlib.sha256(
            request.method.encode() + b" " + request.path.encode() + b"\n" + request.body
        ).hexdigest()
        with self._state.lock:
            occurrence = self._state.seen[identity]
            self._state.seen[identity] += 1
        rng = random.Random(f"{self.seed}|{identity}|{occurrence}")
        point = rng.random()
        status = rng.choice(SERVER_ERRORS)
        faults = self.faults
        edge = 0.0
        for kind in KINDS:
            edge += getattr(faults, kind)
            if point < edge:
                return kind, status
        return None, status

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        upstream = _Upstream()
        try:
            while True:
                try:
                    message = await _read_message(reader)
                except _Closed:
                    break
                if not await self._exchange(message, writer, upstream):
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass  # the client went away mid-message, or sent something that is not HTTP
        except asyncio.CancelledError:
            pass  # stop() or down()
        finally:
            upstream.close()
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)
            self._connections.discard(task)

    async def _exchange(
        self, message: _Message, writer: asyncio.StreamWriter, upstream: _Upstream
    ) -> bool:
        """Handle one request; False when the client connection must close."""
        method, target = message.start.split(" ")[:2]
        request = Request(method, target, message.headers, message.body)
        self._count("requests")
        kind: str | None = None
        status = 500
        for rule in self.rules:
            verdict = rule(request)
            if isinstance(verdict, Reply):
                self._count(f"rule_{verdict.status}")
                writer.write(_reply_bytes(verdict))
                await writer.drain()
                return message.keep_alive()
            if verdict is not None:
                kind = verdict
                break
        if kind is None:
            kind, status = self._draw(request)
        elif kind == "pass":
            kind = None
        faults = self.faults

        if kind == "server_error":
            self._count(f"status_{status}")
            writer.write(_reply_bytes(injected_error(status)))
            await writer.drain()
            return message.keep_alive()
        if kind == "rate_limit":
            self._count("status_429")
            writer.write(_reply_bytes(injected_error(429, faults.retry_after)))
            await writer.drain()
            return message.keep_alive()
        if kind == "drop_before":
            self._count("drop_before")
            return False

        response = await self._forward(message, method, upstream)
        self._count("forwarded")
        if kind == "drop_after":
            self._count("drop_after")
            return False
        if kind == "truncate":
            self._count("truncate")
            whole = response.head + response.raw_body
            cut = len(response.head) + len(response.raw_body) // 2
            writer.write(whole[: max(cut, len(response.head) // 2)])
            await writer.drain()
            return False
        writer.write(response.head)
        if kind == "slow":
            self._count("slow")
            await writer.drain()
            await asyncio.sleep(faults.slow_seconds)
        writer.write(response.raw_body)
        await writer.drain()
        if not response.keep_alive():
            upstream.close()
            return False
        return message.keep_alive()

    async def _forward(self, message: _Message, method: str, upstream: _Upstream) -> _Message:
        """Send the request upstream on a kept-alive connection; one resend if it went stale."""
        for attempt in range(2):
            if upstream.writer is None:
                upstream.reader, upstream.writer = await asyncio.open_connection(*self.upstream)
            assert upstream.reader is not None
            reused = upstream.used
            upstream.used = True
            try:
                upstream.writer.write(message.head + message.raw_body)
                await upstream.writer.drain()
                return await _read_message(upstream.reader, response_to=method)
            except (_Closed, ConnectionError):
                # A kept-alive connection the platform had already closed: nothing was read.
                upstream.close()
                if not reused or attempt:
                    raise ConnectionResetError("the platform closed the connection") from None
        raise AssertionError("unreachable")
