"""The Mosaic platform client: ONE routes table, retries with backoff, errors mapped to exit codes.

Every path the client uses is in `ROUTES`, built from `contract.API_ROUTES`: adapting to the live
platform is a one-table change.
The transport is injectable (`wire.Transport`): unit tests pass a stand-in that answers from a
function, integration tests use the real local platform through `wire.Pool`.
"""

from __future__ import annotations

import copy
import hashlib
import json as _json
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit

from mosaicsync import __version__
from mosaicsync.contract import API_ROUTES
from mosaicsync.errors import (
    AuthError,
    ConfigError,
    MosaicError,
    NotFoundError,
    PlatformError,
    ScanError,
    UnavailableError,
)

# RetryPolicy lives in retry.py with every other backoff; callers may import it from here too.
from mosaicsync.events import RequestEvent
from mosaicsync.retry import Backoff, RetryPolicy, poll
from mosaicsync.wire import Pool, Response, Transport, TransportError, Untrusted


class Route(NamedTuple):
    method: str
    path: str
    # Safe to send twice: a retry after a lost response cannot do the work twice.
    idempotent: bool


# `Route.idempotent` per route; methods and paths come from the contract (the local platform
# routes by the same table). A name missing from the contract fails at import.
_IDEMPOTENT: dict[str, bool] = {
    "list_projects": True,
    "create_project": False,
    "get_project": True,
    "delete_project": True,
    "database": True,
    # SQL is retried only when the caller says the query is idempotent (guarded by design).
    "sql": False,
    "upload_file": True,
    "list_files": True,
    "delete_file": True,
    "upload_url": True,
    "list_storage": True,
    "delete_object": True,
    "magic_link": False,
    "create_ticket": False,
}
ROUTES: dict[str, Route] = {
    name: Route(API_ROUTES[name].method, API_ROUTES[name].path, idempotent)
    for name, idempotent in _IDEMPOTENT.items()
}

RETRYABLE_STATUS = frozenset({429, 500, 502, 503, 504})
_USER_AGENT = f"mosaicsync/{__version__}"
_CHUNK = 1024 * 1024  # bytes a presigned PUT reads at a time; a file no larger goes whole
_UNTRUSTED_HINT = (
    "behind a proxy that inspects TLS, put its CA certificate in a file and set SSL_CERT_FILE "
    "to it; otherwise check --api-url"
)


