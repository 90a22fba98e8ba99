"""Unit tests of the platform client's mechanisms: routes, retries, error mapping, redaction."""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import random
import ssl
import threading
from collections.abc import Iterator

import httpx
import pytest
from starlette.routing import Match

from mosaicsync import wire
from mosaicsync.api import ROUTES, MosaicClient, RetryPolicy, SqlError
from mosaicsync.contract import API_PREFIX, API_ROUTES
from mosaicsync.errors import (
    AuthError,
    NotFoundError,
    PlatformError,
    ScanError,
    UnavailableError,
)
from mosaicsync.local.app import API_ENDPOINTS
from mosaicsync.local.app import routes as local_routes
from tests.answering import Answering

KEY = "mk_unit_test_secret_key"
MIB = 1024 * 1024


def client_for(handler, **kw) -> tuple[MosaicClient, list[float], list]:
    sleeps: list[float] = []
    events: list = []
    client = MosaicClient(
        "http://platform.test/v1/project/",
        KEY,
        transport=Answering(handler),
        sleep=sleeps.append,
        rng=random.Random(1),
        on_request=events.append,
        **kw,
    )
    return client, sleeps, events


def test_every_route_is_under_the_base_and_unique() -> None:
    pairs = [(r.method, r.path) for r in ROUTES.values()]
    assert len(set(pairs)) == len(pairs)
    assert all(path.startswith("/") for _, path in pairs)


def test_client_routes_are_the_contracts() -> None:
    assert ROUTES.keys() == API_ROUTES.keys()
    for name, route in ROUTES.items():
        assert (route.method, route.path) == (API_ROUTES[name].method, API_ROUTES[name].path), name


def _served_by(method: str, path: str) -> object:
    """The endpoint the local platform runs for a request, found the way starlette finds it."""
    scope = {"type": "http", "method": method, "path": path, "root_path": "", "headers": []}
    for route in local_routes(reload=None):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return getattr(route, "endpoint", route)
    return None


@pytest.mark.parametrize("name", sorted(API_ROUTES))
def test_local_platform_serves_every_contract_route(name: str) -> None:
    route = API_ROUTES[name]
    params = {"project_id": "pod-16f", "filename": "img/a b.png"}
    path = API_PREFIX + route.path.format(**params)
    endpoint = _served_by(route.method, path)
    assert endpoint is API_ENDPOINTS[name], (route.method, path, endpoint)
    assert endpoint.__name__ == name  # type: ignore[attr-defined]


def test_sends_key_and_formats_paths() -> None:
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"success": True})

    client, _, _ = client_for(handler)
    client.delete_file("pod-16f", "img/a b.png")
    assert seen[0].method == "DELETE"
    assert seen[0].url.raw_path == b"/v1/project/pod-16f/files/img/a%20b.png"
    assert seen[0].headers["x-api-key"] == KEY


def test_retries_5xx_for_idempotent_routes_with_backoff() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) < 3:
            return httpx.Response(503, json={"error": "busy"})
        return httpx.Response(200, json={"files": []})

    client, sleeps, events = client_for(handler)
    assert client.list_files("pod-16f") == []
    assert len(calls) == 3 and len(sleeps) == 2
    assert [e.attempt for e in events] == [1, 2, 3]


def test_honours_retry_after_on_429_even_for_unsafe_routes() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        if len(calls) == 1:
            return httpx.Response(429, headers={"Retry-After": "7"}, json={"error": "slow"})
        return httpx.Response(200, json={"project_id": "pod-16f"})

    client, sleeps, _ = client_for(handler)
    assert client.create_project("x")["project_id"] == "pod-16f"
    assert sleeps == [7.0]


def test_does_not_retry_unsafe_post_on_5xx() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(500, json={"error": "boom"})

    client, _, _ = client_for(handler)
    with pytest.raises(UnavailableError) as info:
        client.sql("pod-16f", "insert into t values (1)")
    assert len(calls) == 1
    assert "ticket --diagnostics" in (info.value.hint or "")


