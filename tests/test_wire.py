"""The connections under the client, against real sockets: reuse, what a failure says about
whether the request was sent, streams, proxies from the environment."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import ssl
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mosaicsync import wire


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def log_message(self, *args: object) -> None:
        pass

    def _answer(self, status: int, body: bytes, **headers: str) -> None:
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            self.send_header(name.replace("_", "-"), value)
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        server.seen.append((self.client_address[1], self.command, self.path, dict(self.headers)))
        if self.path == "/close-after":
            self._answer(200, b"bye")
            self.close_connection = True  # closed without saying so: a stale keep-alive
        elif self.path == "/say-close":
            self._answer(200, b"bye", Connection="close")
            self.close_connection = True
        elif self.path == "/slow":
            server.release.wait(10)
            self._answer(200, b"late")
        elif self.path.startswith("/big"):
            self._answer(200, bytes(range(256)) * 4096)
        else:
            self._answer(200, json.dumps({"path": self.path}).encode())

    def do_PUT(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        length = int(self.headers["Content-Length"])
        body = self.rfile.read(length)
        server.seen.append((self.client_address[1], self.command, self.path, dict(self.headers)))
        self._answer(201, json.dumps({"received": len(body)}).encode())

    def do_CONNECT(self) -> None:
        server: _Server = self.server  # type: ignore[assignment]
        server.seen.append((self.client_address[1], self.command, self.path, dict(self.headers)))
        self._answer(502, b"no tunnels here")
        self.close_connection = True


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: list[tuple[int, str, str, dict[str, str]]] = []
        self.release = threading.Event()
        self.closed = threading.Semaphore(0)

    def handle_error(self, request: object, client_address: object) -> None:
        pass  # a client that hangs up mid-body is what some tests do

    def shutdown_request(self, request: socket.socket) -> None:
        super().shutdown_request(request)
        self.closed.release()  # the connection is closed on the server's side: FIN sent

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


def _serving(s: _Server) -> Iterator[_Server]:
    thread = threading.Thread(target=s.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield s
    finally:
        s.release.set()
        s.shutdown()
        s.server_close()
        thread.join(10)


@pytest.fixture
def server() -> Iterator[_Server]:
    yield from _serving(_Server())


@pytest.fixture
def tls_server(self_signed: tuple[Path, Path]) -> Iterator[_Server]:
    cert, key = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    s = _Server()
    s.socket = tls.wrap_socket(s.socket, server_side=True)
    yield from _serving(s)


@pytest.fixture
def pool() -> Iterator[wire.Pool]:
    p = wire.Pool(timeout=5, connect_timeout=5)
    try:
        yield p
    finally:
        p.close()


def test_one_connection_carries_request_after_request(server: _Server, pool: wire.Pool) -> None:
    for i in range(3):
        response = pool.send("GET", f"{server.url}/a?i={i}", {}, None)
        assert response.status == 200 and response.json() == {"path": f"/a?i={i}"}
    assert len({port for port, *_ in server.seen}) == 1
    # As `http.client` set it: a streamed head and body are not held back for an ACK.
    (kept,) = [conn for conns in pool._idle.values() for conn in conns]
    assert kept.sock is not None and kept.sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_connection_the_server_closed_while_idle_is_not_reused(
    server: _Server, pool: wire.Pool
) -> None:
    assert pool.send("GET", f"{server.url}/close-after", {}, None).content == b"bye"
    assert server.closed.acquire(timeout=10)
    # Resent on the stale connection this would fail as "dropped", which no POST may retry.
    assert pool.send("GET", f"{server.url}/b", {}, None).status == 200
    assert len({port for port, *_ in server.seen}) == 2


def test_connection_close_is_honoured(server: _Server, pool: wire.Pool) -> None:
    pool.send("GET", f"{server.url}/say-close", {}, None)
    pool.send("GET", f"{server.url}/b", {}, None)
    assert len({port for port, *_ in server.seen}) == 2


def test_a_refused_connection_was_never_sent(pool: wire.Pool) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with pytest.raises(wire.ConnectFailed) as info:
            pool.send("POST", f"http://127.0.0.1:{port}/x", {}, b"{}")
    assert info.value.sent is False and info.value.describe == "cannot connect"


def test_an_answer_that_does_not_come_times_out_as_sent(server: _Server) -> None:
    pool = wire.Pool(timeout=0.2)
    try:
        with pytest.raises(wire.TimedOut) as info:
            pool.send("GET", f"{server.url}/slow", {}, None)
        assert info.value.sent is True and info.value.describe == "timed out"
    finally:
        server.release.set()
        pool.close()


def test_a_body_from_an_iterator_is_sent_with_its_length(server: _Server, pool: wire.Pool) -> None:
    chunks = [b"a" * 1000, b"b" * 24]
    response = pool.send("PUT", f"{server.url}/obj", {"Content-Length": "1024"}, iter(chunks))
    assert response.status == 201 and response.json() == {"received": 1024}
    assert "Transfer-Encoding" not in server.seen[-1][3]


def test_the_body_s_own_error_comes_through_and_the_connection_is_not_reused(
    server: _Server, pool: wire.Pool
) -> None:
    pool.send("GET", f"{server.url}/warm", {}, None)

    class Changed(Exception):
        pass

    def body() -> Iterator[bytes]:
        yield b"x" * 10
        raise Changed("the file changed")

    with pytest.raises(Changed):
        pool.send("PUT", f"{server.url}/obj", {"Content-Length": "100"}, body())
    pool.send("GET", f"{server.url}/after", {}, None)
    ports = [port for port, _, path, _ in server.seen if path in ("/warm", "/after")]
    assert ports[0] != ports[1]  # the half-sent request's connection was dropped


def test_a_stream_read_to_its_end_gives_its_connection_back(
    server: _Server, pool: wire.Pool
) -> None:
    with pool.stream("GET", f"{server.url}/big", {}) as stream:
        assert stream.status == 200
        data = b"".join(stream.iter_bytes(65536))
    assert data == bytes(range(256)) * 4096
    with pool.stream("GET", f"{server.url}/big-again", {}) as stream:
        next(stream.iter_bytes(10))  # left unread: this connection cannot be reused
    pool.send("GET", f"{server.url}/c", {}, None)
    ports = [port for port, *_ in server.seen]
    assert ports[0] == ports[1] != ports[2]


def test_over_tls_requests_bodies_from_iterators_and_streams_share_one_verified_connection(
    tls_server: _Server, self_signed: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The socket and its TLS are opened here; `http.client` only speaks on it when a body or
    an answer is streamed, and the connection goes on carrying whole-body requests after."""
    monkeypatch.setenv("SSL_CERT_FILE", str(self_signed[0]))
    url = f"https://127.0.0.1:{tls_server.server_address[1]}"
    pool = wire.Pool(timeout=5, connect_timeout=5)
    try:
        assert pool.send("GET", f"{url}/a", {}, None).json() == {"path": "/a"}
        chunks = iter([b"a" * 1000, b"b" * 24])
        put = pool.send("PUT", f"{url}/obj", {"Content-Length": "1024"}, chunks)
        assert put.status == 201 and put.json() == {"received": 1024}
        with pool.stream("GET", f"{url}/big", {}) as stream:
            assert b"".join(stream.iter_bytes(65536)) == bytes(range(256)) * 4096
        assert pool.send("GET", f"{url}/c", {}, None).json() == {"path": "/c"}
    finally:
        pool.close()
    assert [s[2] for s in tls_server.seen] == ["/a", "/obj", "/big", "/c"]
    assert len({port for port, *_ in tls_server.seen}) == 1
    assert tls_server.seen[1][3]["Host"] == url.removeprefix("https://")