class SqlError(PlatformError):
    """When: PostgreSQL rejected a query; carries the SQLSTATE and the 1-based position."""

    reference = "sql"

    def __init__(
        self,
        message: str,
        *,
        code: str | None,
        position: int | None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.code = code
        self.position = position
        self.detail = detail


def _redacted_path(url: str) -> str:
    """The path only: presigned URLs carry their signature in the query string."""
    return urlsplit(url).path


def auto_concurrency(rtt_ms: float | None) -> int:
    """Requests to keep in flight: enough to hide the round trip, few on a fast link.

    On loopback the client's own CPU is the limit and threads only contend (8 beat 32 by a
    third in bench/). Across a link, one in flight per 0.8 ms of round trip keeps ~1,250
    uploads a second going, about what one platform serves: across 50 ms, 64 in flight
    deploys 2,000 small files in 5.0 s against 5.4 s at 32 and 3x slower at 8.
    """
    if rtt_ms is None or rtt_ms < 5:
        return 8
    return max(8, min(64, math.ceil(rtt_ms / 0.8)))


def _refuse_text_that_is_not_utf8(fields: dict[str, Any]) -> None:
    """ConfigError naming the field whose text cannot be sent as UTF-8.

    A name typed in a terminal whose bytes are not UTF-8 reaches Python as lone surrogates
    (U+DC80-U+DCFF); JSON would carry them as "\\udcxx", which is not text.
    """
    for field, value in fields.items():
        if isinstance(value, str) and not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ConfigError(
                    f"{field!r} {value!a} is not UTF-8 text: it holds bytes (or a lone "
                    "surrogate) that are not a character",
                    hint="retype it; if the terminal sent it, check that LANG or LC_ALL is a "
                    "UTF-8 locale",
                ) from None


def changed_while_uploaded(name: str, detail: str, command: str = "the command") -> ScanError:
    """A file that changed between its scan and its upload, whichever way it is sent: it is
    not published, and the next run measures and checks it afresh."""
    return ScanError(
        f"{name} changed while it was uploaded ({detail}); run {command} again",
        hint="wait until whatever writes the file (a build, an editor) has finished",
    )


class MosaicClient:
    """One keep-alive HTTP client for one platform and key."""

    def __init__(
        self,
        api_url: str,
        api_key: str,
        *,
        transport: Transport | None = None,
        retry: RetryPolicy | None = None,
        timeout: float = 60.0,
        on_request: Callable[[RequestEvent], None] | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        max_connections: int = 32,
    ) -> None:
        self.api_url = api_url.rstrip("/")
        if not (api_key.isascii() and api_key.isprintable()) or " " in api_key:
            # It could not go in a header: say so (without echoing it) instead of a traceback.
            raise AuthError(
                "the API key holds a space, a control character or a non-ASCII character "
                "(a typographic quote or dash pasted with it?)",
                hint="copy the key again from the dashboard, then `mosaicsync login` or set "
                "MOSAIC_API_KEY",
            )
        self._key = api_key
        self.retry = retry or RetryPolicy()
        self.on_request = on_request
        self.sleep = sleep
        self.rng = rng or random.Random()
        # The fastest answer seen so far: the round trip to the platform, without its work.
        self.min_rtt_ms: float | None = None
        self.http: Transport = transport or Pool(
            timeout=timeout,
            connect_timeout=10.0,
            max_idle=max_connections,
        )

    def api_key_for_checks(self) -> str:
        """The key itself, for the one caller that must search for it: the check that a page
        about to be published does not hold it. Never printed, logged or stored."""
        return self._key

    def with_retry(self, retry: RetryPolicy, sleep: Callable[[float], None]) -> MosaicClient:
        """This client (same connections, key and request log) with its own retry policy and
        sleep, for a caller that owns its backoff; the client it came from is unchanged."""
        derived = copy.copy(self)
        derived.retry = retry
        derived.sleep = sleep
        return derived

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> MosaicClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the generic call ----------------------------------------------------------------------

    def call(
        self,
        route_name: str,
        *,
        json: dict[str, Any] | None = None,
        idempotent: bool | None = None,
        expect: tuple[str, ...] = (),
        **params: str,
    ) -> Any:
        """Send one API request by route name; returns the JSON body or raises a MosaicError.

        `expect` names the fields the answer must have: another server answering JSON of some
        other shape (a proxy, a wrong URL) then fails with a message, not with a KeyError.
        """
        route = ROUTES[route_name]
        _refuse_text_that_is_not_utf8({**params, **(json or {})})
        path = route.path.format(**{k: quote(v, safe="/") for k, v in params.items()})
        safe = route.idempotent if idempotent is None else idempotent
        response = self._send(
            route.method,
            self.api_url + path,
            safe=safe,
            headers={"X-API-Key": self._key},
            json=json,
        )
        body = self._json(response)
        missing = [key for key in expect if not isinstance(body, dict) or key not in body]
        if missing:
            raise PlatformError(
                f"{route.method} {_redacted_path(response.url)}: the answer has no "
                f"{', '.join(repr(k) for k in missing)} field; is {self.api_url} a Mosaic API?",
                hint="check --api-url, MOSAIC_API_URL or the target's api_url",
            )
        return body

    def _send(
        self,
        method: str,
        url: str,
        *,
        safe: bool,
        headers: dict[str, str] | None = None,
        json: Any = None,
        content_factory: Callable[[], Iterator[bytes] | bytes] | None = None,
    ) -> Response:
        headers = {"User-Agent": _USER_AGENT, **(headers or {})}
        payload: bytes | None = None
        if json is not None:
            payload = _json.dumps(
                json, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode("utf-8")
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            attempt += 1
            started = time.perf_counter()
            try:
                response = self.http.send(
                    method, url, headers, content_factory() if content_factory else payload
                )
            except TransportError as exc:
                self._report(method, url, None, started, attempt, type(exc).__name__)
                # A request that never connected was never processed: always safe to resend.
                if attempt >= self.retry.attempts or not (safe or not exc.sent):
                    raise UnavailableError(
                        f"{method} {_redacted_path(url)}: {exc.describe} "
                        f"(after {attempt} attempt{'s' if attempt > 1 else ''})",
                        hint=_UNTRUSTED_HINT
                        if isinstance(exc, Untrusted)
                        else f"check that {self.api_url} is reachable; for the local platform "
                        "run `mosaicsync local`",
                    ) from None
                self.sleep(self.retry.delay(attempt, None, self.rng))
                continue
            self._report(method, url, response.status, started, attempt, None)
            ms = (time.perf_counter() - started) * 1000
            if self.min_rtt_ms is None or ms < self.min_rtt_ms:
                self.min_rtt_ms = ms
            status = response.status
            # 429 means "not processed": retrying it is safe for any request.
            retryable = status == 429 or (status in RETRYABLE_STATUS and safe)
            if retryable and attempt < self.retry.attempts:
                self.sleep(self.retry.delay(attempt, response.headers.get("retry-after"), self.rng))
                continue
            if status >= 400:
                raise self._error(response, attempt)
            return response

    def _report(
        self,
        method: str,
        url: str,
        status: int | None,
        started: float,
        attempt: int,
        error: str | None,
    ) -> None:
        if self.on_request:
            ms = (time.perf_counter() - started) * 1000
            self.on_request(RequestEvent(method, _redacted_path(url), status, ms, attempt, error))

    @staticmethod
    def _json(response: Response) -> Any:
        try:
            return response.json()
        except ValueError:
            raise PlatformError(
                f"{response.method} {_redacted_path(response.url)}: "
                f"the platform answered {response.status} with a body that is not JSON"
            ) from None

    def _error(self, response: Response, attempts: int) -> MosaicError:
        status = response.status
        try:
            body = response.json()
        except ValueError:
            body = {}
        message = body.get("error") if isinstance(body, dict) else None
        message = message or response.reason or f"HTTP {status}"
        path = _redacted_path(response.url)
        where = f"{response.method} {path}"
        if status == 401:
            return AuthError(
                f"{where}: {message}",
                hint="Mosaic API keys rotate every 30 days: get the current key from the "
                "dashboard and run `mosaicsync login` (or set MOSAIC_API_KEY)",
            )
        if status in (402, 403):
            return AuthError(
                f"{where}: {message}",
                hint="this is a plan limit or a permission: see your plan, or submit a ticket "
                "with `mosaicsync ticket --subject S --message M`",
            )
        if status == 404:
            return NotFoundError(
                f"{where}: {message}",
                hint="check the project id (`mosaicsync projects list`) and the API URL",
            )
        if status == 429:
            return UnavailableError(
                f"{where}: rate limited; waited and retried {attempts - 1} times: {message}",
                hint="slow down (e.g. --concurrency 2) or retry later",
            )
        if status >= 500:
            return UnavailableError(
                f"{where}: the platform failed with {status} after {attempts} attempt"
                f"{'s' if attempts > 1 else ''}: {message}",
                hint="retry later; if it persists, run "
                "`mosaicsync ticket --diagnostics --subject S --message M`",
            )
        if isinstance(body, dict) and "code" in body and path.endswith("/sql"):
            return SqlError(
                message,
                code=body.get("code"),
                position=body.get("position"),
                detail=body.get("detail"),
                hint=body.get("hint"),
            )
        return PlatformError(f"{where}: {message}")

    # -- typed helpers -------------------------------------------------------------------------

    def list_projects(self) -> list[dict[str, Any]]:
        return self.call("list_projects", expect=("projects",))["projects"]

    def create_project(self, name: str) -> dict[str, Any]:
        return self.call("create_project", json={"name": name}, expect=("project_id",))

    def get_project(self, project_id: str) -> dict[str, Any]:
        return self.call("get_project", project_id=project_id, expect=("project_id", "status"))

    def wait_until_running(self, project_id: str, timeout: float = 120.0) -> dict[str, Any]:
        """Projects start `provisioning`; poll until `running` (or time out clearly)."""

        def running() -> tuple[bool, dict[str, Any]]:
            project = self.get_project(project_id)
            return project.get("status") == "running", project

        done, project = poll(
            running, timeout=timeout, backoff=Backoff(0.02, 1.0, rng=self.rng), sleep=self.sleep
        )
        if not done:
            raise UnavailableError(
                f"project {project_id} is still {project.get('status')!r} after {timeout:.0f} s",
                hint="retry later; if it persists, submit a ticket",
            )
        return project

    def delete_project(self, project_id: str) -> None:
        self.call("delete_project", project_id=project_id)

    def database(self, project_id: str) -> dict[str, Any]:
        return self.call("database", project_id=project_id, expect=("database_url", "password"))

    def sql(self, project_id: str, query: str, *, idempotent: bool = False) -> list[dict[str, Any]]:
        return self.call(
            "sql",
            project_id=project_id,
            json={"query": query},
            idempotent=idempotent,
            expect=("data",),
        )["data"]

    def upload_file(
        self, project_id: str, filename: str, content: str, *, base64: bool = False
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"filename": filename, "content": content}
        if base64:
            body["encoding"] = "base64"
        return self.call("upload_file", project_id=project_id, json=body)

    def list_files(self, project_id: str) -> list[dict[str, Any]]:
        return self.call("list_files", project_id=project_id, expect=("files",))["files"]

    def delete_file(self, project_id: str, filename: str) -> None:
        self.call("delete_file", project_id=project_id, filename=filename)

    def upload_url(self, project_id: str, filename: str, size: int) -> dict[str, Any]:
        return self.call(
            "upload_url",
            project_id=project_id,
            json={"filename": filename, "size": size},
            expect=("upload_url",),
        )

    def put_presigned(
        self,
        upload_url: str,
        path: Path,
        size: int,
        *,
        name: str | None = None,
        command: str = "the command",
    ) -> Response:
        """Stream a file from disk to a presigned URL (never whole in memory); retried whole.

        The URL was signed for `size`, the size measured before. A file that grows or shrinks
        while it is read (a build still writing it) raises `ScanError` naming `name`, before the
        platform has a whole body: the chunk that would complete the declared length is held
        back until the file is known to end there. Not retried: the file is likely to change
        again, and the next run measures it afresh (and may route it elsewhere).
        """

        def changed(detail: str) -> ScanError:
            return changed_while_uploaded(name or path.name, detail, command)

        def chunks() -> Iterator[bytes]:
            sent = 0
            with open(path, "rb") as f:
                while chunk := f.read(_CHUNK):
                    sent += len(chunk)
                    if sent > size or (sent == size and f.read(1)):
                        raise changed(f"it grew past the {size} bytes it had when measured")
                    yield chunk
            if sent != size:
                raise changed(f"{sent} bytes instead of {size} when measured")

        def whole() -> bytes:
            # A file of one chunk is checked whole before a byte goes, then sent in one write
            # with the whole-body requests: a stream costs a request its own HTTP stack.
            return b"".join(chunks())

        return self._send(
            "PUT",
            upload_url,
            safe=True,
            headers={"Content-Length": str(size)},
            content_factory=whole if size <= _CHUNK else chunks,
        )

    def read_object(self, url: str, start: int | None = None, end: int | None = None) -> bytes:
        """The bytes of a public storage object, or of its range [start, end) when given."""
        if start is None or end is None:
            return self._send("GET", url, safe=True).content
        return self.read_ranges(url, [(start, end)])[0]

    def read_ranges(self, url: str, spans: Sequence[tuple[int, int]]) -> list[bytes]:
        """The bytes of each [start, end) span of a public storage object.

        Asks for each range (as S3 honours it); a server that ignores Range and sends the whole
        object (200) is answered from that one body for every span, not downloaded again. The
        API key is never sent: storage URLs are public and may live on another host.
        """
        out: list[bytes] = []
        whole: bytes | None = None
        for start, end in spans:
            if end <= start:
                out.append(b"")
                continue
            if whole is not None:
                out.append(whole[start:end])
                continue
            response = self._send(
                "GET", url, safe=True, headers={"Range": f"bytes={start}-{end - 1}"}
            )
            data = response.content
            if response.status != 206:
                whole = data
                out.append(whole[start:end])
                continue
            if len(data) != end - start:
                raise UnavailableError(
                    f"GET {_redacted_path(url)}: asked for {end - start} bytes, "
                    f"received {len(data)}",
                    hint="retry; if it persists the stored object is shorter than recorded",
                )
            out.append(data)
        return out

    def download_object(self, url: str, dest: Path) -> tuple[int, str]:
        """Stream a public storage object to `dest` (never whole in memory): (size, sha256)."""
        attempt = 0
        while True:
            attempt += 1
            digest = hashlib.sha256()
            size = 0
            try:
                with self.http.stream("GET", url, {}) as response, open(dest, "wb") as out:
                    if response.status >= 400:
                        failed = response.read()
                        if response.status in RETRYABLE_STATUS and (attempt < self.retry.attempts):
                            self.sleep(self.retry.delay(attempt, None, self.rng))
                            continue
                        raise self._error(failed, attempt)
                    for chunk in response.iter_bytes(1024 * 1024):
                        digest.update(chunk)
                        size += len(chunk)
                        out.write(chunk)
                return size, digest.hexdigest()
            except TransportError as exc:
                if attempt >= self.retry.attempts:
                    raise UnavailableError(
                        f"GET {_redacted_path(url)}: {exc.describe} (after {attempt} attempts)",
                        hint=f"check that {self.api_url} is reachable",
                    ) from None
                self.sleep(self.retry.delay(attempt, None, self.rng))

    def list_storage(self, project_id: str) -> dict[str, Any]:
        return self.call("list_storage", project_id=project_id, expect=("files",))

    def delete_object(self, project_id: str, filename: str) -> None:
        self.call("delete_object", project_id=project_id, filename=filename)

    def magic_link(self, project_id: str, email: str, redirect_url: str = "/") -> dict[str, Any]:
        return self.call(
            "magic_link",
            project_id=project_id,
            json={"email": email, "redirect_url": redirect_url},
        )

    def create_ticket(
        self, subject: str, message: str, project_id: str | None = None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"subject": subject, "message": message}
        if project_id:
            body["project_id"] = project_id
        return self.call("create_ticket", json=body)
