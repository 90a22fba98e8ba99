"""HTTP/1.1 under the platform client: keep-alive connections from the standard library.

A deploy of small files is bound by the client's CPU per request, and most of it was the HTTP
library's: on loopback httpx spent 0.80-0.94 ms of CPU per request where `http.client` spends
0.20-0.22 ms, and importing httpx cost every command about 75 ms before its first byte of work.
The client needs little of a general library: JSON in and out, a streamed PUT and a streamed
GET, no redirects, no compression, no cookies. What it does need is here: TLS verified against
the CA certificates of SSL_CERT_FILE, SSL_CERT_DIR or certifi (loaded at the first handshake),
proxies from the environment (HTTP_PROXY, HTTPS_PROXY, ALL_PROXY, NO_PROXY, as httpx honoured
them), separate connect and read timeouts, connections reused across threads, and errors that
say whether the request can have reached the server (which decides whether resending it is
safe).

A request whose body is whole in memory (every API call, every small file) is written and its
answer read here, on the connection's socket: `http.client` builds the head field by field and
parses the answer's through the `email` package, which cost a deploy of small files about
0.4 ms of CPU per file. Connections are opened here too (a socket, TLS when the URL says
https); `http.client` is imported only to open a tunnel through a proxy, or to stream a body
from an iterator or a download: with the `email` package it parses answers with, it cost every
command ~27 ms of imports before its first request.

Retries, error mapping and the routes live one level up, in `api.MosaicClient`; a `Transport`
is only "send this, return what came back".
"""

from __future__ import annotations

import json as _json
import os
import select
import socket
import sys
import threading
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager, suppress
from typing import TYPE_CHECKING, Any, NoReturn, Protocol
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    import http.client
    import ssl

Body = bytes | Iterable[bytes] | None


class TransportError(Exception):
    """The exchange failed below HTTP. `sent` is False only when the request cannot have reached
    the server (it never connected), so resending it is safe whatever the request was."""

    sent = True
    describe = "the connection failed"


class ConnectFailed(TransportError):
    sent = False
    describe = "cannot connect"


class ConnectTimedOut(ConnectFailed):
    describe = "timed out"


class Untrusted(ConnectFailed):
    """The server's TLS certificate did not verify (an unknown issuer: often a proxy that
    inspects TLS, whose CA must then be named in SSL_CERT_FILE)."""

    describe = "its TLS certificate is not trusted"


class TimedOut(TransportError):
    describe = "timed out"


class Dropped(TransportError):
    describe = "the connection was dropped"


