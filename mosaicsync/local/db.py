"""Tenant databases of the local platform: provisioning, and running the SQL endpoint's queries.

Each project gets a login role and a database of the same name, cloned from a template that
already holds the Mosaic extensions. Tenant SQL always runs on a connection logged in *as* the
tenant role (a superuser connection with SET ROLE can be escaped with RESET ROLE).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import math
import re
import secrets
import select
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

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

TEMPLATE = "mosaic_template"
EXTENSIONS = ("vector", "uuid-ossp", "pgcrypto")
SHIM_MARKER = "mosaicsync shim"
TEMP_FILE_LIMIT = "1GB"
IDLE_IN_TRANSACTION_TIMEOUT = "10min"
MAX_SAFE_INTEGER = 2**53 - 1  # beyond it a JSON number loses digits in JavaScript
CHUNK_ROWS = 1000
POOL_WAIT = 5.0  # seconds a request waits for a busy project's connection
CANCEL_GRACE = 2.0  # seconds a cancelled query has to stop before its backend is terminated
MAX_IDLE = 2  # idle connections kept per project (each counts against its connection limit)
IDLE_TTL = 60.0
_PROJECT_ID = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")


@dataclass(frozen=True)
class SqlLimits:
    """Caps of the SQL endpoint; each maps to a `mosaicsync local` flag of the same name."""

    statement_timeout: float = 30.0  # seconds
    max_rows: int = 10_000
    max_result_bytes: int = 10 * 1024 * 1024
    connections_per_project: int = 5


@dataclass(frozen=True)
class TenantCredentials:
    """How a project's own role reaches its own database (also what users give to psql)."""

    database: str
    user: str
    password: str
    host: str
    port: int

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (
            f"postgresql://{quote(self.user, safe='')}:{quote(self.password, safe='')}"
            f"@{host}:{self.port}/{quote(self.database, safe='')}"
        )


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


class TenantUnavailableError(psycopg.OperationalError):
    """The platform could not reach a tenant database: a server-side failure (5xx), not a 400."""


class PoolExhaustedError(TenantUnavailableError):
    """Every connection a project may open is busy (its role's CONNECTION LIMIT)."""


class TenantExistsError(Exception):
    """provision() found the project's role or database already there."""


@dataclass
class ServerInfo:
    """What the server offers the projects, for `/_local/info` and the start banner."""

    version: str
    extensions: dict[str, str]  # name -> "real <version>" | "shim <version>" | "missing"


def tenant_name(project_id: str) -> str:
    """The database and role name of a project: `pod-16f` -> `tenant_pod_16f`."""
    pid = project_id.lower()
    if not _PROJECT_ID.match(pid) or len(pid) > 56:
        raise ValueError(f"invalid project id {project_id!r}: expected e.g. pod-16f")
    return "tenant_" + pid.replace("-", "_")


def scram_verifier(password: str, iterations: int = 4096) -> str:
    """The SCRAM-SHA-256 secret PostgreSQL stores (RFC 5803 format), computed here.

    CREATE ROLE then never carries the cleartext password, which a server logging DDL or
    failed statements would otherwise write to its log.
    """
    # Our passwords are ASCII, for which SASLprep changes nothing.
    salt = secrets.token_bytes(16)
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), salt, iterations)
    client_key = hmac.new(salted, b"Client Key", "sha256").digest()
    server_key = hmac.new(salted, b"Server Key", "sha256").digest()
    stored_key = hashlib.sha256(client_key).digest()

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode()

    return f"SCRAM-SHA-256${iterations}:{b64(salt)}${b64(stored_key)}:{b64(server_key)}"


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


_ADAPTERS = _tenant_adapters()
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

    def add(self, res: PGresult) -> None:
        self.count += res.ntuples
        if self.exceeded or not res.ntuples:
            return  # keep draining so the statements complete, without keeping rows
        if self.count > self.limits.max_rows:
            self.exceeded, self.rows = "rows", []
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


# -- connection pool ------------------------------------------------------------------------