def test_connect_errors_are_retried_then_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise wire.ConnectFailed("refused")

    client, sleeps, _ = client_for(handler, retry=RetryPolicy(attempts=3))
    with pytest.raises(UnavailableError) as info:
        client.list_projects()
    assert len(sleeps) == 2
    assert "cannot connect" in info.value.message


def test_429_after_retries_says_how_often_it_waited() -> None:
    client, _, _ = client_for(
        lambda r: httpx.Response(429, headers={"Retry-After": "1"}, json={"error": "slow down"}),
        retry=RetryPolicy(attempts=3),
    )
    with pytest.raises(UnavailableError, match="retried 2 times"):
        client.list_projects()


@pytest.mark.parametrize(
    ("status", "error_type", "advice"),
    [
        (401, AuthError, "rotate every 30 days"),
        (403, AuthError, "plan"),
        (402, AuthError, "plan"),
        (404, NotFoundError, "projects list"),
        (400, PlatformError, None),
        (413, PlatformError, None),
    ],
)
def test_status_codes_become_errors_with_advice(status, error_type, advice) -> None:
    client, sleeps, events = client_for(lambda r: httpx.Response(status, json={"error": "nope"}))
    with pytest.raises(error_type) as info:
        client.get_project("pod-16f")
    assert "nope" in info.value.message
    # A 4xx other than 429 is an answer, not an outage: never retried, even when safe to.
    assert len(events) == 1 and sleeps == []
    if advice:
        assert advice in (info.value.hint or "")


def test_sql_errors_carry_code_and_position() -> None:
    body = {"success": False, "error": "syntax error", "code": "42601", "position": 8}
    client, _, _ = client_for(lambda r: httpx.Response(400, json=body))
    with pytest.raises(SqlError) as info:
        client.sql("pod-16f", "select fromm")
    assert info.value.code == "42601" and info.value.position == 8


def test_key_and_signature_never_appear_in_errors_or_events(tmp_path) -> None:
    payload = tmp_path / "f.bin"
    payload.write_bytes(b"x" * 10)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"error": "signature does not match"})

    client, _, events = client_for(handler)
    with pytest.raises(AuthError) as info:
        client.put_presigned("http://platform.test/_storage/p/f.bin?sig=SECRETSIG", payload, 10)
    text = str(info.value) + repr(events)
    assert "SECRETSIG" not in text and KEY not in text


@pytest.mark.parametrize("size", [0, 10, MIB, MIB + 1])
def test_a_presigned_put_of_one_chunk_leaves_in_one_write_and_a_larger_one_streams(
    tmp_path, size
) -> None:
    payload = tmp_path / "f.bin"
    payload.write_bytes(os.urandom(size))
    seen = []

    class Recording(Answering):
        def send(self, method, url, headers, body) -> wire.Response:
            seen.append((headers.get("Content-Length"), type(body)))
            whole = body if isinstance(body, bytes) else b"".join(body)
            assert whole == payload.read_bytes()
            return super().send(method, url, headers, b"")

    transport = Recording(lambda request: httpx.Response(200, json={}))
    client = MosaicClient("http://platform.test/v1/project", KEY, transport=transport)
    client.put_presigned("http://platform.test/_storage/p/f.bin?sig=x", payload, size)
    assert [length for length, _ in seen] == [str(size)]
    assert (seen[0][1] is bytes) == (size <= MIB)  # else a stream of chunks


def test_presigned_put_streams_with_content_length(tmp_path) -> None:
    payload = tmp_path / "f.bin"
    payload.write_bytes(b"y" * (3 * 1024 * 1024 + 5))
    got = {}

    def handler(request: httpx.Request) -> httpx.Response:
        got["length"] = request.headers.get("content-length")
        got["chunked"] = request.headers.get("transfer-encoding")
        got["body"] = request.read()
        return httpx.Response(200, json={})

    client, _, _ = client_for(handler)
    client.put_presigned(
        "http://platform.test/_storage/p/f.bin?sig=x", payload, payload.stat().st_size
    )
    assert got["length"] == str(payload.stat().st_size) and got["chunked"] is None
    assert got["body"] == payload.read_bytes()