def test_an_untrusted_certificate_is_refused_before_anything_is_sent(
    tls_server: _Server, pool: wire.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with pytest.raises(wire.Untrusted) as info:
        pool.send("POST", f"https://127.0.0.1:{tls_server.server_address[1]}/x", {}, b"{}")
    assert info.value.sent is False and tls_server.seen == []


def test_a_plain_http_request_imports_neither_http_client_nor_ssl(server: _Server) -> None:
    """What a command pays before its first request: `http.client` with the `email` package
    (~20 ms) and `ssl` (~8 ms) are for streams, tunnels and https only."""
    code = (
        "import sys\n"
        "from mosaicsync import wire\n"
        "pool = wire.Pool(timeout=5, connect_timeout=5)\n"
        f"print(pool.send('PUT', {server.url + '/obj'!r}, {{}}, b'x' * 10).status)\n"
        "pool.close()\n"
        "print(*(m in sys.modules for m in ('http.client', 'email.parser', 'ssl')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["201", "False", "False", "False"]


def test_plain_http_goes_through_the_proxy_the_environment_names(
    server: _Server, pool: wire.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", f"http://user:pa%40ss@127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    pool.send("GET", "http://platform.invalid:8080/v1/x?y=1", {}, None)
    _, method, target, headers = server.seen[-1]
    assert (method, target) == ("GET", "http://platform.invalid:8080/v1/x?y=1")
    assert headers["Host"] == "platform.invalid:8080"
    assert headers["Proxy-Authorization"] == "Basic dXNlcjpwYUBzcw=="  # user:pa@ss


def test_https_through_a_proxy_asks_for_a_tunnel(
    server: _Server, pool: wire.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", server.url)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(wire.ConnectFailed) as info:
        pool.send("POST", "https://platform.invalid/v1/x", {}, b"{}")
    assert info.value.sent is False  # the tunnel was refused: nothing reached the platform
    assert server.seen[-1][1:3] == ("CONNECT", "platform.invalid:443")


def test_no_proxy_names_hosts_reached_directly(
    server: _Server, pool: wire.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # would refuse
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    assert pool.send("GET", f"{server.url}/direct", {}, None).status == 200
    assert server.seen[-1][2] == "/direct"


def test_a_proxy_of_another_kind_is_refused_with_what_to_do(
    pool: wire.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALL_PROXY", "socks5://127.0.0.1:1080")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    with pytest.raises(wire.ConnectFailed, match="only http:// proxies") as info:
        pool.send("GET", "http://platform.invalid/x", {}, None)
    assert "NO_PROXY" in str(info.value)


def test_a_request_with_a_bytes_body_leaves_in_one_write(
    server: _Server, pool: wire.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    writes: list[bytes] = []
    sendall, send = socket.socket.sendall, socket.socket.send

    def to_server(sock: socket.socket, data: bytes) -> None:
        if sock.getpeername()[1] == server.server_address[1]:  # not the server's own writes
            writes.append(bytes(data))

    def recorded_all(self: socket.socket, data: bytes, *args: int) -> None:
        to_server(self, data)
        sendall(self, data, *args)

    def recorded(self: socket.socket, data: bytes, *args: int) -> int:
        to_server(self, data)
        return send(self, data, *args)

    monkeypatch.setattr(socket.socket, "sendall", recorded_all)
    monkeypatch.setattr(socket.socket, "send", recorded)
    response = pool.send("PUT", f"{server.url}/obj", {"X-Test": "1"}, b"x" * 5000)
    assert response.json() == {"received": 5000}
    assert len(writes) == 1  # head and body together: the server wakes up once
    assert writes[0].startswith(b"PUT /obj HTTP/1.1\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + b"x" * 5000)
    method, path, fields = server.seen[-1][1], server.seen[-1][2], server.seen[-1][3]
    assert (method, path, fields["X-Test"], fields["Content-Length"]) == (
        "PUT",
        "/obj",
        "1",
        "5000",
    )
    assert fields["Host"] == server.url.removeprefix("http://")


class _Canned:
    """A socket server that answers each request with the next canned bytes (whatever HTTP they
    are, right or wrong), closing the connection after those marked to close it."""

    def __init__(self, answers: list[tuple[bytes, bool]]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.listener.getsockname()[1]}"

    def _serve(self) -> None:
        while self.answers:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                while self.answers:
                    data = b""
                    while b"\r\n\r\n" not in data:
                        chunk = conn.recv(65536)
                        if not chunk:
                            break
                        data += chunk
                    if not data:
                        break
                    self.requests.append(data)
                    answer, close = self.answers.pop(0)
                    conn.sendall(answer)
                    if close:
                        break

    def close(self) -> None:
        self.listener.close()
        self.thread.join(10)


@pytest.fixture
def canned() -> Iterator[Callable[..., _Canned]]:
    made: list[_Canned] = []

    def make(*answers: bytes, close: tuple[int, ...] = ()) -> _Canned:
        """Answers in order; those whose index is in `close` end their connection."""
        made.append(_Canned([(a, i in close) for i, a in enumerate(answers)]))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_answers_framed_every_way_are_read_whole_and_the_connection_kept_when_it_can_be(
    canned: Callable[..., _Canned], pool: wire.Pool
) -> None:
    server = canned(
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Twice: a\r\nx-twice: b\r\n\r\nhello",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nTrailer: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n",  # a HEAD: no body follows
        b"HTTP/1.0 200 OK\r\n\r\nto the end",
        close=(5,),
    )
    first = pool.send("GET", f"{server.url}/a", {}, None)
    assert (first.status, first.reason, first.content) == (200, "OK", b"hello")
    assert first.headers.get("X-TWICE") == "a, b" and first.headers["content-length"] == "5"
    assert "X-Twice" in first.headers and "x-none" not in first.headers
    assert pool.send("GET", f"{server.url}/b", {}, None).content == b"wikipedia"
    created = pool.send("POST", f"{server.url}/c", {}, b"{}")
    assert (created.status, created.content) == (201, b"ok")
    assert pool.send("DELETE", f"{server.url}/d", {}, None).status == 204
    assert pool.send("HEAD", f"{server.url}/e", {}, None).content == b""
    last = pool.send("GET", f"{server.url}/f", {}, None)
    assert (last.status, last.content) == (200, b"to the end")
    assert server.connections == 1  # one connection carried all six
    assert len(server.requests) == 6
    assert b"Content-Length: 0\r\n" not in server.requests[0]  # a GET has no body to size
    assert server.requests[2].endswith(b"Content-Length: 2\r\n\r\n{}")


def test_an_answer_that_is_not_http_or_stops_short_is_a_dropped_connection(
    canned: Callable[..., _Canned], pool: wire.Pool
) -> None:
    for answer in (
        b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\nConnection: close\r\n\r\nshort",
        b"HTTP/1.1 200 OK\r\nContent-Length: ten\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\nzz\r\n",
    ):
        server = canned(answer, close=(0,))
        with pytest.raises(wire.Dropped) as info:
            pool.send("GET", f"{server.url}/x", {}, None)
        assert info.value.sent  # it may have been processed: only a safe request is resent


def test_a_dropped_answer_is_told_while_another_thread_is_importing_http_client(
    canned: Callable[..., _Canned], pool: wire.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A storage upload streams through `http.client` and imports it on its thread; until that
    # import ends, the module sits in `sys.modules` without its classes.
    monkeypatch.setitem(sys.modules, "http.client", types.ModuleType("http.client"))
    server = canned(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", close=(0,))
    with pytest.raises(wire.Dropped) as info:
        pool.send("GET", f"{server.url}/x", {}, None)
    assert info.value.sent
    assert info.value.__cause__ is None  # raised as the reader found it, not wrapped in itself


def test_bytes_past_an_answer_leave_its_connection_unused(
    canned: Callable[..., _Canned], pool: wire.Pool
) -> None:
    server = canned(
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nokSURPLUS",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nno",
        close=(1,),  # the server would carry on: the client is the one that must not
    )
    assert pool.send("GET", f"{server.url}/a", {}, None).content == b"ok"
    assert pool.send("GET", f"{server.url}/b", {}, None).content == b"no"
    assert server.connections == 2


def test_a_header_value_with_a_line_break_is_refused_before_anything_is_sent(
    server: _Server, pool: wire.Pool
) -> None:
    with pytest.raises(ValueError, match="line break"):
        pool.send("GET", f"{server.url}/x", {"X-Evil": "a\r\nX-Injected: 1"}, None)
    with pytest.raises(ValueError, match="control character"):
        pool.send("GET", f"{server.url}/x y", {}, None)
    assert server.seen == []


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
def test_connecting_by_an_ascii_name_imports_no_idna_codec(server: _Server, host: str) -> None:
    """`getaddrinfo` encodes a str host with the idna codec (and imports it and stringprep,
    ~4 ms of every command); an ASCII host is already what that would give."""
    url = server.url.replace("127.0.0.1", host)
    code = (
        "import sys\n"
        "from mosaicsync import wire\n"
        "pool = wire.Pool(timeout=5, connect_timeout=5)\n"
        f"print(pool.send('GET', {url + '/x'!r}, {{}}, None).status)\n"
        "pool.close()\n"
        "print('encodings.idna' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.split() == ["200", "False"]
