"""What the endpoints share: the platform's stores and settings, one object per running platform.

`server.LocalPlatform` builds it; `app.build_app` puts it on `app.state.platform`, where every
endpoint finds it through its request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mosaicsync.contract import TOOL_STORAGE_PREFIX
from mosaicsync.local.accounts import Accounts, AccountSlots, RateLimiter
from mosaicsync.local.clock import Clock
from mosaicsync.local.outbox import Outbox
from mosaicsync.local.pg.databases import Databases
from mosaicsync.local.projects import Project, Projects
from mosaicsync.local.reload import ReloadHub
from mosaicsync.local.settings import LocalSettings
from mosaicsync.local.sites import SiteStore
from mosaicsync.local.state import State
from mosaicsync.local.storage import ObjectStore


@dataclass
class Platform:
    """Everything a request handler needs; built and owned by `server.LocalPlatform`."""

    settings: LocalSettings
    state: State
    clock: Clock
    accounts: Accounts
    limiter: RateLimiter
    sql_slots: AccountSlots  # SQL requests in flight per account (--connections-per-account)
    projects: Projects
    sites: SiteStore
    objects: ObjectStore
    outbox: Outbox
    databases: Databases
    port: int
    info: dict[str, Any] = field(default_factory=dict)
    reload: ReloadHub | None = None  # dev mode only
    # Made at each start and printed once in the banner: it shows `/_local/` every account's mail.
    operator_token: str = ""

    def changed(self, project_id: str, path: str) -> None:
        """Tell the pages of the project that a file changed (dev mode; call on the loop).
        The deploy history's own objects are no page's business: no reload for them."""
        if self.reload is not None and not path.startswith(TOOL_STORAGE_PREFIX):
            self.reload.changed(project_id, path)

    def site_url(self, project_id: str) -> str:
        return f"http://{project_id}.localhost:{self.port}"

    def project_json(self, project: Project) -> dict[str, Any]:
        return {
            "project_id": project.id,
            "name": project.name,
            "status": project.status,
            "url": self.site_url(project.id),
        }
