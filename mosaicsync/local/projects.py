"""Projects: ids of the documented shape, provisioning in the background, account scoping."""

from __future__ import annotations

import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from mosaicsync.contract import API_PREFIX, API_ROUTES
from mosaicsync.local.clock import Clock
from mosaicsync.local.errors import ApiError
from mosaicsync.local.pg.databases import Databases
from mosaicsync.local.pg.tenants import TenantCredentials, tenant_name
from mosaicsync.local.state import State

_LIST = f"{API_ROUTES['list_projects'].method} {API_PREFIX}{API_ROUTES['list_projects'].path}"
WORDS = [
    "pod",
    "wave",
    "spark",
    "leaf",
    "reef",
    "dune",
    "glow",
    "mist",
    "peak",
    "fern",
    "tide",
    "nova",
    "cove",
    "pine",
    "orbit",
    "flux",
    "echo",
    "haze",
    "jade",
    "moss",
    "bloom",
    "cloud",
    "drift",
    "ember",
    "frost",
    "grove",
    "hive",
    "isle",
    "kite",
    "lark",
    "maple",
    "nest",
    "opal",
    "quill",
    "ridge",
    "sage",
    "stone",
    "vale",
    "wren",
]
ALPHABET = "abcdefghijklmnopqrstuvwxyz0123456789"
PROJECT_ID_RE = re.compile(r"^[a-z]+-[a-z0-9]{3}$")
MAX_NAME = 100
# C0 and C1 controls (CR, LF, NUL, tab, escape...) and the Unicode line/paragraph separators:
# a name is one line of text, and it ends up in email subjects and HTML.
CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_single_line(field: str, value: str) -> None:
    """400 if `value` holds a control character, naming it and where it is."""
    found = CONTROL_RE.search(value)
    if found:
        raise ApiError(
            400,
            f'"{field}" contains the control character U+{ord(found.group()):04X} at '
            f"position {found.start() + 1}; use one line of printable text, without line breaks, "
            "tabs or NUL",
        )


def one_line(text: str) -> str:
    """`text` with each run of control characters turned into one space."""
    return re.sub(CONTROL_RE.pattern + "+", " ", text).strip()


@dataclass(frozen=True)
class Project:
    id: str
    account_id: int
    name: str
    status: str
    db_password: str | None
    error: str | None


def new_project_id() -> str:
    return secrets.choice(WORDS) + "-" + "".join(secrets.choice(ALPHABET) for _ in range(3))


