"""The tenant databases on one PostgreSQL server, as the rest of the platform sees them."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mosaicsync.local.pg.pool import TenantPool
from mosaicsync.local.pg.sqlexec import TENANT_ADAPTERS, SqlExecutor, SqlLimits
from mosaicsync.local.pg.tenants import ServerInfo, TenantCredentials, Tenants, tenant_name


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
        self.limits = limits
        self.tenants = Tenants(
            admin_dsn,
            host,
            port,
            connection_limit=limits.connections_per_project,
            statement_timeout=limits.statement_timeout,
            shim_dir=shim_dir,
            on_event=on_event,
        )
        self.pool = TenantPool(
            limits.connections_per_project,
            TENANT_ADAPTERS,
            per_account=limits.connections_per_account,
            wait=limits.connection_wait,
        )
        self.sql = SqlExecutor(admin_dsn, self.pool, limits)

    def prepare(self) -> ServerInfo:
        """Close the shared databases to tenants and build the template; safe to repeat."""
        return self.tenants.prepare()

    def provision(self, project_id: str) -> TenantCredentials:
        """Create the project's role and database; the password is generated here."""
        return self.tenants.provision(project_id)

    def exists(self, project_id: str) -> bool:
        """Whether the role or database exists: ids must not collide on a shared server."""
        return self.tenants.exists(project_id)

    def drop(self, project_id: str) -> None:
        """Close the project's pooled connections, then drop its database and role."""
        name = tenant_name(project_id)
        self.pool.close(lambda creds: creds.database == name)
        self.tenants.drop(project_id)

    def execute(
        self, creds: TenantCredentials, query: str, account: object = None
    ) -> list[dict[str, Any]]:
        """Run the query as the tenant, on the account's share of the pool; see `SqlExecutor`."""
        return self.sql.execute(creds, query, account)

    def close(self) -> None:
        """Close every pooled connection; connections in use close when they come back."""
        self.pool.close(lambda creds: True)
