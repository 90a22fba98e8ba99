"""Running a query for the SQL endpoint: as the tenant, under a watchdog, within the caps.

Tenant SQL always runs on a connection logged in *as* the tenant role (a superuser connection
with SET ROLE can be escaped with RESET ROLE). Rows arrive one at a time (libpq single-row mode)
and each row's size as PostgreSQL sent it is checked before anything is decoded, so a huge
result hits a cap while it holds at most one row of it: libpq keeps one receive buffer and one
copy of a row, and our memory holds no Python copy of a value that is already over the cap.
"""

from __future__ import annotations

import ctypes
import functools
import json
import math
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import generators, pq, sql
from psycopg.adapt import AdaptersMap, Transformer
from psycopg.postgres import types as builtin_types
from psycopg.pq.abc import PGresult
from psycopg.types import TypeInfo
from psycopg.types.array import register_array
from psycopg.types.bool import BoolLoader
from psycopg.types.json import JsonbLoader, JsonLoader
from psycopg.types.numeric import FloatLoader, IntLoader
from psycopg.types.string import TextLoader

from mosaicsync.local.pg.pool import TenantPool
from mosaicsync.local.pg.tenants import TenantCredentials, TenantUnavailableError, admin_connection

MAX_SAFE_INTEGER = 2**53 - 1  # beyond it a JSON number loses digits in JavaScript
CANCEL_GRACE = 2.0  # seconds a cancelled query has to stop before its backend is terminated
# Before decoding, a result is refused once the text PostgreSQL sent for it passes this many
# times the JSON cap: json/jsonb can shrink when re-encoded compactly, all other types only grow.
RAW_CAP_FACTOR = 2
# libpq never shrinks a connection's receive buffer: after a row or an error this large the
# connection is closed rather than pooled, and freed memory is handed back to the OS.
LARGE_MESSAGE = 1024 * 1024
# PostgreSQL's error message, detail and hint are cut to this many characters each.
MAX_ERROR_TEXT = 4096


@dataclass(frozen=True)
class SqlLimits:
    """Caps of the SQL endpoint; each maps to a `mosaicsync local` flag of the same name."""

    statement_timeout: float = 30.0  # seconds
    max_rows: int = 10_000
    max_result_bytes: int = 10 * 1024 * 1024
    connections_per_project: int = 5
    connections_per_account: int = 10  # held by all of one account's projects; 0 = no cap
    connection_wait: float = 5.0  # seconds a request waits for a busy project's connection