class Projects:
    def __init__(
        self,
        state: State,
        clock: Clock,
        databases: Databases,
        db_host: str,
        db_port: int,
        provision_delay: float,
        on_event: Callable[[str], None],
        max_projects: int = 0,
    ) -> None:
        self.max_projects = max_projects  # per account; 0 = no cap
        self.state = state
        self.clock = clock
        self.databases = databases
        self.db_host = db_host
        self.db_port = db_port
        self.provision_delay = provision_delay
        self.on_event = on_event
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()

    @staticmethod
    def _from_row(row) -> Project:
        return Project(
            row["id"],
            row["account_id"],
            row["name"],
            row["status"],
            row["db_password"],
            row["error"],
        )

    def list(self, account_id: int) -> list[Project]:
        rows = self.state.all(
            "SELECT * FROM projects WHERE account_id = ? ORDER BY created_at, id", account_id
        )
        return [self._from_row(r) for r in rows]

    def get(self, account_id: int, project_id: str) -> Project:
        """The account's project, or 404 (also for another account's project: ids don't leak)."""
        row = self.state.one(
            "SELECT * FROM projects WHERE id = ? AND account_id = ?", project_id, account_id
        )
        if row is None:
            raise ApiError(
                404,
                f"project {project_id!r} not found for this API key; list yours with {_LIST}",
            )
        return self._from_row(row)

    def public(self, project_id: str) -> Project | None:
        """Any account's project, for serving its public site and storage."""
        row = self.state.one("SELECT * FROM projects WHERE id = ?", project_id)
        return self._from_row(row) if row else None

    def running(self, account_id: int, project_id: str) -> Project:
        project = self.get(account_id, project_id)
        if project.status == "provisioning":
            raise ApiError(
                503,
                f"project {project_id} is still provisioning; retry in a moment",
                headers={"Retry-After": "1"},
            )
        if project.status != "running":
            raise ApiError(
                500,
                f"project {project_id} failed to provision ({project.error}); delete it and "
                "create it again, or submit a ticket",
            )
        return project

    def credentials(self, project: Project) -> TenantCredentials:
        name = tenant_name(project.id)
        return TenantCredentials(
            database=name,
            user=name,
            password=project.db_password or "",
            host=self.db_host,
            port=self.db_port,
        )

    def create(self, account_id: int, name: object) -> Project:
        if not isinstance(name, str) or not name.strip():
            raise ApiError(400, '"name" must be a non-empty string, e.g. {"name": "My App"}')
        if len(name) > MAX_NAME:
            raise ApiError(400, f'"name" is longer than {MAX_NAME} characters')
        check_single_line("name", name)
        for _ in range(50):
            project_id = new_project_id()
            if self.state.one("SELECT 1 FROM projects WHERE id = ?", project_id):
                continue
            if self.databases.exists(project_id):
                continue
            break
        else:
            raise ApiError(500, "could not find a free project id; try again")
        with self.state.transaction() as conn:  # count and insert at once: no race past the cap
            (count,) = conn.execute(
                "SELECT count(*) FROM projects WHERE account_id = ?", (account_id,)
            ).fetchone()
            if self.max_projects and count >= self.max_projects:
                raise ApiError(
                    403,
                    f"this account already has {count} projects, the most one account may have "
                    f"(the local platform's cap, --projects-per-account {self.max_projects}); "
                    "delete a project you no longer need (`mosaicsync projects delete ID --yes`, "
                    f"or DELETE {API_PREFIX}/{{project_id}}) to free a slot",
                )
            conn.execute(
                "INSERT INTO projects VALUES (?, ?, ?, 'provisioning', ?, NULL, NULL)",
                (project_id, account_id, name.strip(), self.clock.now()),
            )
        self._provision_in_background(project_id)
        return self.get(account_id, project_id)

    def resume_provisioning(self) -> None:
        """Projects left half-made by a stopped platform are made again from scratch."""
        for row in self.state.all("SELECT id FROM projects WHERE status = 'provisioning'"):
            self.databases.drop(row["id"])
            self._provision_in_background(row["id"])

    def _provision_in_background(self, project_id: str) -> None:
        thread = threading.Thread(
            target=self._provision, args=(project_id,), name=f"provision-{project_id}", daemon=True
        )
        self._threads.append(thread)
        thread.start()

    def _provision(self, project_id: str) -> None:
        if self.provision_delay and self._stopping.wait(self.provision_delay):
            return
        started = time.perf_counter()
        try:
            creds = self.databases.provision(project_id)
        except Exception as exc:  # a failed provision must show on the project, not vanish
            self.state.run(
                "UPDATE projects SET status = 'error', error = ? WHERE id = ?",
                str(exc),
                project_id,
            )
            self.on_event(f"project {project_id}: provisioning failed: {exc}")
            return
        self.state.run(
            "UPDATE projects SET status = 'running', db_password = ? WHERE id = ?",
            creds.password,
            project_id,
        )
        ms = (time.perf_counter() - started) * 1000
        self.on_event(f"project {project_id}: database ready ({ms:.0f} ms)")

    def delete(self, account_id: int, project_id: str) -> None:
        self.get(account_id, project_id)
        for thread in self._threads:
            if thread.name == f"provision-{project_id}":
                thread.join()
        self.databases.drop(project_id)
        with self.state.transaction() as conn:
            conn.execute("DELETE FROM projects WHERE id = ?", (project_id,))
            conn.execute("DELETE FROM magic_links WHERE project_id = ?", (project_id,))

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=30)
