"""Provisioning tenant databases: a login role and a database per project, and dropping them.

Each project gets a role and a database of the same name, cloned from a template that already
holds the Mosaic extensions. The platform itself connects as an admin role; tenant SQL never
does (see `sqlexec`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

TEMPLATE = "mosaic_template"
EXTENSIONS = ("vector", "uuid-ossp", "pgcrypto")
SHIM_MARKER = "mosaicsync shim"
TEMP_FILE_LIMIT = "1GB"
IDLE_IN_TRANSACTION_TIMEOUT = "10min"
_PROJECT_ID = re.compile(r"^[a-z0-9]+(?:[-_][a-z0-9]+)*$")


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


class TenantUnavailableError(psycopg.OperationalError):
    """The platform could not reach a tenant database: a server-side failure (5xx), not a 400."""


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


@contextmanager
def admin_connection(
    admin_dsn: str, dbname: str | None = None
) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection as the platform's admin role (to `dbname`, or the DSN's own)."""
    extra = {"dbname": dbname} if dbname else {}
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=10, **extra) as conn:
        yield conn


def _cleanup_connection(
    admin_dsn: str, dbname: str
) -> AbstractContextManager[psycopg.Connection[Any]]:
    """An admin connection into a tenant's database, immune to the defaults its owner set there
    (`ALTER DATABASE ... SET default_transaction_read_only = on`, a tiny lock_timeout...)."""
    return psycopg.connect(
        admin_dsn,
        autocommit=True,
        connect_timeout=10,
        dbname=dbname,
        options=(
            "-c default_transaction_read_only=off -c statement_timeout=0 -c lock_timeout=0 "
            "-c search_path=pg_catalog"
        ),
    )


class Tenants:
    """Creates and drops the projects' roles and databases on one PostgreSQL server."""

    def __init__(
        self,
        admin_dsn: str,
        host: str,
        port: int,
        *,
        connection_limit: int,
        statement_timeout: float,
        shim_dir: Path | None = None,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.admin_dsn = admin_dsn
        self.host = host
        self.port = port
        self.connection_limit = connection_limit
        self.statement_timeout = statement_timeout
        self.shim_dir = shim_dir
        self.on_event = on_event

    def _admin(self, dbname: str | None = None) -> AbstractContextManager[psycopg.Connection[Any]]:
        return admin_connection(self.admin_dsn, dbname)

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
                    sql.Literal(self.connection_limit),
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
                timeout_ms = max(1, round(self.statement_timeout * 1000))
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
        """Drop the project's database (disconnecting its clients) and its role.

        Whatever the tenant did to them: what it may change on its own database is taken back
        first, and what other tenants granted to its role is revoked. Safe to repeat: a drop
        stopped half-way completes on the next call.
        """
        with self._admin() as conn:
            self._drop(conn, tenant_name(project_id), self.admin_dsn)

    @staticmethod
    def _drop(conn: psycopg.Connection[Any], name: str, admin_dsn: str | None = None) -> None:
        ident = sql.Identifier(name)
        role = conn.execute("SELECT oid FROM pg_roles WHERE rolname = %s", [name]).fetchone()
        superuser = conn.execute(
            "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
        ).fetchone()[0]  # type: ignore[index]
        if role is not None and not superuser:
            # The tenant may have revoked our membership in its role (PG < 16 lets a role
            # administer itself); CREATEROLE takes it back, as the owner's rights need it.
            with suppress(psycopg.Error):
                conn.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(ident))
        database = conn.execute(
            "SELECT datistemplate OR NOT datallowconn OR datconnlimit NOT IN (-1, -2) "
            "FROM pg_database WHERE datname = %s",
            [name],
        ).fetchone()
        if database is not None:
            if database[0]:
                # The owner may mark its database a template (which cannot be dropped) or close
                # it to connections (which would hide its prepared transactions from us).
                conn.execute(
                    sql.SQL(
                        "ALTER DATABASE {} IS_TEMPLATE false ALLOW_CONNECTIONS true "
                        "CONNECTION LIMIT -1"
                    ).format(ident)
                )
            prepared = conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = %s", [name]
            ).fetchall()
            if prepared and admin_dsn is not None:
                # A prepared transaction survives FORCE and blocks the drop; it can only be
                # rolled back from inside its own database.
                with _cleanup_connection(admin_dsn, name) as inside:
                    for (gid,) in prepared:
                        inside.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))
        if role is None:
            return
        if admin_dsn is not None:
            # Other tenants may have granted this role privileges on their objects (or had it
            # own some): each of those blocks DROP ROLE until revoked in that database.
            elsewhere = conn.execute(
                "SELECT d.datname, pg_get_userbyid(d.datdba), d.datallowconn "
                "FROM pg_database d WHERE d.oid IN "
                "(SELECT dbid FROM pg_shdepend WHERE refclassid = 'pg_authid'::regclass "
                "AND refobjid = %s) AND d.datname <> current_database()",
                [role[0]],
            ).fetchall()
            for dbname, owner, allowed in elsewhere:
                if not allowed:
                    conn.execute(
                        sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS true").format(
                            sql.Identifier(dbname)
                        )
                    )
                with _cleanup_connection(admin_dsn, dbname) as other:
                    # What the role owns there goes to that database's owner, not away.
                    other.execute(
                        sql.SQL("REASSIGN OWNED BY {} TO {}").format(ident, sql.Identifier(owner))
                    )
                    other.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        # Here, privileges on shared objects (another tenant's database) and on this database.
        conn.execute(sql.SQL("DROP OWNED BY {}").format(ident))
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(ident))

    def _emit(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)


def _brief(exc: psycopg.Error) -> str:
    return (exc.diag.message_primary if exc.diag else None) or str(exc).strip()