class SqlError(Exception):
    """A PostgreSQL error caused by the tenant's SQL: the endpoint answers 400 with these fields."""

    def __init__(
        self,
        message: str,
        code: str | None = None,
        position: int | None = None,
        detail: str | None = None,
        hint: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.position = position
        self.detail = detail
        self.hint = hint


class SqlLimitError(SqlError):
    """A cap of the local platform (rows, bytes, time) stopped the query or withheld its result."""


# -- JSON mapping ---------------------------------------------------------------------------
# Everything arrives as PostgreSQL's text output except bool, integers, floats and json, which
# psycopg parses; arrays become lists with the same rule for their elements.


def _tenant_adapters() -> AdaptersMap:
    adapters = AdaptersMap()  # empty: unknown types fall back to the text loader below
    adapters.register_loader(0, TextLoader)
    for name in ("int2", "int4", "int8", "oid"):
        adapters.register_loader(builtin_types[name].oid, IntLoader)
    for name in ("float4", "float8"):
        adapters.register_loader(builtin_types[name].oid, FloatLoader)
    adapters.register_loader(builtin_types["bool"].oid, BoolLoader)
    adapters.register_loader(builtin_types["json"].oid, JsonLoader)
    adapters.register_loader(builtin_types["jsonb"].oid, JsonbLoader)
    for info in builtin_types:
        if info.array_oid:
            register_array(info, adapters)
    return adapters


TENANT_ADAPTERS = _tenant_adapters()
_BUILTIN_OIDS = frozenset(
    oid for info in builtin_types for oid in (info.oid, info.array_oid) if oid
) | {0}
_FLOAT_TEXT = {math.inf: "Infinity", -math.inf: "-Infinity"}


def _int8(value: int) -> int | str:
    return value if -MAX_SAFE_INTEGER <= value <= MAX_SAFE_INTEGER else str(value)


def _float(value: float) -> float | str:
    if math.isfinite(value):
        return value
    return _FLOAT_TEXT.get(value, "NaN")


def _elements(convert: Callable[[Any], Any]) -> Callable[[list[Any]], list[Any]]:
    def walk(items: list[Any]) -> list[Any]:
        return [
            None if x is None else walk(x) if isinstance(x, list) else convert(x) for x in items
        ]

    return walk


_SCALAR_CONVERTERS: dict[int, Callable[[Any], Any]] = {
    builtin_types["int8"].oid: _int8,
    builtin_types["float4"].oid: _float,
    builtin_types["float8"].oid: _float,
}
_CONVERTERS: dict[int, Callable[[Any], Any]] = {
    **_SCALAR_CONVERTERS,
    **{
        builtin_types.get(oid).array_oid: _elements(conv)  # type: ignore[union-attr]
        for oid, conv in _SCALAR_CONVERTERS.items()
    },
}


class _ResultSet:
    """Rows of one statement's result, converted as they stream in, within the caps."""

    def __init__(self, res: PGresult, tx: Transformer, encoding: str, limits: SqlLimits):
        self.tx = tx
        self.limits = limits
        tx.set_pgresult(res, set_loaders=True)
        self.names = [res.fname(i).decode(encoding) for i in range(res.nfields)]
        self.oids = [res.ftype(i) for i in range(res.nfields)]
        self.converters = [(i, c) for i, oid in enumerate(self.oids) if (c := _CONVERTERS.get(oid))]
        self.rows: list[dict[str, Any]] = []
        self.count = 0
        self.size = 2  # the enclosing []
        self.exceeded: str | None = None
        self.first = True
        self.raw = 0  # bytes of values as PostgreSQL sent them
        self.largest = 0  # the largest row, as sent

    def add(self, res: PGresult) -> None:
        if not res.ntuples:
            return
        self.count += res.ntuples
        # The size PostgreSQL sent, before any value becomes a Python object.
        raw = _raw_size(res)
        self.largest = max(self.largest, raw)
        self.raw += raw
        if self.exceeded:
            return  # keep draining so the statements complete, without keeping rows
        if self.count > self.limits.max_rows:
            self.exceeded, self.rows = "rows", []
            return
        if self.raw > RAW_CAP_FACTOR * self.limits.max_result_bytes:
            self.exceeded, self.rows = "bytes", []
            return
        if not self.first:
            self.tx.set_pgresult(res, set_loaders=False)
        self.first = False
        values = self.tx.load_rows(0, res.ntuples, list)
        for i, convert in self.converters:
            for row in values:
                if row[i] is not None:
                    row[i] = convert(row[i])
        names = self.names
        chunk = [dict(zip(names, row, strict=True)) for row in values]
        # Counted as the HTTP layer will send it: compact separators, UTF-8.
        encoded = json.dumps(chunk, ensure_ascii=False, separators=(",", ":"))
        self.size += len(encoded.encode()) - 2 + (1 if self.rows else 0)
        if self.size > self.limits.max_result_bytes:
            self.exceeded, self.rows = "bytes", []
            return
        self.rows.extend(chunk)


@dataclass
class _Outcome:
    result: _ResultSet | str | None = None  # the last statement's rows, or its command tag
    error: SqlError | None = None
    large: bool = False  # a message over LARGE_MESSAGE grew libpq's receive buffer


class SqlExecutor:
    """Runs the SQL endpoint's queries on connections from the tenant pool."""

    def __init__(self, admin_dsn: str, pool: TenantPool, limits: SqlLimits) -> None:
        self.admin_dsn = admin_dsn  # to terminate a backend that ignores its cancel
        self.pool = pool
        self.limits = limits
        self._array_loaders: dict[tuple[str, int], tuple[Any, Callable[[Any], Any] | None]] = {}

    def execute(
        self, creds: TenantCredentials, query: str, account: object = None
    ) -> list[dict[str, Any]]:
        """Run the query as the tenant and return the last statement's rows or command tag.

        Several statements run as one implicit transaction (simple query protocol).
        """
        if not query.strip():
            raise SqlError('the query is empty: send SQL in "query", e.g. "SELECT 1"', "42601")
        if "\x00" in query:
            raise SqlError("the query contains a NUL character, which SQL text cannot", "22021")
        conn = self.pool.checkout(creds, account)
        reusable = False
        large = False
        try:
            outcome, cancelled, elapsed = self._run_watched(conn, query)
            large = outcome.large
            reusable = not cancelled and not large
            result = outcome.result
            if not cancelled and isinstance(result, _ResultSet) and not result.exceeded:
                self._load_extension_arrays(conn, creds, result)
        finally:
            self.pool.checkin(creds, conn, reusable)
            if large:
                _release_memory()
        if outcome.error is not None:
            raise self._classify(outcome.error, cancelled, elapsed)
        result = outcome.result
        if result is None:
            raise SqlError('the query is empty: send SQL in "query", e.g. "SELECT 1"', "42601")
        if isinstance(result, str):
            return [{"result": result}]
        if result.exceeded == "rows":
            raise SqlLimitError(
                f"the result has {result.count} rows, more than the {self.limits.max_rows}-row "
                "limit of the local platform's SQL endpoint; add a LIMIT, or raise the cap with "
                "`mosaicsync local --max-rows N`. The statements did run (each request commits "
                "on its own); only the result was withheld.",
                "54000",
            )
        if result.exceeded == "bytes":
            raise SqlLimitError(
                f"the result is larger than {_size(self.limits.max_result_bytes)} of JSON, the "
                "limit of the local platform's SQL endpoint; select fewer rows or columns, or "
                "raise the cap with `mosaicsync local --max-result-bytes N`. The statements did "
                "run (each request commits on its own); only the result was withheld.",
                "54000",
            )
        return result.rows

    def _classify(self, error: SqlError, cancelled: bool, elapsed: float) -> SqlError:
        limit = self.limits.statement_timeout
        # 57P01: the watchdog terminated a backend that ignored its cancel.
        if (cancelled and error.code == "57P01") or (
            error.code == "57014"
            and (cancelled or ("statement timeout" in error.message and elapsed >= limit * 0.9))
        ):
            return SqlLimitError(
                f"the query ran longer than {limit:g}s, the statement timeout of the local "
                "platform, and was cancelled; its transaction was rolled back. Raise the limit "
                "with `mosaicsync local --statement-timeout SECONDS`.",
                "57014",
            )
        return error

    def _run_watched(
        self, conn: psycopg.Connection[Any], query: str
    ) -> tuple[_Outcome, bool, float]:
        """Run under a watchdog: the tenant can `SET statement_timeout = 0`, we still stop it."""
        fired = threading.Event()
        finished = threading.Event()
        backend = conn.info.backend_pid

        def cancel() -> None:
            fired.set()
            with suppress(Exception):
                conn.cancel_safe(timeout=5.0)
            # PL/pgSQL can catch query_canceled and carry on: then the backend itself goes.
            if not finished.wait(CANCEL_GRACE):
                with suppress(psycopg.Error), admin_connection(self.admin_dsn) as admin:
                    admin.execute("SELECT pg_terminate_backend(%s)", [backend])

        timer = threading.Timer(self.limits.statement_timeout, cancel)
        timer.daemon = True
        started = time.monotonic()
        timer.start()
        try:
            outcome = self._run(conn, query)
        except psycopg.OperationalError as exc:
            if fired.is_set():
                outcome = _Outcome(error=SqlError("terminated by the watchdog", "57014"))
            else:
                raise TenantUnavailableError(
                    f"lost the connection to the project database while running the query: {exc}"
                ) from exc
        finally:
            finished.set()
            timer.cancel()
            timer.join()  # a cancel in flight must land before the connection is reused
        return outcome, fired.is_set(), time.monotonic() - started

    def _run(self, conn: psycopg.Connection[Any], query: str) -> _Outcome:
        """Send the query without parameters (simple protocol) and walk every result."""
        pgconn = conn.pgconn
        encoding = conn.info.encoding
        try:
            data = query.encode(encoding)
        except UnicodeEncodeError as exc:
            return _Outcome(error=SqlError(f"the query is not valid text: {exc}", "22021"))
        tx = Transformer(conn)
        out = _Outcome()
        current: _ResultSet | None = None
        tag = ""
        with conn.lock, _errors_by_field(pgconn):
            pgconn.send_query(data)
            # One row at a time (not chunks of rows): libpq holds a whole chunk before we can
            # look at it, so only single rows bound what a huge result costs before the caps.
            pgconn.set_single_row_mode()
            conn.wait(generators.send(pgconn))
            while (res := self._next_result(conn, out)) is not None:
                status = res.status
                tag = (res.command_status or b"").decode(encoding) or tag
                if status in (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.SINGLE_TUPLE):
                    if current is None:
                        current = _ResultSet(res, tx, encoding, self.limits)
                    current.add(res)
                    out.large = out.large or current.largest > LARGE_MESSAGE
                elif status == pq.ExecStatus.TUPLES_OK:
                    if current is None:  # a result with no rows
                        current = _ResultSet(res, tx, encoding, self.limits)
                        current.add(res)
                    out.result, current, tag = current, None, ""
                elif status == pq.ExecStatus.COMMAND_OK:
                    out.result, tag = tag, ""
                elif status == pq.ExecStatus.EMPTY_QUERY:
                    out.result = None
                elif status in (pq.ExecStatus.COPY_IN, pq.ExecStatus.COPY_OUT):
                    # Closing aborts the COPY and rolls its transaction back.
                    conn.close()
                    return _Outcome(
                        error=SqlError(
                            "COPY ... FROM STDIN / TO STDOUT is not supported by the SQL "
                            "endpoint; the transaction was rolled back. Use psql with the "
                            "project's database URL, or INSERT ... VALUES.",
                            "0A000",
                        )
                    )
                else:
                    error, length = _sql_error(res, encoding)
                    out.error = out.error or error
                    out.large = out.large or length > LARGE_MESSAGE
                    current = None
            tx.set_pgresult(None)  # let the last row's PGresult go now, not with the rows
        return out

    @staticmethod
    def _next_result(conn: psycopg.Connection[Any], out: _Outcome) -> PGresult | None:
        try:
            return conn.wait(generators.fetch(conn.pgconn))
        except psycopg.OperationalError:
            if out.error is not None:
                return None  # a FATAL error (e.g. pg_terminate_backend) closed the connection
            raise

    def _load_extension_arrays(
        self, conn: psycopg.Connection[Any], creds: TenantCredentials, result: _ResultSet
    ) -> None:
        """Turn arrays of types psycopg does not know (enums, domains, vector...) into lists."""
        unknown = [(i, oid) for i, oid in enumerate(result.oids) if oid not in _BUILTIN_OIDS]
        if not unknown or not result.rows:
            return
        missing = [oid for _, oid in unknown if (creds.database, oid) not in self._array_loaders]
        if missing:
            try:
                self._lookup_types(conn, creds.database, missing)
            except psycopg.Error:
                return  # e.g. inside the tenant's failed transaction: leave the text as it is
        for i, oid in unknown:
            loader, convert = self._array_loaders.get((creds.database, oid), (None, None))
            if loader is None:
                continue
            name = result.names[i]
            for row in result.rows:
                value = row[name]
                if isinstance(value, str):
                    items = loader.load(value.encode())
                    row[name] = convert(items) if convert else items

    def _lookup_types(self, conn: psycopg.Connection[Any], database: str, oids: list[int]) -> None:
        # Plain integers: tenant connections have no parameter dumpers.
        listed = sql.SQL(", ").join(sql.SQL(str(int(o))) for o in oids)
        # Arrays of domains load like arrays of the domain's base type.
        rows = conn.execute(
            sql.SQL(
                "SELECT t.oid, t.typcategory = 'A' AND t.typelem <> 0, "
                "coalesce(nullif(e.typbasetype, 0), t.typelem), coalesce(e.typdelim, ',') "
                "FROM pg_catalog.pg_type t LEFT JOIN pg_catalog.pg_type e ON e.oid = t.typelem "
                "WHERE t.oid IN ({})"
            ).format(listed)
        ).fetchall()
        for oid, is_array, element, delimiter in rows:
            entry: tuple[Any, Callable[[Any], Any] | None] = (None, None)
            if is_array:
                adapters = AdaptersMap(TENANT_ADAPTERS)
                TypeInfo("element", int(element), int(oid), delimiter=str(delimiter)).register(
                    adapters
                )
                loader = Transformer(adapters).get_loader(int(oid), pq.Format.TEXT)
                scalar = _SCALAR_CONVERTERS.get(int(element))
                entry = (loader, _elements(scalar) if scalar else None)
            self._array_loaders[(database, int(oid))] = entry


def _sql_error(res: PGresult, encoding: str) -> tuple[SqlError, int]:
    """The error PostgreSQL sent, each text cut to MAX_ERROR_TEXT; and its longest field's size.

    A value in an error (`'xxx…'::int`) can make the message as large as the value: only a
    prefix of each field is read, so a huge message is never copied whole.
    """
    longest = 0

    def field_text(code: pq.DiagnosticField, limit: int = MAX_ERROR_TEXT) -> str | None:
        nonlocal longest
        found = _error_field_prefix(res, code, limit * 4)  # up to 4 bytes a character
        if found is None:
            return None
        value, length = found
        longest = max(longest, length)
        return _cut(value.decode(encoding, "replace"), limit, length, len(value))

    fields = pq.DiagnosticField
    position = field_text(fields.STATEMENT_POSITION, 20)
    message = field_text(fields.MESSAGE_PRIMARY)
    if message is None:
        text = res.error_message
        longest = max(longest, len(text))
        message = (
            _cut(
                text[: MAX_ERROR_TEXT * 4].decode(encoding, "replace").strip(),
                MAX_ERROR_TEXT,
                len(text),
                MAX_ERROR_TEXT * 4,
            )
            or "query failed"
        )
    error = SqlError(
        message,
        code=field_text(fields.SQLSTATE, 5),
        position=int(position) if position and position.isdigit() else None,
        detail=field_text(fields.MESSAGE_DETAIL),
        hint=field_text(fields.MESSAGE_HINT),
    )
    return error, longest


def _cut(text: str, limit: int, length: int, read: int) -> str:
    """`text` (the first `read` of `length` bytes) cut to `limit` characters, saying so."""
    if len(text) <= limit and read >= length:
        return text
    return (
        f"{text[:limit]}… [cut: {length:,} bytes in all; the first {limit:,} characters are shown]"
    )


# -- sizes read from libpq without copying values -------------------------------------------


@functools.cache
def _libpq() -> ctypes.CDLL | None:
    """The libpq psycopg itself uses (ours to call with our own argument types), if found."""
    path = None
    if pq.__impl__ == "python":
        from psycopg.pq import _pq_ctypes

        path = _pq_ctypes.pq._name
    else:
        # Linux: the library mapped into this process (psycopg's wheel bundles its own).
        found: set[str] = set()
        with suppress(OSError), open("/proc/self/maps") as maps:
            for line in maps:
                name = line.rsplit(None, 1)[-1]
                if "/libpq" in name and ".so" in name:
                    found.add(name)
        bundled = {name for name in found if "/psycopg" in name}
        candidates = bundled or found
        path = candidates.pop() if len(candidates) == 1 else None  # unsure: copy instead
    if path is None:
        return None
    try:
        lib = ctypes.CDLL(path)
        lib.PQgetlength.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.PQgetlength.restype = ctypes.c_int
        lib.PQresultErrorField.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.PQresultErrorField.restype = ctypes.c_void_p
        lib.PQsetErrorVerbosity.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.PQsetErrorVerbosity.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return lib


PQERRORS_SQLSTATE = 3  # libpq's PGVerbosity: the whole-message text is just severity and code


@contextmanager
def _errors_by_field(pgconn: pq.abc.PGconn) -> Iterator[None]:
    """While the tenant's query runs, libpq builds no whole-message text for an error.

    We read an error's fields only; the whole message would be three more copies of a value
    quoted in it (built, stored in the result, appended to the connection's error).
    """
    lib, ptr = _libpq(), pgconn.pgconn_ptr
    if lib is None or not ptr:
        yield
        return
    previous = lib.PQsetErrorVerbosity(ptr, PQERRORS_SQLSTATE)
    try:
        yield
    finally:
        if ptr := pgconn.pgconn_ptr:  # None once closed (COPY)
            lib.PQsetErrorVerbosity(ptr, previous)


def _raw_size(res: PGresult) -> int:
    """Bytes of the result's values as PostgreSQL sent them, without extracting any."""
    rows, cols = range(res.ntuples), range(res.nfields)
    lib = _libpq()
    if lib is not None and (ptr := res.pgresult_ptr):
        return sum(lib.PQgetlength(ptr, r, c) for r in rows for c in cols)
    return sum(len(res.get_value(r, c) or b"") for r in rows for c in cols)


def _error_field_prefix(
    res: PGresult, code: pq.DiagnosticField, limit: int
) -> tuple[bytes, int] | None:
    """At most `limit` bytes of an error field, and the field's whole length."""
    lib = _libpq()
    if lib is not None and (ptr := res.pgresult_ptr):
        address = lib.PQresultErrorField(ptr, int(code))
        if not address:
            return None
        length = _strlen(address)
        return ctypes.string_at(address, min(length, limit)), length
    value = res.error_field(code)
    return None if value is None else (value[:limit], len(value))


_libc = ctypes.CDLL(None) if sys.platform != "win32" else None
if _libc is not None:
    _libc.strlen.argtypes, _libc.strlen.restype = [ctypes.c_void_p], ctypes.c_size_t


def _strlen(address: int) -> int:
    if _libc is not None:
        return int(_libc.strlen(address))
    return len(ctypes.string_at(address))


def _release_memory() -> None:
    """Hand freed heap memory back to the OS where the allocator keeps it (glibc)."""
    trim = getattr(_libc, "malloc_trim", None)
    if trim is not None:
        with suppress(Exception):
            trim(0)


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MiB"
    if n >= 1024:
        return f"{n / 1024:g} KiB"
    return f"{n} bytes"
