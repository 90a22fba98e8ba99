"""Tenant databases and the SQL endpoint logic, against a real embedded PostgreSQL."""

from __future__ import annotations

import hashlib
import hmac
import itertools
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mosaicsync.local.pg import sqlexec
from mosaicsync.local.pg.cluster import Cluster
from mosaicsync.local.pg.databases import Databases
from mosaicsync.local.pg.pool import PoolExhaustedError
from mosaicsync.local.pg.sqlexec import SqlError, SqlLimitError, SqlLimits
from mosaicsync.local.pg.tenants import (
    TenantCredentials,
    TenantExistsError,
    TenantUnavailableError,
    tenant_name,
)

DEBIAN_BIN = Path("/usr/lib/postgresql/15/bin")
_ids = itertools.count(1)


def _postgres_running_on(pgdata: Path) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"postgres") and str(pgdata).encode() in args:
                return True
    return False


def _stop_and_check(cluster: Cluster) -> None:
    cluster.stop()
    deadline = time.monotonic() + 10
    while _postgres_running_on(cluster.pgdata):
        assert time.monotonic() < deadline, "PostgreSQL outlived the test cluster"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """One embedded cluster for this whole file (stopped when it ends), reachable by its uid."""
    root = Path(tempfile.mkdtemp(prefix="mosaicsync-db-test-"))
    os.chmod(root, 0o755)
    server = Cluster(root / "data", fast=True)
    server.start()
    yield server
    _stop_and_check(server)
    shutil.rmtree(root, ignore_errors=True)


def _databases(cluster: Cluster, limits: SqlLimits) -> Databases:
    dbs = Databases(cluster.admin_dsn, cluster.host, cluster.port, limits, cluster.shim_dir)
    dbs.prepare()
    return dbs


@pytest.fixture(scope="module")
def databases(cluster: Cluster) -> Iterator[Databases]:
    dbs = _databases(cluster, SqlLimits())
    yield dbs
    dbs.close()


def _new_project(dbs: Databases) -> tuple[str, TenantCredentials]:
    project_id = f"test-{next(_ids)}{os.urandom(2).hex()}"
    return project_id, dbs.provision(project_id)


@pytest.fixture
def project(databases: Databases) -> Iterator[TenantCredentials]:
    project_id, creds = _new_project(databases)
    yield creds
    databases.drop(project_id)


def admin(cluster: Cluster, sql: str) -> list[tuple]:
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


# -- provisioning ---------------------------------------------------------------------------


def test_names_follow_the_documented_shape() -> None:
    assert tenant_name("pod-16f") == "tenant_pod_16f"
    assert tenant_name("Wave-X7K") == "tenant_wave_x7k"
    for bad in ("", "a b", "x;drop", "-x", "a" * 57):
        with pytest.raises(ValueError):
            tenant_name(bad)


def test_prepare_reports_extensions_and_is_idempotent(
    cluster: Cluster, databases: Databases
) -> None:
    info = databases.prepare()
    assert info.version == cluster.version
    assert info.extensions["vector"].startswith("real 0.")
    assert info.extensions["uuid-ossp"] == "shim 1.1"
    assert info.extensions["pgcrypto"] == "shim 1.3"
    # Nothing but the admin reaches the shared databases.
    for name in ("postgres", "template1", "mosaic_template"):
        assert admin(cluster, f"SELECT has_database_privilege('public', '{name}', 'CONNECT')") == [
            (False,)
        ]


def test_provision_gives_working_credentials(
    cluster: Cluster, databases: Databases, project: TenantCredentials
) -> None:
    assert project.database == project.user
    assert project.url == (
        f"postgresql://{project.user}:{project.password}@127.0.0.1:{cluster.port}/"
        f"{project.database}"
    )
    assert databases.exists(project.database.removeprefix("tenant_").replace("_", "-"))
    rows = databases.execute(
        project,
        "SELECT current_user AS who, current_setting('TimeZone') AS tz, "
        "current_setting('DateStyle') AS ds, current_setting('statement_timeout') AS st, "
        "current_setting('temp_file_limit') AS tfl",
    )
    assert rows == [{"who": project.user, "tz": "UTC", "ds": "ISO, MDY", "st": "30s", "tfl": "1GB"}]
    role = admin(
        cluster,
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolconnlimit FROM pg_roles "
        f"WHERE rolname = '{project.user}'",
    )
    assert role == [(False, False, False, 5)]
    secret = admin(cluster, f"SELECT rolpassword FROM pg_authid WHERE rolname = '{project.user}'")
    assert secret[0][0].startswith("SCRAM-SHA-256$4096:")  # no cleartext ever sent
    with pytest.raises(TenantExistsError):
        databases.provision(project.database.removeprefix("tenant_").replace("_", "-"))


