"""Settings of one local platform run: every cap and limit in one place, with its default."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from mosaicsync.contract import SITE_CONTENT_TYPES  # noqa: F401 - re-exported for the platform

GB = 1000**3
MiB = 1024 * 1024


@dataclass
class LocalSettings:
    """What `mosaicsync local` was started with; the defaults are the documented ones."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 8787
    database_url: str | None = None
    pg_bin: Path | None = None
    api_keys: list[str] = field(default_factory=list)
    key_ttl_days: float = 30.0
    statement_timeout: float = 30.0
    max_rows: int = 10_000
    max_result_bytes: int = 10 * MiB
    max_file_size: int = 10 * MiB
    max_body: int = 16 * MiB
    storage_quota: int = 20 * GB
    emails_per_day: int = 10
    rate_limit: float = 1000.0  # requests per second per key; 0 turns it off
    # One account must not starve the others: at most this many projects (403 beyond) and this
    # many SQL endpoint connections at once (429 beyond, after `connection_wait` seconds). 20
    # projects x 5 connections each stays well below the cluster's 200, and 10 in-flight queries
    # stay below the server's 40 worker threads.
    projects_per_account: int = 20
    connections_per_account: int = 10
    connection_wait: float = 5.0
    provision_delay: float = 0.0
    allow_clock_override: bool = False
    reset_db: bool = False
    fast_db: bool = False  # tests: no fsync in the embedded cluster
    dev: bool = False  # live reload: a script in served HTML and GET /_local/reload

    def limits(self) -> dict[str, object]:
        """The caps as shown by `GET /_local/info`."""
        return {
            "statement_timeout_s": self.statement_timeout,
            "max_rows": self.max_rows,
            "max_result_bytes": self.max_result_bytes,
            "max_file_size": self.max_file_size,
            "max_request_body": self.max_body,
            "storage_quota": self.storage_quota,
            "magic_link_emails_per_day": self.emails_per_day,
            "requests_per_second_per_key": self.rate_limit,
            "projects_per_account": self.projects_per_account,
            "sql_connections_per_account": self.connections_per_account,
            "sql_connection_wait_s": self.connection_wait,
            "generated_key_ttl_days": self.key_ttl_days,
            "presigned_url_ttl_s": 300,
            "magic_link_ttl_s": 900,
        }
