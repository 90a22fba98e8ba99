"""The local platform's lifecycle: data dir, PostgreSQL, state, the HTTP server, clean shutdown."""

from __future__ import annotations

import errno
import os
import secrets
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psycopg
import uvicorn

from mosaicsync import __version__
from mosaicsync.contract import API_PREFIX
from mosaicsync.local import fidelity
from mosaicsync.local.accounts import Accounts, AccountSlots, NewKey, RateLimiter
from mosaicsync.local.app import build_app
from mosaicsync.local.clock import Clock
from mosaicsync.local.outbox import Outbox
from mosaicsync.local.pg.cluster import Cluster, PostgresError
from mosaicsync.local.pg.databases import Databases
from mosaicsync.local.pg.sqlexec import SqlLimits
from mosaicsync.local.platform import Platform
from mosaicsync.local.projects import Projects
from mosaicsync.local.reload import ReloadHub
from mosaicsync.local.settings import LocalSettings
from mosaicsync.local.sites import SiteStore
from mosaicsync.local.state import State
from mosaicsync.local.storage import ObjectStore


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


class _Server(uvicorn.Server):
    """uvicorn that first ends the live-reload streams, which would otherwise hold shutdown."""

    def __init__(self, config: uvicorn.Config, hub: ReloadHub | None) -> None:
        super().__init__(config)
        self.hub = hub

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self.hub is not None:
            self.hub.close()
        await super().shutdown(sockets)


class StartupError(Exception):
    """The platform cannot start; the message says why and what to do."""


@dataclass(frozen=True)
class Started:
    """What `mosaicsync local` shows once it listens."""

    base_url: str
    api_url: str
    port: int
    data_dir: Path
    database: str
    new_key: NewKey | None
    operator_token: str


