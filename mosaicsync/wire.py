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
0.4 ms of CPU per file. It still connects (TLS, proxy tunnels), streams bodies from iterators
and streams downloads.

Retries, error mapping and the routes live one level up, in `api.MosaicClient`; a `Transport`
is only "send this, return what came back".
"""

from __future__ import annotations

import http.client
import json as _json
import os
import select
import socket
import ssl
import sys
import threading
from base64 import b64encode
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import Any, NoReturn, Protocol
from urllib.parse import unquote, urlsplit

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
            except (OSError, http.client.HTTPException) as exc:
                raise _mapped(exc) from exc
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
    if isinstance(exc, TransportError):
        return exc
    if isinstance(exc, TimeoutError):
        return TimedOut(str(exc) or "timed out")
    return Dropped(f"{type(exc).__name__}: {exc}")


def _fail(conn: http.client.HTTPConnection, exc: BaseException) -> NoReturn:
    """An exchange failed midway: its connection is closed (a request half sent or an answer
    half read cannot carry another), a network failure is raised as a `TransportError`, and
    anything else (the body's own error: a file that changed while it was read) as it is."""
    conn.close()
    if isinstance(exc, OSError | http.client.HTTPException):
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


class DeferredCAContext(ssl.SSLContext):
    """The verifying TLS context of `ssl.create_default_context` (hostname checked, certificate
    required; CA certificates from SSL_CERT_FILE, else SSL_CERT_DIR, else certifi), except that
    the CA certificates load at the first TLS handshake instead of when the client is built.

    Loading them costs tens of milliseconds, paid by every command before; a client that only
    speaks plain HTTP (the local platform) never needs them. Every TLS connection goes through
    `wrap_socket` or `wrap_bio`, so none is made before they are loaded.
    """

    _loaded = False

    def __new__(cls) -> DeferredCAContext:
        return super().__new__(cls, ssl.PROTOCOL_TLS_CLIENT)

    def __init__(self) -> None:
        self._load_lock = threading.Lock()
        self.verify_mode = ssl.CERT_REQUIRED
        self.check_hostname = True
        if sys.version_info >= (3, 13):  # what ssl.create_default_context adds there
            self.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN | ssl.VERIFY_X509_STRICT
        keylog = os.environ.get("SSLKEYLOGFILE")
        if keylog and not sys.flags.ignore_environment:
            self.keylog_filename = keylog

    @property
    def ca_loaded(self) -> bool:
        return self._loaded

    def load_ca(self) -> None:
        if self._loaded:
            return
        with self._load_lock:
            if self._loaded:
                return
            if os.environ.get("SSL_CERT_FILE"):
                self.load_verify_locations(cafile=os.environ["SSL_CERT_FILE"])
            elif os.environ.get("SSL_CERT_DIR"):
                self.load_verify_locations(capath=os.environ["SSL_CERT_DIR"])
            else:
                import certifi

                self.load_verify_locations(cafile=certifi.where())
            self._loaded = True

    def wrap_socket(self, *args: Any, **kwargs: Any) -> ssl.SSLSocket:
        self.load_ca()
        return super().wrap_socket(*args, **kwargs)

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        self.load_ca()
        return super().wrap_bio(*args, **kwargs)


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
        context: ssl.SSLContext | None = None,  # default: a DeferredCAContext
        headers: Mapping[str, str] | None = None,
        max_idle: int = 32,
    ) -> None:
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.context = context or DeferredCAContext()
        self.headers = dict(headers or {})
        self.max_idle = max_idle
        self._idle: dict[_Origin, list[http.client.HTTPConnection]] = {}
        self._lock = threading.Lock()
        self._closed = False

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
    ) -> tuple[http.client.HTTPConnection, _Origin, http.client.HTTPResponse]:
        """Send the request and read the answer's head; the body is the caller's to read."""
        conn, origin, target, _ = self._acquire(url)
        try:
            conn.request(method, target, body=body, headers=self._headers(conn, headers))
            return conn, origin, conn.getresponse()
        except BaseException as exc:
            _fail(conn, exc)

    def _headers(self, conn: http.client.HTTPConnection, headers: dict[str, str]) -> dict[str, str]:
        if isinstance(conn, _ProxiedConnection):
            return {**self.headers, **conn.proxy_headers, **headers}
        return {**self.headers, **headers}

    def _acquire(self, url: str) -> tuple[http.client.HTTPConnection, _Origin, str, str]:
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

    def _connect(self, scheme: str, host: str, port: int) -> http.client.HTTPConnection:
        proxy = _proxy_for(scheme, host)
        conn: http.client.HTTPConnection
        if scheme == "https":
            context = self.context
            if proxy:
                conn = _HTTPSConnection(proxy.host, proxy.port, context=context)
                conn.set_tunnel(host, port, headers=proxy.headers)
            else:
                conn = _HTTPSConnection(host, port, context=context)
        elif proxy:
            conn = _ProxiedConnection(proxy.host, proxy.port)
            conn.proxy_headers = proxy.headers
        else:
            conn = _HTTPConnection(host, port)
        conn.timeout = self.connect_timeout
        try:
            conn.connect()
        except TimeoutError as exc:
            conn.close()
            raise ConnectTimedOut(f"{host}:{port}: {exc or 'timed out'}") from exc
        except ssl.SSLCertVerificationError as exc:
            conn.close()
            raise Untrusted(f"{host}:{port}: {exc.verify_message}") from exc
        except (OSError, http.client.HTTPException) as exc:
            conn.close()
            raise ConnectFailed(f"{host}:{port}: {exc}") from exc
        assert conn.sock is not None
        conn.sock.settimeout(self.timeout)
        conn.timeout = self.timeout
        return conn

    def _release(self, origin: _Origin, conn: http.client.HTTPConnection, will_close: bool) -> None:
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


class _Connects:
    """Connects without importing the idna codec (see `_create_connection`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._create_connection = _create_connection


class _HTTPConnection(_Connects, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_Connects, http.client.HTTPSConnection):
    pass


class _ProxiedConnection(_HTTPConnection):
    """Plain HTTP through a proxy: the request line carries the whole URL."""

    proxy_headers: dict[str, str]


def _target_on(conn: http.client.HTTPConnection, scheme: str, netloc: str, target: str) -> str:
    return f"{scheme}://{netloc}{target}" if isinstance(conn, _ProxiedConnection) else target