def test_backoff_is_bounded_and_jittered() -> None:
    policy = RetryPolicy(base=0.5, cap=4)
    rng = random.Random(0)
    delays = [policy.delay(a, None, rng) for a in range(1, 12)]
    assert all(0 <= d <= 4 for d in delays)
    assert len(set(delays)) > 5
    assert policy.delay(1, "3", rng) == 3.0
    assert policy.delay(1, "100000", rng) == policy.max_retry_after


def test_auto_concurrency_hides_the_round_trip() -> None:
    from mosaicsync.api import auto_concurrency

    assert auto_concurrency(None) == 8
    assert auto_concurrency(0.8) == 8  # loopback: the client's CPU is the limit
    assert auto_concurrency(20) == 25  # a 20 ms link
    assert auto_concurrency(51) == 64  # a 50 ms link
    assert auto_concurrency(1000) == 64


class _ReadingServer(Answering):
    """Reads a request body chunk by chunk, as a server would, calling `after_chunk` after each:
    a file can be changed at a known point of its upload, without a race."""

    def __init__(self, after_chunk) -> None:
        super().__init__(lambda request: httpx.Response(200, json={}))
        self.after_chunk = after_chunk
        self.received = 0
        self.requests = 0

    def send(self, method, url, headers, body) -> wire.Response:
        self.requests += 1
        for n, chunk in enumerate(body, 1):
            self.received += len(chunk)
            self.after_chunk(n)
        return super().send(method, url, headers, b"")