def test_psql_accepts_the_url(project: TenantCredentials) -> None:
    psql = shutil.which("psql") or "/usr/bin/psql"
    if not Path(psql).exists():
        pytest.skip("psql is not installed")
    done = subprocess.run(
        [psql, project.url, "-Atc", "SELECT current_user"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == project.user


def test_drop_removes_everything(cluster: Cluster, databases: Databases) -> None:
    project_id, creds = _new_project(databases)
    databases.execute(creds, "CREATE TABLE t (x int)")
    databases.drop(project_id)
    assert not databases.exists(project_id)
    with pytest.raises(TenantUnavailableError) as info:
        databases.execute(creds, "SELECT 1")
    assert not isinstance(info.value, SqlError)  # a 5xx for the server, not the tenant's 400
    databases.drop(project_id)  # idempotent


# -- results --------------------------------------------------------------------------------


def test_ddl_and_dml_answer_their_command_tag(
    databases: Databases, project: TenantCredentials
) -> None:
    run = databases.execute
    assert run(project, "CREATE TABLE todos (id serial PRIMARY KEY, title text NOT NULL)") == [
        {"result": "CREATE TABLE"}
    ]
    assert run(project, "INSERT INTO todos (title) VALUES ('a'), ('b')") == [
        {"result": "INSERT 0 2"}
    ]
    assert run(project, "SELECT id, title FROM todos ORDER BY id") == [
        {"id": 1, "title": "a"},
        {"id": 2, "title": "b"},
    ]
    assert run(project, "SELECT * FROM todos WHERE false") == []
    assert run(project, "UPDATE todos SET title = 'c' WHERE id = 2 RETURNING title") == [
        {"title": "c"}
    ]
    assert run(project, "DELETE FROM todos") == [{"result": "DELETE 2"}]


def test_every_type_maps_to_json_as_documented(
    databases: Databases, project: TenantCredentials
) -> None:
    databases.execute(
        project,
        """
        CREATE TYPE mood AS ENUM ('ok', 'sad');
        CREATE TABLE everything (
            b bool, i2 int2, i4 int4, o oid, small int8, big int8, neg int8,
            f4 float4, f8 float8, nan float8, inf float8, ninf float8,
            n numeric, nbig numeric, nnan numeric, m money,
            d date, t time, ttz timetz, ts timestamp, tstz timestamptz, iv interval,
            u uuid, ip inet, net cidr, mac macaddr, e mood, txt text, vc varchar(5), ch char(3),
            by bytea, j json, jb jsonb,
            ia int4[], a8 int8[], a2d int4[], an numeric[], ats timestamptz[], au uuid[],
            atx text[], af float8[], ab bool[], aj jsonb[], ae mood[],
            v vector(3), r int4range, pt point, nul int4
        );
        INSERT INTO everything VALUES (
            true, 32767, -2147483648, 4294967295, 9007199254740991, 9007199254740993,
            -9223372036854775808,
            1.5, 0.1, 'NaN', 'Infinity', '-Infinity',
            1.50, 12345678901234567890.123456789000, 'NaN', 1.5,
            '2024-02-29', '13:45:01.5', '13:45:01+02', '2024-02-29 13:45:01.123456',
            '2024-02-29 13:45:01+02', '1 year 2 mons 3 days 04:05:06',
            'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11', '192.168.0.1/24', '10.0.0.0/8',
            '08:00:2b:01:02:03', 'sad', 'héllo "q"', 'abc', 'ab',
            '\\x0102ff', '{"b": [1, 2.5, null], "a": "x"}', '{"a": 1, "z": [true]}',
            '{1,2,NULL}', '{1,9007199254740993}', '{{1,2},{3,4}}', '{1.50,2}',
            '{"2024-02-29 13:45:01+02"}', '{a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11}',
            '{"a,b","c\\"d",NULL}', '{NaN,1.5,-Infinity}', '{t,f}', ARRAY['{"k": 2}'::jsonb],
            '{ok,sad}', '[1,2,3]', '[1,3)', '(1,2)', NULL
        )
        """,
    )
    rows = databases.execute(project, "SELECT * FROM everything")
    assert rows == [
        {
            "b": True,
            "i2": 32767,
            "i4": -2147483648,
            "o": 4294967295,
            "small": 9007199254740991,
            "big": "9007199254740993",
            "neg": "-9223372036854775808",
            "f4": 1.5,
            "f8": 0.1,
            "nan": "NaN",
            "inf": "Infinity",
            "ninf": "-Infinity",
            "n": "1.50",
            "nbig": "12345678901234567890.123456789000",
            "nnan": "NaN",
            "m": "$1.50",
            "d": "2024-02-29",
            "t": "13:45:01.5",
            "ttz": "13:45:01+02",
            "ts": "2024-02-29 13:45:01.123456",
            "tstz": "2024-02-29 11:45:01+00",
            "iv": "1 year 2 mons 3 days 04:05:06",
            "u": "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11",
            "ip": "192.168.0.1/24",
            "net": "10.0.0.0/8",
            "mac": "08:00:2b:01:02:03",
            "e": "sad",
            "txt": 'héllo "q"',
            "vc": "abc",
            "ch": "ab ",
            "by": "\\x0102ff",
            "j": {"b": [1, 2.5, None], "a": "x"},
            "jb": {"a": 1, "z": [True]},
            "ia": [1, 2, None],
            "a8": [1, "9007199254740993"],
            "a2d": [[1, 2], [3, 4]],
            "an": ["1.50", "2"],
            "ats": ["2024-02-29 11:45:01+00"],
            "au": ["a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"],
            "atx": ["a,b", 'c"d', None],
            "af": ["NaN", 1.5, "-Infinity"],
            "ab": [True, False],
            "aj": [{"k": 2}],
            "ae": ["ok", "sad"],
            "v": "[1,2,3]",
            "r": "[1,3)",
            "pt": "(1,2)",
            "nul": None,
        }
    ]
    json.dumps(rows, allow_nan=False)  # what the HTTP layer sends must be strict JSON


def test_several_statements_answer_the_last_result(
    databases: Databases, project: TenantCredentials
) -> None:
    run = databases.execute
    assert run(
        project, "CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2); SELECT x FROM t"
    ) == [
        {"x": 1},
        {"x": 2},
    ]
    assert run(project, "SELECT x FROM t; INSERT INTO t VALUES (3)") == [{"result": "INSERT 0 1"}]
    assert run(project, "SELECT 1 AS one; SELECT x FROM t WHERE x > 10") == []  # even empty
    assert run(project, "SELECT 1; ;") == [{"?column?": 1}]


def test_results_larger_than_a_chunk_arrive_whole(
    databases: Databases, project: TenantCredentials
) -> None:
    rows = databases.execute(project, "SELECT g FROM generate_series(1, 2500) AS g")
    assert [r["g"] for r in rows] == list(range(1, 2501))


def test_an_error_rolls_back_the_implicit_transaction(
    databases: Databases, project: TenantCredentials
) -> None:
    run = databases.execute
    run(project, "CREATE TABLE t (x int)")
    with pytest.raises(SqlError) as info:
        run(project, "INSERT INTO t VALUES (1); SELECT 1/0")
    assert (info.value.code, info.value.message) == ("22012", "division by zero")
    assert run(project, "SELECT count(*) AS n FROM t") == [{"n": 0}]
    # An explicit COMMIT inside the query is a real commit, as with psql -c.
    with pytest.raises(SqlError):
        run(project, "BEGIN; INSERT INTO t VALUES (2); COMMIT; SELECT 1/0")
    assert run(project, "SELECT x FROM t") == [{"x": 2}]


def test_errors_carry_code_position_detail_and_hint(
    databases: Databases, project: TenantCredentials
) -> None:
    with pytest.raises(SqlError) as info:
        databases.execute(project, "select 1;\nselect * fromm t")
    err = info.value
    assert (err.code, err.position) == ("42601", 20)
    assert err.message == 'syntax error at or near "fromm"'
    databases.execute(project, "CREATE TABLE u (id int PRIMARY KEY); INSERT INTO u VALUES (1)")
    with pytest.raises(SqlError) as info:
        databases.execute(project, "INSERT INTO u VALUES (1)")
    assert info.value.code == "23505"
    assert info.value.detail == "Key (id)=(1) already exists."
    with pytest.raises(SqlError) as info:
        databases.execute(project, "SELECT lenght('x')")
    assert info.value.code == "42883" and info.value.hint and info.value.position == 8


@pytest.mark.parametrize("query", ["", "   ", "-- only a comment", ";"])
def test_empty_queries_are_rejected(
    databases: Databases, project: TenantCredentials, query: str
) -> None:
    with pytest.raises(SqlError, match="empty"):
        databases.execute(project, query)


def test_copy_is_refused_and_the_connection_recovers(
    databases: Databases, project: TenantCredentials
) -> None:
    with pytest.raises(SqlError) as info:
        databases.execute(project, "COPY (SELECT 1) TO STDOUT")
    assert info.value.code == "0A000"
    assert databases.execute(project, "SELECT 2 AS two") == [{"two": 2}]


def test_connection_state_does_not_leak_between_requests(
    databases: Databases, project: TenantCredentials
) -> None:
    run = databases.execute
    run(project, "CREATE TABLE t (x int)")
    pid = run(project, "SELECT pg_backend_pid() AS pid")[0]["pid"]
    run(
        project,
        "SET TimeZone = 'Asia/Tokyo'; SET statement_timeout = 0; CREATE TEMP TABLE scratch (x int);"
        " PREPARE p AS SELECT 1; SELECT pg_advisory_lock(7)",
    )
    run(project, "BEGIN; INSERT INTO t VALUES (1)")  # never committed
    assert run(project, "SELECT pg_backend_pid() AS pid")[0]["pid"] == pid  # same connection
    assert run(project, "SHOW TimeZone") == [{"TimeZone": "UTC"}]
    assert run(project, "SHOW statement_timeout") == [{"statement_timeout": "30s"}]
    assert run(project, "SELECT count(*) AS n FROM t") == [{"n": 0}]
    assert run(project, "SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'") == [
        {"n": 0}
    ]
    for query in ("SELECT * FROM scratch", "EXECUTE p"):
        with pytest.raises(SqlError):
            run(project, query)


def test_a_terminated_backend_is_replaced(databases: Databases, project: TenantCredentials) -> None:
    with pytest.raises(SqlError) as info:
        databases.execute(project, "SELECT pg_terminate_backend(pg_backend_pid())")
    assert info.value.code == "57P01"
    assert databases.execute(project, "SELECT 1 AS x") == [{"x": 1}]


# -- isolation ------------------------------------------------------------------------------


def test_tenants_are_isolated(
    cluster: Cluster, databases: Databases, project: TenantCredentials
) -> None:
    other_id, other = _new_project(databases)
    try:
        for dbname in (other.database, "postgres", "template1", "mosaic_template"):
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(
                    host=project.host,
                    port=project.port,
                    user=project.user,
                    password=project.password,
                    dbname=dbname,
                    connect_timeout=5,
                ).close()
            # Behind pg_hba.conf, the grants are a second wall.
            assert admin(
                cluster, f"SELECT has_database_privilege('{project.user}', '{dbname}', 'CONNECT')"
            ) == [(False,)]
        denied = [
            "SELECT * FROM pg_authid",
            "COPY (SELECT 1) TO PROGRAM 'id'",
            "COPY (SELECT 1) TO '/tmp/mosaicsync-escape'",
            "SELECT pg_read_file('/etc/passwd')",
            f"SET ROLE {other.user}",
            f"ALTER ROLE {project.user} SUPERUSER",
            f"ALTER ROLE {project.user} CONNECTION LIMIT -1",
            "CREATE ROLE intruder",
            "CREATE DATABASE intruder",
            "SET temp_file_limit = -1",
            "CREATE EXTENSION dblink",
        ]
        for query in denied:
            with pytest.raises(SqlError) as info:
                databases.execute(project, query)
            assert info.value.code == "42501", query
        rows = databases.execute(
            project,
            "RESET ROLE; SELECT current_user AS who, "
            "(SELECT rolsuper FROM pg_roles WHERE rolname = current_user) AS super",
        )
        assert rows == [{"who": project.user, "super": False}]
    finally:
        databases.drop(other_id)


# -- limits ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def strict(cluster: Cluster) -> Iterator[Databases]:
    dbs = _databases(
        cluster,
        SqlLimits(
            statement_timeout=1.0, max_rows=5, max_result_bytes=2000, connections_per_project=2
        ),
    )
    yield dbs
    dbs.close()


@pytest.fixture
def strict_project(strict: Databases) -> Iterator[TenantCredentials]:
    project_id, creds = _new_project(strict)
    yield creds
    strict.drop(project_id)


def test_watchdog_stops_a_query_that_lifted_its_timeout(
    strict: Databases, strict_project: TenantCredentials
) -> None:
    started = time.monotonic()
    with pytest.raises(SqlLimitError) as info:
        strict.execute(strict_project, "SET statement_timeout = 0; SELECT pg_sleep(10)")
    elapsed = time.monotonic() - started
    assert 0.9 < elapsed < 2.5
    assert info.value.code == "57014"
    assert "1s" in info.value.message and "--statement-timeout" in info.value.message
    assert strict.execute(strict_project, "SELECT 1 AS ok") == [{"ok": 1}]


def test_role_timeout_is_a_limit_error_too(
    strict: Databases, strict_project: TenantCredentials
) -> None:
    with pytest.raises(SqlLimitError) as info:
        strict.execute(strict_project, "SELECT pg_sleep(3)")
    assert info.value.code == "57014"
    # A timeout the tenant chose is its own error, not the platform's cap.
    with pytest.raises(SqlError) as own:
        strict.execute(strict_project, "SET statement_timeout = '50ms'; SELECT pg_sleep(0.5)")
    assert not isinstance(own.value, SqlLimitError) and own.value.code == "57014"


def test_row_cap(strict: Databases, strict_project: TenantCredentials) -> None:
    run = strict.execute
    assert len(run(strict_project, "SELECT generate_series(1, 5)")) == 5
    with pytest.raises(SqlLimitError) as info:
        run(strict_project, "SELECT generate_series(1, 6)")
    assert info.value.code == "54000"
    assert "5-row" in info.value.message and "--max-rows" in info.value.message
    # The statements ran anyway: only the result is withheld.
    with pytest.raises(SqlLimitError):
        run(
            strict_project,
            "CREATE TABLE t AS SELECT 1 AS x; "
            "INSERT INTO t SELECT generate_series(1, 9) RETURNING x",
        )
    assert run(strict_project, "SELECT count(*) AS n FROM t") == [{"n": 10}]
    with pytest.raises(SqlLimitError, match="has 100000 rows"):
        run(strict_project, "SELECT generate_series(1, 100000)")


def test_byte_cap_counts_the_json_sent(
    cluster: Cluster, databases: Databases, project: TenantCredentials
) -> None:
    query = "SELECT repeat('é', 300) AS s, 1.50::numeric AS n FROM generate_series(1, 3)"
    rows = databases.execute(project, query)
    size = len(json.dumps(rows, ensure_ascii=False, separators=(",", ":")).encode())
    exact = _databases(cluster, SqlLimits(max_result_bytes=size))
    try:
        assert exact.execute(project, query) == rows
    finally:
        exact.close()
    tight = _databases(cluster, SqlLimits(max_result_bytes=size - 1))
    try:
        with pytest.raises(SqlLimitError) as info:
            tight.execute(project, query)
        assert info.value.code == "54000" and "--max-result-bytes" in info.value.message
    finally:
        tight.close()


def test_byte_cap_refuses_text_past_twice_the_cap_before_decoding(
    strict: Databases, strict_project: TenantCredentials
) -> None:
    # json keeps its whitespace; its compact JSON is what counts, up to twice the cap as text.
    padded = "SELECT ('[' || repeat(' ', {}) || '1]')::json AS j"
    assert strict.execute(strict_project, padded.format(3000)) == [{"j": [1]}]
    with pytest.raises(SqlLimitError) as info:
        strict.execute(strict_project, padded.format(4000))
    assert info.value.code == "54000" and "--max-result-bytes" in info.value.message
    assert strict.execute(strict_project, "SELECT 1 AS ok") == [{"ok": 1}]


@pytest.mark.parametrize("direct", [True, False], ids=["libpq", "copies"])
def test_error_text_is_cut_with_a_note(
    monkeypatch: pytest.MonkeyPatch,
    strict: Databases,
    strict_project: TenantCredentials,
    direct: bool,
) -> None:
    if not direct:  # no libpq of our own to call: the same result from psycopg's copies
        monkeypatch.setattr(sqlexec, "_libpq", lambda: None)
    with pytest.raises(SqlError) as info:
        strict.execute(strict_project, "SELECT repeat('é', 5000)::int")
    assert info.value.code == "22P02"
    cut = info.value.message.split("… [cut: ")
    assert cut[0] == 'invalid input syntax for type integer: "' + "é" * 4056
    assert cut[1] == "10,041 bytes in all; the first 4,096 characters are shown]"
    with pytest.raises(SqlError) as whole:
        strict.execute(strict_project, "SELECT repeat('é', 4055)::int")
    assert whole.value.message == 'invalid input syntax for type integer: "' + "é" * 4055 + '"'
    with pytest.raises(SqlLimitError):
        strict.execute(strict_project, "SELECT repeat('x', 5000)")
    assert strict.execute(strict_project, "SELECT 1 AS ok") == [{"ok": 1}]


def test_busy_project_is_a_server_side_error(
    monkeypatch: pytest.MonkeyPatch, strict: Databases, strict_project: TenantCredentials
) -> None:
    monkeypatch.setattr(strict.pool, "wait", 0.2)  # --connection-wait
    # Two psql connections use up the role's CONNECTION LIMIT of 2.
    held = [
        psycopg.connect(
            host=strict_project.host,
            port=strict_project.port,
            user=strict_project.user,
            password=strict_project.password,
            dbname=strict_project.database,
        )
        for _ in range(2)
    ]
    try:
        with pytest.raises(PoolExhaustedError) as info:
            strict.execute(strict_project, "SELECT 1")
        assert isinstance(info.value, psycopg.OperationalError)
        assert not isinstance(info.value, SqlError)
    finally:
        for conn in held:
            conn.close()
    # The pool itself: both slots busy in other requests.
    done = threading.Barrier(3)
    errors: list[BaseException] = []

    def sleeper() -> None:
        try:
            strict.execute(strict_project, "SELECT pg_sleep(0.6)")
        except BaseException as exc:
            errors.append(exc)
        finally:
            done.wait()

    threads = [threading.Thread(target=sleeper) for _ in range(2)]
    for thread in threads:
        thread.start()
    time.sleep(0.2)
    with pytest.raises(PoolExhaustedError, match="busy"):
        strict.execute(strict_project, "SELECT 1")
    done.wait()
    for thread in threads:
        thread.join()
    assert errors == []
    assert strict.execute(strict_project, "SELECT 1 AS x") == [{"x": 1}]


# -- extension shims ------------------------------------------------------------------------


def test_uuid_ossp_shim_matches_python(databases: Databases, project: TenantCredentials) -> None:
    names = ["www.example.com", "", "héllo wörld ✓", "x" * 500]
    for ns_func, namespace in [
        ("uuid_ns_dns()", uuid.NAMESPACE_DNS),
        ("uuid_ns_url()", uuid.NAMESPACE_URL),
        ("uuid_ns_oid()", uuid.NAMESPACE_OID),
        ("uuid_ns_x500()", uuid.NAMESPACE_X500),
    ]:
        for name in names:
            literal = name.replace("'", "''")
            rows = databases.execute(
                project, f"SELECT uuid_generate_v3({ns_func}, '{literal}') AS u"
            )
            assert rows == [{"u": str(uuid.uuid3(namespace, name))}]
    rows = databases.execute(project, "SELECT uuid_nil() AS nil, uuid_generate_v4() AS v4")
    assert rows[0]["nil"] == str(uuid.UUID(int=0))
    assert uuid.UUID(rows[0]["v4"]).version == 4


def test_pgcrypto_shim_matches_python(databases: Databases, project: TenantCredentials) -> None:
    for algo in ("md5", "sha224", "sha256", "sha384", "sha512"):
        row = databases.execute(
            project,
            f"SELECT digest('héllo', '{algo}') AS t, "
            f"digest('\\x00ff'::bytea, upper('{algo}')) AS b",
        )[0]
        assert row["t"] == "\\x" + hashlib.new(algo, "héllo".encode()).hexdigest()
        assert row["b"] == "\\x" + hashlib.new(algo, b"\x00\xff").hexdigest()
        for key in (b"k", b"\x01" * 64, b"\x02" * 129, bytes(range(200))):
            row = databases.execute(
                project,
                f"SELECT hmac('\\x{b'data'.hex()}'::bytea, '\\x{key.hex()}'::bytea, '{algo}') AS h",
            )[0]
            assert row["h"] == "\\x" + hmac.new(key, b"data", algo).hexdigest(), (algo, len(key))
        row = databases.execute(project, f"SELECT hmac('msg ✓', 'clé', '{algo}') AS h")[0]
        assert row["h"] == "\\x" + hmac.new("clé".encode(), "msg ✓".encode(), algo).hexdigest()
    row = databases.execute(
        project,
        "SELECT length(gen_random_bytes(1024)) AS n, gen_random_bytes(16) <> gen_random_bytes(16) "
        "AS differ, gen_random_uuid() AS u",
    )[0]
    assert row["n"] == 1024 and row["differ"] is True and uuid.UUID(row["u"]).version == 4
    with pytest.raises(SqlError, match="No such hash algorithm"):
        databases.execute(project, "SELECT digest('x', 'whirlpool')")


@pytest.mark.parametrize(
    "call",
    [
        "uuid_generate_v1()",
        "uuid_generate_v1mc()",
        "uuid_generate_v5(uuid_ns_dns(), 'x')",
        "crypt('pw', gen_salt('bf'))",
        "crypt('pw', '$2a$06$abcdefghijklmnopqrstuu')",
        "pgp_sym_encrypt('data', 'key')",
        "pgp_sym_decrypt('\\x00'::bytea, 'key')",
        "encrypt('data', 'key', 'aes')",
        "decrypt('data', 'key', 'aes')",
        "digest('x', 'sha1')",
    ],
)
def test_unsupported_shim_functions_say_how_to_get_them(
    databases: Databases, project: TenantCredentials, call: str
) -> None:
    with pytest.raises(SqlError) as info:
        databases.execute(project, f"SELECT {call}")
    assert info.value.code == "0A000"
    assert "mosaicsync local --database-url" in info.value.message
    assert "--pg-bin" in info.value.message


# -- another PostgreSQL installation --------------------------------------------------------


@pytest.mark.skipif(not DEBIAN_BIN.is_dir(), reason=f"{DEBIAN_BIN} is not installed")
def test_debian_binaries_have_real_contrib_and_no_vector() -> None:
    root = Path(tempfile.mkdtemp(prefix="mosaicsync-db-test-"))
    os.chmod(root, 0o755)
    server = Cluster(root / "data", bin_dir=DEBIAN_BIN, fast=True)
    try:
        server.start()
        assert server.version.startswith("15.")
        assert server.shim_dir is None
        dbs = _databases(server, SqlLimits())
        try:
            info = dbs.prepare()
            assert info.version.startswith("15.")
            assert info.extensions == {
                "vector": "missing",
                "uuid-ossp": "real 1.1",
                "pgcrypto": "real 1.3",
            }
            creds = dbs.provision("pod-16f")
            assert dbs.execute(
                creds, "CREATE TABLE todos (id uuid DEFAULT uuid_generate_v4())"
            ) == [{"result": "CREATE TABLE"}]
            row = dbs.execute(
                creds,
                "SELECT uuid_generate_v5(uuid_ns_dns(), 'x') AS v5, "
                "crypt('pw', '$1$saltsalt') = crypt('pw', '$1$saltsalt') AS same, "
                "9007199254740993::int8 AS big, 1.50::numeric AS n, '{1.5}'::numeric[] AS a",
            )
            assert row == [
                {
                    "v5": str(uuid.uuid5(uuid.NAMESPACE_DNS, "x")),
                    "same": True,
                    "big": "9007199254740993",
                    "n": "1.50",
                    "a": ["1.5"],
                }
            ]
            with pytest.raises(SqlError) as denied:
                dbs.execute(creds, "SELECT * FROM pg_authid")
            assert denied.value.code == "42501"
            dbs.drop("pod-16f")
        finally:
            dbs.close()
    finally:
        _stop_and_check(server)
        shutil.rmtree(root, ignore_errors=True)