class Headers(dict[str, str]):
    """An answer's header fields by lower-case name, looked up whatever the case; a field sent
    more than once holds its values joined by ", "."""

    def __getitem__(self, name: str) -> str:
        return super().__getitem__(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and super().__contains__(name.lower())

    def get(self, name: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(name.lower(), default)


class Response:
    """A whole answer: status, headers (case-insensitive `get`) and body."""

    __slots__ = ("content", "headers", "method", "reason", "status", "url")

    def __init__(
        self,
        method: str,
        url: str,
        status: int,
        reason: str,
        headers: Mapping[str, str],
        content: bytes,
    ) -> None:
        self.method = method
        self.url = url
        self.status = status
        self.reason = reason
        self.headers = headers
        self.content = content

    def json(self) -> Any:
        """The body as JSON; ValueError when it is not."""
        return _json.loads(self.content)


class Stream(Response):
    """An answer whose body is read as it arrives (a download never whole in memory); `read`
    reads what is left into `content`. Made with a `Response`'s fields but the content."""

    def __init__(self, *head: Any, read: Callable[[int], bytes]) -> None:
        super().__init__(*head, b"")
        self._read = read

    def iter_bytes(self, size: int) -> Iterator[bytes]:
        while True:
            try:
                chunk = self._read(size)
            except Exception as exc:
                _raise_as_read(exc)
            if not chunk:
                return
            yield chunk

    def read(self) -> Response:
        """The rest of the body, as a whole `Response`."""
        self.content = b"".join(self.iter_bytes(1024 * 1024))
        return self


class Transport(Protocol):
    """What the client sends through: the connection pool, or a test's stand-in."""

    def send(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response: ...

    def stream(
        self, method: str, url: str, headers: dict[str, str]
    ) -> AbstractContextManager[Stream]: ...

    def close(self) -> None: ...


_Origin = tuple[str, str, int]


class _Proxy:
    def __init__(self, url: str) -> None:
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme != "http":
            raise ConnectFailed(
                f"the proxy {parts.scheme}://{parts.hostname} is not supported (only http:// "
                "proxies are); unset it or set NO_PROXY for the platform's host"
            )
        self.host = parts.hostname or ""
        self.port = parts.port or 80
        self.headers: dict[str, str] = {}
        if parts.username is not None:
            login = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.headers["Proxy-Authorization"] = "Basic " + b64encode(login.encode()).decode()


def _proxy_for(scheme: str, host: str) -> _Proxy | None:
    """The proxy the environment names for this URL, if any (checked once per connection)."""
    if not any(k.lower().endswith("_proxy") for k in os.environ):
        return None
    import urllib.request  # only when a proxy variable is set: it costs an import

    proxies = urllib.request.getproxies_environment()
    url = proxies.get(scheme) or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(host, proxies):
        return None
    return _Proxy(url)


def _mapped(exc: BaseException) -> TransportError:
    if isinstance(exc, TimeoutError):
        return TimedOut(str(exc) or "timed out")
    return Dropped(f"{type(exc).__name__}: {exc}")


def _from_the_network(exc: BaseException) -> bool:
    """A failure of the connection or of the answer's framing, not the body's own error."""
    if isinstance(exc, OSError):
        return True
    # Its errors can only come once it is imported. Another thread may be importing it right
    # now: the module is then in `sys.modules` before its classes are defined.
    base = getattr(sys.modules.get("http.client"), "HTTPException", None)
    return base is not None and isinstance(exc, base)


def _fail(conn: _Conn, exc: BaseException) -> NoReturn:
    """An exchange failed midway: its connection is closed (a request half sent or an answer
    half read cannot carry another), a network failure is raised as a `TransportError`, and
    anything else (the body's own error: a file that changed while it was read) as it is."""
    conn.close()
    _raise_as_read(exc)


def _raise_as_read(exc: BaseException) -> NoReturn:
    """`exc` as the caller sees it: a fault this module's reader found as it is, a network
    failure as a `TransportError`, anything else (the body's own error) unchanged."""
    if isinstance(exc, TransportError):
        raise exc
    if _from_the_network(exc):
        raise _mapped(exc) from exc
    raise exc


def _closed_by_peer(sock: socket.socket | None) -> bool:
    """An idle keep-alive connection the server has closed (or sent something unasked on)."""
    if sock is None:
        return True
    try:
        readable, _, _ = select.select([sock], [], [], 0)
    except (OSError, ValueError):
        return True
    return bool(readable)


class _Conn:
    """One keep-alive connection: its socket, and the fields a plain-HTTP proxy wants on every
    request through it (None when the socket reaches the origin itself or a tunnel to it)."""

    __slots__ = ("proxy_headers", "sock")

    def __init__(self, sock: socket.socket, proxy_headers: dict[str, str] | None) -> None:
        self.sock: socket.socket | None = sock
        self.proxy_headers = proxy_headers

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


class Pool:
    """Keep-alive connections, reused across threads: each request takes an idle connection to
    its origin (or opens one) and gives it back once its answer has been read whole.

    At most `max_idle` connections per origin are kept; the number open at once is the number
    of threads sending, which the caller bounds.
    """

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 10.0,
        context: ssl.SSLContext | None = None,  # default: a tls.DeferredCAContext
        headers: Mapping[str, str] | None = None,
        max_idle: int = 32,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._context = context
        self.headers = dict(headers or {})
        self.max_idle = max_idle
        self._idle: dict[_Origin, list[_Conn]] = {}
        self._lock = threading.Lock()
        self._closed = False

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS context of https:// connections, made at the first one."""
        if self._context is None:
            from mosaicsync.tls import DeferredCAContext

            with self._lock:
                if self._context is None:
                    self._context = DeferredCAContext()
        return self._context

    def close(self) -> None:
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                conn.close()

    def send(self, method: str, url: str, headers: dict[str, str], body: Body) -> Response:
        if body is not None and not isinstance(body, bytes):
            conn, origin, raw = self._exchange(method, url, headers, body)
            try:
                content = raw.read()
            except BaseException as exc:
                _fail(conn, exc)
            self._release(origin, conn, raw.will_close)
            return Response(method, url, raw.status, raw.reason, raw.headers, content)
        conn, origin, target, host = self._acquire(url)
        try:
            assert conn.sock is not None
            conn.sock.sendall(
                _request_head(method, target, host, self._headers(conn, headers), body)
            )
            status, reason, fields, content, will_close = _Answer(conn.sock).read(method)
        except BaseException as exc:
            _fail(conn, exc)
        self._release(origin, conn, will_close)
        return Response(method, url, status, reason, fields, content)

    @contextmanager
    def stream(self, method: str, url: str, headers: dict[str, str]) -> Iterator[Stream]:
        conn, origin, raw = self._exchange(method, url, headers, None)
        try:
            yield Stream(method, url, raw.status, raw.reason, raw.headers, read=raw.read)
        except BaseException:
            conn.close()
            raise
        if raw.isclosed():  # read to its end: the connection can carry the next request
            self._release(origin, conn, raw.will_close)
        else:
            conn.close()

    def _exchange(
        self, method: str, url: str, headers: dict[str, str], body: Body
    ) -> tuple[_Conn, _Origin, http.client.HTTPResponse]:
        """Send the request and read the answer's head; the body is the caller's to read.
        Through `http.client`, on the pooled connection's socket: it streams a body from an
        iterator and an answer to its reader."""
        import http.client

        conn, origin, target, host = self._acquire(url)
        try:
            speaker = http.client.HTTPConnection("unused", timeout=self.timeout)
            speaker.sock = conn.sock  # set: `http.client` never connects it itself
            fields = {"Host": host, **self._headers(conn, headers)}
            speaker.request(method, target, body=body, headers=fields)
            return conn, origin, speaker.getresponse()
        except BaseException as exc:
            _fail(conn, exc)

    def _headers(self, conn: _Conn, headers: dict[str, str]) -> dict[str, str]:
        if conn.proxy_headers is not None:
            return {**self.headers, **conn.proxy_headers, **headers}
        return {**self.headers, **headers}

    def _acquire(self, url: str) -> tuple[_Conn, _Origin, str, str]:
        """A connection to the URL's origin, the request target to send on it and the value of
        the Host field (what `http.client` would send)."""
        parts = urlsplit(url)
        scheme = parts.scheme
        if scheme not in ("http", "https") or not parts.hostname:
            raise ConnectFailed(f"{url.split('?')[0]!r} is not an http:// or https:// URL")
        host = parts.hostname
        default = 443 if scheme == "https" else 80
        port = parts.port or default
        origin = (scheme, host, port)
        target = parts.path or "/"
        if parts.query:
            target += "?" + parts.query
        named = f"[{host}]" if ":" in host else host
        field = named if port == default else f"{named}:{port}"
        with self._lock:
            idle = self._idle.get(origin)
            while idle:
                conn = idle.pop()
                if not _closed_by_peer(conn.sock):
                    return conn, origin, _target_on(conn, scheme, parts.netloc, target), field
                conn.close()
        conn = self._connect(scheme, host, port)
        return conn, origin, _target_on(conn, scheme, parts.netloc, target), field

    def _connect(self, scheme: str, host: str, port: int) -> _Conn:
        """A socket to the origin (TLS for https), or to the proxy the environment names: a
        plain-HTTP request goes to it whole, an https one through a tunnel."""
        proxy = _proxy_for(scheme, host)
        try:
            if scheme == "https" and proxy:
                sock = self._tunnel(proxy, host, port)
            else:
                sock = self._open(proxy.host if proxy else host, proxy.port if proxy else port)
                if scheme == "https":
                    try:
                        sock = self.context.wrap_socket(sock, server_hostname=host)
                    except BaseException:
                        sock.close()
                        raise
        except TimeoutError as exc:
            raise ConnectTimedOut(f"{host}:{port}: {exc or 'timed out'}") from exc
        except OSError as exc:
            # A certificate is only checked once `ssl` is imported (perhaps, right now, by
            # another thread: then the module is there before its classes).
            untrusted = getattr(sys.modules.get("ssl"), "SSLCertVerificationError", None)
            if untrusted is not None and isinstance(exc, untrusted):
                raise Untrusted(f"{host}:{port}: {exc.verify_message}") from exc
            raise ConnectFailed(f"{host}:{port}: {exc}") from exc
        sock.settimeout(self.timeout)
        return _Conn(sock, proxy.headers if proxy and scheme == "http" else None)

    def _open(self, host: str, port: int) -> socket.socket:
        sock = _create_connection((host, port), self.connect_timeout)
        with suppress(OSError):  # as `http.client` does: a head is not held back for an ACK
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock

    def _tunnel(self, proxy: _Proxy, host: str, port: int) -> socket.socket:
        """A TLS socket to `host` through a CONNECT tunnel of `proxy` (`http.client` opens it:
        this path is rare enough to pay for its import)."""
        import http.client

        conn = http.client.HTTPSConnection(
            proxy.host, proxy.port, timeout=self.connect_timeout, context=self.context
        )
        conn._create_connection = _create_connection  # type: ignore[attr-defined]
        conn.set_tunnel(host, port, headers=proxy.headers)
        try:
            conn.connect()
        except http.client.HTTPException as exc:
            conn.close()
            raise ConnectFailed(f"{host}:{port}: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        assert conn.sock is not None
        return conn.sock

    def _release(self, origin: _Origin, conn: _Conn, will_close: bool) -> None:
        if will_close or conn.sock is None:
            conn.close()
            return
        with self._lock:
            idle = self._idle.setdefault(origin, [])
            if not self._closed and len(idle) < self.max_idle:
                idle.append(conn)
                return
        conn.close()


def _create_connection(address: tuple[str, int], *args: Any, **kwargs: Any) -> socket.socket:
    """`socket.create_connection`, given an ASCII host as bytes: `getaddrinfo` encodes a str
    host with the idna codec, whose import (with stringprep's) costs every command ~4 ms for
    what ASCII already is."""
    host, port = address
    return socket.create_connection(
        (host.encode() if host.isascii() else host, port),  # type: ignore[arg-type]
        *args,
        **kwargs,
    )


_BODY_METHODS = frozenset(("PATCH", "POST", "PUT"))
_MAX_HEAD = 64 * 1024


def _request_head(
    method: str, target: str, host: str, headers: dict[str, str], body: bytes | None
) -> bytes:
    """The request's head with its body, one buffer for one write: a head and a body written
    apart wake the server twice per request (its CPU bounds a deploy of small files on one
    machine). Fields as `http.client` sends them: Host, Accept-Encoding identity, and a
    Content-Length when there is a body or the method expects one."""
    if not (target.isascii() and target.isprintable()) or " " in target:
        raise ValueError(f"the request target {target!r} holds a space or a control character")
    lines = [f"{method} {target} HTTP/1.1", f"Host: {host}", "Accept-Encoding: identity"]
    sized = False
    for name, value in headers.items():
        if "\n" in value or "\r" in value or "\n" in name or "\r" in name or ":" in name:
            raise ValueError(f"the header field {name!r} holds a line break or a colon")
        sized = sized or name.lower() == "content-length"
        lines.append(f"{name}: {value}")
    if not sized and (body is not None or method in _BODY_METHODS):
        lines.append(f"Content-Length: {len(body) if body is not None else 0}")
    lines.append("\r\n")
    head = "\r\n".join(lines).encode("latin-1")
    return head + body if body else head


class _Answer:
    """Reads one HTTP/1.x answer off a socket: the head, then the body as its framing says
    (Content-Length, chunks, or the end of the connection)."""

    __slots__ = ("buffer", "sock")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()

    def read(self, method: str) -> tuple[int, str, Headers, bytes, bool]:
        """(status, reason, headers, body, whether the connection must close after it)."""
        while True:
            version, status, reason, headers = self._head()
            if not 100 <= status < 200 or status == 101:
                break  # an interim answer (100 Continue) is followed by the real one
        tokens = {t.strip().lower() for t in headers.get("connection", "").split(",")}
        will_close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)
        length = headers.get("content-length")
        if method == "HEAD" or status in (101, 204, 304):
            body = b""
        elif "chunked" in headers.get("transfer-encoding", "").lower():
            body = self._chunked()
        elif length is not None:
            if not length.isdigit():
                raise Dropped(f"the answer's Content-Length {length[:40]!r} is not a number")
            body = self._take(int(length))
        else:
            body = self._to_the_end()
            will_close = True
        if self.buffer:
            will_close = True  # bytes past the answer: nothing more on this connection is trusted
        return status, reason, headers, body, will_close

    def _more(self) -> None:
        chunk = self.sock.recv(262144)
        if not chunk:
            raise Dropped("the server closed the connection before its answer ended")
        self.buffer += chunk

    def _line(self, limit: int = _MAX_HEAD) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > limit:
                raise Dropped("the answer holds a line longer than 64 KiB")
            self._more()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    def _head(self) -> tuple[str, int, str, Headers]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise Dropped("the answer's head is longer than 64 KiB")
            self._more()
        lines = self.buffer[:end].decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
            raise Dropped(f"the server did not answer in HTTP/1.x: {lines[0][:60]!r}")
        headers = Headers()
        name = ""
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and name:  # an obsolete folded continuation
                dict.__setitem__(headers, name, f"{dict.__getitem__(headers, name)} {line.strip()}")
                continue
            field, colon, value = line.partition(":")
            if not colon:
                raise Dropped(f"the answer holds a header line with no colon: {line[:60]!r}")
            name, value = field.strip().lower(), value.strip()
            if dict.__contains__(headers, name):
                value = f"{dict.__getitem__(headers, name)}, {value}"
            dict.__setitem__(headers, name, value)
        return version, int(code), reason.strip(), headers

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._more()
        taken = bytes(self.buffer[:size])
        del self.buffer[:size]
        return taken

    def _chunked(self) -> bytes:
        parts = []
        while True:
            line = self._line().split(b";", 1)[0].strip()
            try:
                size = int(line, 16)
            except ValueError:
                raise Dropped(f"the answer holds a bad chunk size {line[:20]!r}") from None
            if size == 0:
                while self._line():  # the trailer fields, up to an empty line
                    pass
                return b"".join(parts)
            parts.append(self._take(size))
            if self._take(2) != b"\r\n":
                raise Dropped("the answer's chunk does not end where its size says")

    def _to_the_end(self) -> bytes:
        while True:
            chunk = self.sock.recv(262144)
            if not chunk:
                body = bytes(self.buffer)
                self.buffer.clear()
                return body
            self.buffer += chunk


def _target_on(conn: _Conn, scheme: str, netloc: str, target: str) -> str:
    """Through a plain-HTTP proxy the request line carries the whole URL."""
    return f"{scheme}://{netloc}{target}" if conn.proxy_headers is not None else target
