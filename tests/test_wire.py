"""The connections under the client, against real sockets: reuse, what a failure says about
whether the request was sent, streams, proxies from the environment."""

from __future__ import annotations

import http.client
import http.server
import json
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

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


@pytest.fixture
def server() -> Iterator[_Server]:
    s = _Server()
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
    send = http.client.HTTPConnection.send

    def recorded(self: http.client.HTTPConnection, data: bytes) -> None:
        writes.append(bytes(data))
        send(self, data)

    monkeypatch.setattr(http.client.HTTPConnection, "send", recorded)
    response = pool.send("PUT", f"{server.url}/obj", {}, b"x" * 5000)
    assert response.json() == {"received": 5000}
    assert len(writes) == 1  # head and body together: the server wakes up once
    assert writes[0].startswith(b"PUT /obj HTTP/1.1\r\n")
    assert writes[0].endswith(b"\r\n\r\n" + b"x" * 5000)


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