@pytest.mark.parametrize(
    ("size", "change", "detail"),
    [
        # 3 MiB, cut to 1.5 MiB after the first MiB went out: the body would end short.
        (3 * MIB, lambda f: f.truncate(MIB + MIB // 2), "1572864 bytes instead of 3145728"),
        # 2 MiB, grown after the first MiB: the second MiB would complete the declared length
        # with the file not at its end, so it is held back and the platform never gets a
        # whole body.
        (2 * MIB, lambda f: f.write(b"more"), "it grew past the 2097152 bytes"),
        # Grown past the declared length inside one chunk.
        (MIB // 2, lambda f: f.write(b"more"), "it grew past the 524288 bytes"),
    ],
    ids=["shrinks", "grows-at-the-last-chunk", "grows-within-a-chunk"],
)
def test_presigned_put_stops_when_the_file_changes_while_it_is_read(
    tmp_path, size, change, detail
) -> None:
    # It was h11's LocalProtocolError ("Too much/little data for declared Content-Length")
    # from deep inside httpx: a traceback, exit 1.
    payload = tmp_path / "clip.mp4"
    payload.write_bytes(b"z" * size)

    def after_chunk(n: int) -> None:
        if n == 1:
            with open(payload, "r+b") as f:
                f.seek(0, 2)
                change(f)

    server = _ReadingServer(after_chunk if size > MIB else lambda n: None)
    if size <= MIB:
        with open(payload, "ab") as f:  # changed before the first read: after the presign
            f.write(b"more")
    client = MosaicClient("http://platform.test/v1/project", KEY, transport=server)
    with pytest.raises(ScanError) as info:
        client.put_presigned(
            "http://platform.test/_storage/p/clip.mp4?sig=x", payload, size, command="deploy"
        )
    assert info.value.exit_code == 2
    assert info.value.message.startswith("clip.mp4 changed while it was uploaded (")
    assert detail in info.value.message and info.value.message.endswith("; run deploy again")
    assert server.received < size  # the declared length never arrived: nothing complete
    # Not retried: the next run scans it again. A file of one chunk is read whole before its
    # request: nothing at all was sent.
    assert server.requests == (1 if size > MIB else 0)


# -- TLS: certificates load for the first TLS connection, never for plain HTTP ------------------


class _Running(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = json.dumps({"project_id": "p1", "status": "running"}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@contextlib.contextmanager
def _serve(tls: ssl.SSLContext | None = None) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Running)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        scheme = "https" if tls else "http"
        yield f"{scheme}://127.0.0.1:{server.server_address[1]}/v1/project"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _ca_loads(monkeypatch) -> list[object]:
    """Every CA store load from now on, by any SSL context (httpx's eager default included)."""
    loads: list[object] = []
    for name in ("load_verify_locations", "load_default_certs"):
        original = getattr(ssl.SSLContext, name)

        def spy(self, *args, _original=original, **kwargs):
            loads.append(args or kwargs)
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(ssl.SSLContext, name, spy)
    return loads


def test_a_plain_http_client_never_loads_ca_certificates(monkeypatch) -> None:
    loads = _ca_loads(monkeypatch)
    with _serve() as api_url, MosaicClient(api_url, KEY) as client:
        assert client.get_project("p1")["status"] == "running"
    assert loads == []


def test_an_https_client_still_verifies_the_certificate(monkeypatch, self_signed) -> None:
    cert, key = self_signed
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert, key)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    no_retry = RetryPolicy(attempts=1)
    with _serve(tls) as api_url:
        # Unknown issuer: refused, as a default verifying context refuses it.
        with (
            MosaicClient(api_url, KEY, retry=no_retry) as client,
            pytest.raises(UnavailableError) as refused,
        ):
            client.get_project("p1")
        causes = []
        exc: BaseException | None = refused.value
        while exc is not None:
            causes.append(exc)
            exc = exc.__cause__ or exc.__context__
        assert any(isinstance(c, ssl.SSLCertVerificationError) for c in causes), causes
        # Said as what it is, with what to do (a TLS-inspecting proxy's CA), not "cannot connect".
        assert "its TLS certificate is not trusted" in refused.value.message
        assert "SSL_CERT_FILE" in (refused.value.hint or "")
        # Trusted (SSL_CERT_FILE): the same server answers.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        with MosaicClient(api_url, KEY, retry=no_retry) as client:
            assert client.get_project("p1")["status"] == "running"
            context = client.http.context
            assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname


def test_ranges_of_a_server_that_ignores_range_come_from_one_download() -> None:
    body = bytes(range(256)) * 4
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("Range"))
        assert "X-API-Key" not in request.headers  # storage URLs are public: no key sent
        return httpx.Response(200, content=body)  # Range ignored: the whole object

    client, _, _ = client_for(handler)
    url = "http://storage.test/_storage/p/pack"
    assert client.read_ranges(url, [(0, 10), (500, 600), (1000, 1024)]) == [
        body[0:10], body[500:600], body[1000:1024],
    ]  # fmt: skip
    assert seen == ["bytes=0-9"]  # asked once, answered whole, sliced for every span


def test_ranges_are_asked_one_by_one_and_a_short_answer_is_an_error() -> None:
    body = bytes(range(200))

    def handler(request: httpx.Request) -> httpx.Response:
        first, last = request.headers["Range"].removeprefix("bytes=").split("-")
        chunk = body[int(first) : int(last) + 1]
        if int(first) >= 150:
            chunk = chunk[:-1]  # a stored object shorter than recorded
        return httpx.Response(206, content=chunk)

    client, _, _ = client_for(handler)
    url = "http://storage.test/_storage/p/pack"
    assert client.read_ranges(url, [(0, 5), (5, 5), (100, 120)]) == [body[0:5], b"", body[100:120]]
    with pytest.raises(UnavailableError, match="asked for 10 bytes, received 9"):
        client.read_ranges(url, [(150, 160)])