@dataclass
class _Pool:
    limit: int
    idle: list[tuple[psycopg.Connection[Any], float]] = field(default_factory=list)
    busy: int = 0  # checked out, or being connected
    closed: bool = False
    cond: threading.Condition = field(default_factory=threading.Condition)


def _reusable(conn: psycopg.Connection[Any]) -> bool:
    """An idle pooled connection is safe to hand out: open, idle, and nothing unread on it.

    Anything readable on an idle connection means the server closed or terminated it.
    """
    if conn.closed or conn.broken:
        return False
    if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
        return False
    try:
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
    except (OSError, ValueError, psycopg.Error):
        return False
    return not readable


def _reset(conn: psycopg.Connection[Any]) -> bool:
    """Clear what a tenant's statements left on the connection; False if it is done for."""
    if conn.closed or conn.broken:
        return False
    try:
        if conn.pgconn.transaction_status != pq.TransactionStatus.IDLE:
            conn.execute("ROLLBACK")  # an unfinished BEGIN must not leak into the next request
        # SET, temp tables, prepared statements, LISTEN, advisory locks: gone.
        conn.execute("DISCARD ALL")
    except psycopg.Error:
        return False
    return conn.pgconn.transaction_status == pq.TransactionStatus.IDLE


class Databases:
    """Provisions tenant databases on one PostgreSQL server and runs their SQL."""

    def __init__(
        self,
        admin_dsn: str,
        host: str,
        port: int,
        limits: SqlLimits,
        shim_dir: Path | None = None,
        *,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.admin_dsn = admin_dsn
        self.host = host
        self.port = port
        self.limits = limits
        self.shim_dir = shim_dir
        self.on_event = on_event
        self._pools: dict[TenantCredentials, _Pool] = {}
        self._lock = threading.Lock()
        self._array_loaders: dict[tuple[str, int], tuple[Any, Callable[[Any], Any] | None]] = {}
        self._last_prune = time.monotonic()

    # -- administration -----------------------------------------------------------------------

    @contextmanager
    def _admin(self, dbname: str | None = None) -> Iterator[psycopg.Connection[Any]]:
        extra = {"dbname": dbname} if dbname else {}
        with psycopg.connect(self.admin_dsn, autocommit=True, connect_timeout=10, **extra) as conn:
            yield conn

    def prepare(self) -> ServerInfo:
        """Close the shared databases to tenants and build the template; safe to repeat."""
        with self._admin() as conn:
            version = str(conn.execute("SHOW server_version").fetchone()[0])  # type: ignore[index]
            superuser = self._check_privileges(conn)
            for db in ("postgres", "template1"):
                # PUBLIC may connect to (and create temp tables in) every database by default.
                try:
                    conn.execute(
                        sql.SQL("REVOKE CONNECT, TEMP ON DATABASE {} FROM PUBLIC").format(
                            sql.Identifier(db)
                        )
                    )
                except psycopg.Error as exc:
                    self._emit(f"could not close database {db} to tenants: {_brief(exc)}")
            if not conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", [TEMPLATE]
            ).fetchone():
                self._create_template(conn)
            conn.execute(
                sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(sql.Identifier(TEMPLATE))
            )
        extensions = self._template_extensions(superuser)
        return ServerInfo(version=version, extensions=extensions)

    def _check_privileges(self, conn: psycopg.Connection[Any]) -> bool:
        row = conn.execute(
            "SELECT current_user, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname = current_user"
        ).fetchone()
        assert row is not None
        user, superuser, createrole, createdb = row
        if not (superuser or (createrole and createdb)):
            raise TenantUnavailableError(
                f"the database role {user!r} can neither create roles nor databases, so it "
                f"cannot provision projects. Grant it with `ALTER ROLE {user} CREATEROLE "
                "CREATEDB` (as a superuser), or give --database-url a role that has them."
            )
        return bool(superuser)

    def _create_template(self, conn: psycopg.Connection[Any]) -> None:
        create = "CREATE DATABASE {} TEMPLATE template0 ENCODING 'UTF8' IS_TEMPLATE true"
        try:
            try:
                conn.execute(sql.SQL(create).format(sql.Identifier(TEMPLATE)))
            except psycopg.errors.InvalidParameterValue:
                # The server's default locale does not go with UTF-8.
                conn.execute(sql.SQL(create + " LOCALE 'C'").format(sql.Identifier(TEMPLATE)))
        except psycopg.errors.DuplicateDatabase:
            pass  # another platform process created it meanwhile

    def _template_extensions(self, superuser: bool) -> dict[str, str]:
        shims: set[str] = set()
        if self.shim_dir is not None:
            shims = {p.stem for p in (self.shim_dir / "extension").glob("*.control")}
        with self._admin(TEMPLATE) as conn:
            for name in EXTENSIONS:
                try:
                    conn.execute(
                        sql.SQL("CREATE EXTENSION IF NOT EXISTS {}").format(sql.Identifier(name))
                    )
                except psycopg.Error as exc:
                    why = _brief(exc)
                    if not superuser and isinstance(exc, psycopg.errors.InsufficientPrivilege):
                        why += " (the --database-url role is not a superuser)"
                    self._emit(f"extension {name} is missing for projects: {why}")
            installed = dict(conn.execute("SELECT extname, extversion FROM pg_extension"))
            comments = dict(
                conn.execute(
                    "SELECT name, coalesce(comment, '') FROM pg_available_extensions "
                    "WHERE name = ANY(%s)",
                    [list(EXTENSIONS)],
                )
            )
        result = {}
        for name in EXTENSIONS:
            if name not in installed:
                result[name] = "missing"
            elif name in shims or comments.get(name, "").startswith(SHIM_MARKER):
                result[name] = f"shim {installed[name]}"
            else:
                result[name] = f"real {installed[name]}"
        return result

    def provision(self, project_id: str) -> TenantCredentials:
        """Create the project's role and database; the password is generated here."""
        name = tenant_name(project_id)
        password = secrets.token_urlsafe(24)
        role = sql.Identifier(name)
        with self._admin() as conn:
            if self._exists(conn, name):
                raise TenantExistsError(f"a role or database named {name} already exists")
            superuser = bool(
                conn.execute(
                    "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                ).fetchone()[0]  # type: ignore[index]
            )
            conn.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN PASSWORD {} CONNECTION LIMIT {} NOSUPERUSER "
                    "NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS"
                ).format(
                    role,
                    sql.Literal(scram_verifier(password)),
                    sql.Literal(self.limits.connections_per_project),
                )
            )
            try:
                if not superuser:
                    # CREATE DATABASE ... OWNER needs membership in the owner role (PG 16+).
                    conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(role))
                conn.execute(
                    sql.SQL("CREATE DATABASE {} TEMPLATE {} OWNER {}").format(
                        role, sql.Identifier(TEMPLATE), role
                    )
                )
                conn.execute(sql.SQL("REVOKE ALL ON DATABASE {} FROM PUBLIC").format(role))
                conn.execute(sql.SQL("GRANT CONNECT, TEMP ON DATABASE {} TO {}").format(role, role))
                timeout_ms = max(1, round(self.limits.statement_timeout * 1000))
                settings = {
                    "statement_timeout": f"{timeout_ms}ms",
                    "idle_in_transaction_session_timeout": IDLE_IN_TRANSACTION_TIMEOUT,
                    "DateStyle": "ISO, MDY",
                    "TimeZone": "UTC",
                    "IntervalStyle": "postgres",
                    "bytea_output": "hex",
                }
                for key, value in settings.items():
                    conn.execute(
                        sql.SQL("ALTER ROLE {} SET {} = {}").format(
                            role, sql.Identifier(key), sql.Literal(value)
                        )
                    )
                try:
                    # A superuser-only setting: the tenant cannot lift it.
                    conn.execute(
                        sql.SQL("ALTER ROLE {} SET temp_file_limit = {}").format(
                            role, sql.Literal(TEMP_FILE_LIMIT)
                        )
                    )
                except psycopg.errors.InsufficientPrivilege:
                    self._emit(f"{name}: temp_file_limit not set (needs a superuser)")
            except BaseException:
                with suppress(psycopg.Error):
                    self._drop(conn, name)
                raise
        return TenantCredentials(name, name, password, self.host, self.port)

    def exists(self, project_id: str) -> bool:
        """Whether the role or database exists: ids must not collide on a shared server."""
        with self._admin() as conn:
            return self._exists(conn, tenant_name(project_id))

    @staticmethod
    def _exists(conn: psycopg.Connection[Any], name: str) -> bool:
        row = conn.execute(
            "SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s) "
            "OR EXISTS (SELECT 1 FROM pg_database WHERE datname = %s)",
            [name, name],
        ).fetchone()
        return bool(row and row[0])

    def drop(self, project_id: str) -> None:
        """Drop the project's database (disconnecting its clients) and its role."""
        name = tenant_name(project_id)
        self._close_pools(lambda creds: creds.database == name)
        with self._admin() as conn:
            self._drop(conn, name)

    @staticmethod
    def _drop(conn: psycopg.Connection[Any], name: str) -> None:
        ident = sql.Identifier(name)
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))

    def close(self) -> None:
        """Close every pooled connection; connections in use close when they come back."""
        self._close_pools(lambda creds: True)

    # -- SQL endpoint ---------------------------------------------------------------------------

    def execute(self, creds: TenantCredentials, query: str) -> list[dict[str, Any]]:
        """Run the query as the tenant and return the last statement's rows or command tag.

        Several statements run as one implicit transaction (simple query protocol).
        """
        if not query.strip():
            raise SqlError('the query is empty: send SQL in "query", e.g. "SELECT 1"', "42601")
        if "\x00" in query:
            raise SqlError("the query contains a NUL character, which SQL text cannot", "22021")
        conn = self._checkout(creds)
        reusable = False
        try:
            outcome, cancelled, elapsed = self._run_watched(conn, query)
            reusable = not cancelled
            result = outcome.result
            if reusable and isinstance(result, _ResultSet) and not result.exceeded:
                self._load_extension_arrays(conn, creds, result)
        finally:
            self._checkin(creds, conn, reusable)
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
                with suppress(psycopg.Error), self._admin() as admin:
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
        with conn.lock:
            pgconn.send_query(data)
            # Rows stream in chunks so a huge result cannot fill our memory before the caps.
            if pq.version() >= 170000:
                pgconn.set_chunked_rows_mode(CHUNK_ROWS)
            else:
                pgconn.set_single_row_mode()
            conn.wait(generators.send(pgconn))
            while (res := self._next_result(conn, out)) is not None:
                status = res.status
                tag = (res.command_status or b"").decode(encoding) or tag
                if status in (pq.ExecStatus.TUPLES_CHUNK, pq.ExecStatus.SINGLE_TUPLE):
                    if current is None:
                        current = _ResultSet(res, tx, encoding, self.limits)
                    current.add(res)
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
                    out.error = out.error or _sql_error(res, encoding)
                    current = None
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
                adapters = AdaptersMap(_ADAPTERS)
                TypeInfo("element", int(element), int(oid), delimiter=str(delimiter)).register(
                    adapters
                )
                loader = Transformer(adapters).get_loader(int(oid), pq.Format.TEXT)
                scalar = _SCALAR_CONVERTERS.get(int(element))
                entry = (loader, _elements(scalar) if scalar else None)
            self._array_loaders[(database, int(oid))] = entry

    # -- pool -----------------------------------------------------------------------------------

    def _pool(self, creds: TenantCredentials) -> _Pool:
        with self._lock:
            pool = self._pools.get(creds)
            if pool is None:
                pool = self._pools[creds] = _Pool(limit=self.limits.connections_per_project)
            return pool

    def _checkout(self, creds: TenantCredentials) -> psycopg.Connection[Any]:
        self._prune_idle()
        pool = self._pool(creds)
        discard: list[psycopg.Connection[Any]] = []
        conn: psycopg.Connection[Any] | None = None
        deadline = time.monotonic() + POOL_WAIT
        with pool.cond:
            while True:
                while pool.idle and conn is None:
                    candidate, _since = pool.idle.pop()
                    if _reusable(candidate):
                        conn = candidate
                    else:
                        discard.append(candidate)
                if conn is not None or pool.busy < pool.limit:
                    pool.busy += 1
                    break
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise PoolExhaustedError(
                        f"all {pool.limit} connections of {creds.database} are busy; retry "
                        "shortly (the limit is the role's CONNECTION LIMIT)"
                    )
                pool.cond.wait(remaining)
        for stale in discard:
            stale.close()
        if conn is not None:
            return conn
        try:
            return self._connect(creds)
        except BaseException:
            with pool.cond:
                pool.busy -= 1
                pool.cond.notify()
            raise

    def _connect(self, creds: TenantCredentials) -> psycopg.Connection[Any]:
        try:
            conn = psycopg.Connection.connect(
                host=creds.host,
                port=creds.port,
                dbname=creds.database,
                user=creds.user,
                password=creds.password,
                autocommit=True,
                prepare_threshold=None,
                connect_timeout=10,
                application_name="mosaicsync sql endpoint",
                context=_ADAPTERS,
            )
        except psycopg.OperationalError as exc:
            if "too many connections" in str(exc):
                raise PoolExhaustedError(
                    f"{creds.database} has reached its connection limit "
                    f"({self.limits.connections_per_project}, counting psql connections); retry "
                    "shortly or close other connections"
                ) from exc
            raise TenantUnavailableError(
                f"cannot connect to the database {creds.database}: {str(exc).strip()}"
            ) from exc
        # With a handler registered psycopg keeps no backlog: a tenant's LISTEN plus a flood of
        # NOTIFY must not pile up in our memory.
        conn.add_notify_handler(_ignore_notify)
        return conn

    def _checkin(
        self, creds: TenantCredentials, conn: psycopg.Connection[Any], reusable: bool
    ) -> None:
        reusable = reusable and _reset(conn)
        pool = self._pool(creds)
        with pool.cond:
            pool.busy -= 1
            keep = reusable and not pool.closed and len(pool.idle) < MAX_IDLE
            if keep:
                pool.idle.append((conn, time.monotonic()))
            pool.cond.notify()
        if not keep:
            conn.close()

    def _prune_idle(self) -> None:
        """Close connections idle for a while, so quiet projects hold no server slots."""
        now = time.monotonic()
        if now - self._last_prune < IDLE_TTL / 4:
            return
        self._last_prune = now
        with self._lock:
            pools = list(self._pools.values())
        for pool in pools:
            with pool.cond:
                old = [c for c, since in pool.idle if now - since > IDLE_TTL]
                pool.idle = [(c, s) for c, s in pool.idle if now - s <= IDLE_TTL]
            for conn in old:
                conn.close()

    def _close_pools(self, match: Callable[[TenantCredentials], bool]) -> None:
        with self._lock:
            doomed = [creds for creds in self._pools if match(creds)]
            pools = [self._pools.pop(creds) for creds in doomed]
        for pool in pools:
            with pool.cond:
                pool.closed = True
                idle, pool.idle = pool.idle, []
                pool.cond.notify_all()
            for conn, _since in idle:
                conn.close()

    def _emit(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)


def _ignore_notify(_notify: psycopg.Notify) -> None:
    pass


def _sql_error(res: PGresult, encoding: str) -> SqlError:
    def field_text(code: pq.DiagnosticField) -> str | None:
        value = res.error_field(code)
        return value.decode(encoding, "replace") if value is not None else None

    fields = pq.DiagnosticField
    position = field_text(fields.STATEMENT_POSITION)
    message = field_text(fields.MESSAGE_PRIMARY)
    if message is None:
        message = res.error_message.decode(encoding, "replace").strip() or "query failed"
    return SqlError(
        message,
        code=field_text(fields.SQLSTATE),
        position=int(position) if position and position.isdigit() else None,
        detail=field_text(fields.MESSAGE_DETAIL),
        hint=field_text(fields.MESSAGE_HINT),
    )


def _brief(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary if exc.diag else None) or str(exc).strip()


def _size(n: int) -> str:
    if n >= 1024 * 1024:
        return f"{n / (1024 * 1024):g} MiB"
    if n >= 1024:
        return f"{n / 1024:g} KiB"
    return f"{n} bytes"