def default_data_dir() -> Path:
    """The user's data dir (XDG), e.g. ~/.local/share/mosaicsync/local."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "mosaicsync" / "local"


def bind_socket(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise StartupError(
                f"port {port} on {host} is already in use: stop the other server or pass "
                "--port 0 to pick a free port"
            ) from None
        raise StartupError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    sock.listen(1024)
    sock.set_inheritable(False)
    return sock


class LocalPlatform:
    """Start with `start()`, then `serve()` blocks until SIGINT/SIGTERM; `close()` always runs."""

    def __init__(self, settings: LocalSettings, on_event: Callable[[str], None]) -> None:
        self.settings = settings
        self.on_event = on_event
        self.cluster: Cluster | None = None
        self.state: State | None = None
        self.databases: Databases | None = None
        self.projects: Projects | None = None
        self.sock: socket.socket | None = None
        self.app = None
        self.reload: ReloadHub | None = None

    def start(self) -> Started:
        s = self.settings
        data = s.data_dir
        data.mkdir(parents=True, exist_ok=True)
        # Private to its user. As root, PostgreSQL runs as `nobody` and must be able to pass
        # through to its own directory: execute-only for others, still no listing. Files that
        # hold secrets are 0600 on their own.
        os.chmod(data, 0o711 if os.geteuid() == 0 else 0o700)
        self.sock = bind_socket(s.host, s.port)
        port = self.sock.getsockname()[1]
        public_host = "127.0.0.1" if s.host in ("0.0.0.0", "") else s.host
        base_url = f"http://{public_host}:{port}"

        self.state = State(data / "state.sqlite3")
        clock = Clock()
        accounts = Accounts(self.state, clock, s.key_ttl_days)
        for key in s.api_keys:
            try:
                accounts.register_fixed_key(key)
            except ValueError as exc:
                raise StartupError(f"--api-key: {exc}") from None
        new_key = accounts.ensure_generated_key(data)

        limits = SqlLimits(
            statement_timeout=s.statement_timeout,
            max_rows=s.max_rows,
            max_result_bytes=s.max_result_bytes,
            connections_per_account=s.connections_per_account,
            connection_wait=s.connection_wait,
        )
        try:
            if s.database_url:
                self.databases, db_host, db_port, mode = self._external(s.database_url, limits)
            else:
                self.cluster = Cluster(
                    data_dir=data, bin_dir=s.pg_bin, on_event=self.on_event, fast=s.fast_db
                )
                if s.reset_db:
                    self.cluster.reset()
                self.cluster.start()
                db_host, db_port = self.cluster.host, self.cluster.port
                self.databases = Databases(
                    self.cluster.admin_dsn,
                    db_host,
                    db_port,
                    limits,
                    shim_dir=self.cluster.shim_dir,
                    on_event=self.on_event,
                )
                mode = f"--pg-bin {s.pg_bin}" if s.pg_bin else "embedded"
            server_info = self.databases.prepare()
        except PostgresError as exc:
            raise StartupError(str(exc)) from None

        signing_key = bytes.fromhex(
            self.state.setting("presign_key", lambda: secrets.token_hex(32))
        )
        self.projects = Projects(
            self.state,
            clock,
            self.databases,
            db_host,
            db_port,
            s.provision_delay,
            self.on_event,
            max_projects=s.projects_per_account,
        )
        platform = Platform(
            settings=s,
            state=self.state,
            clock=clock,
            accounts=accounts,
            limiter=RateLimiter(s.rate_limit),
            sql_slots=AccountSlots(s.connections_per_account, s.connection_wait),
            projects=self.projects,
            sites=SiteStore(data / "sites", self.state, clock, s.max_file_size),
            objects=ObjectStore(data / "storage", self.state, clock, signing_key, s.storage_quota),
            outbox=Outbox(self.state, clock, s.emails_per_day),
            databases=self.databases,
            port=port,
            reload=ReloadHub() if s.dev else None,
            operator_token=secrets.token_urlsafe(24),
        )
        self.reload = platform.reload
        database = f"PostgreSQL {server_info.version} ({mode})"
        platform.info = {
            "mosaicsync": __version__,
            "api_url": base_url + API_PREFIX,
            "sites": f"http://{{project_id}}.localhost:{port}/",
            "sites_by_path": f"{base_url}/sites/{{project_id}}/",
            "outbox": f"{base_url}/_local/",
            "data_dir": str(data),
            "database": {
                "mode": mode,
                "version": server_info.version,
                "extensions": server_info.extensions,
            },
            "limits": s.limits(),
            "clock_override": s.allow_clock_override,
            "dev": s.dev,
            "fidelity_gaps": fidelity.gaps_json(),
        }
        self.app = build_app(platform)
        self.projects.resume_provisioning()
        return Started(
            base_url, base_url + API_PREFIX, port, data, database, new_key, platform.operator_token
        )

    def _external(self, url: str, limits: SqlLimits) -> tuple[Databases, str, int, str]:
        try:
            params = psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError:
            raise StartupError(
                "--database-url is not a valid PostgreSQL URL, e.g. "
                "postgresql://admin:PASSWORD@127.0.0.1:5432/postgres"
            ) from None
        host = str(params.get("host") or "127.0.0.1")
        port = int(params.get("port") or 5432)
        databases = Databases(url, host, port, limits, on_event=self.on_event)
        return databases, host, port, "external --database-url"

    def serve(self) -> None:
        assert self.app is not None and self.sock is not None
        config = uvicorn.Config(
            self.app,
            log_level="warning",
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
        # uvicorn stops on SIGINT/SIGTERM and then re-raises the signal to the handler that was
        # installed before it: make both a KeyboardInterrupt so that `close()` always runs.
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            _Server(config, self.reload).run(sockets=[self.sock])
        except KeyboardInterrupt:
            pass
        finally:
            signal.signal(signal.SIGTERM, previous)

    def close(self) -> None:
        """Stop everything this run started, in reverse order; safe to call twice."""
        if self.projects:
            self.projects.stop()
        if self.databases:
            self.databases.close()
            self.databases = None
        if self.cluster:
            self.cluster.stop()
        if self.state:
            self.state.close()
            self.state = None
        if self.sock:
            self.sock.close()
            self.sock = None
