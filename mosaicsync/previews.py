"""Previews: a whole copy of the app (site and database, seeded) per change, and its promotion.

A preview is a project of its own, named `<app name> · <NAME>`, so nothing it does reaches
production's data. The list of previews lives in the parent (production) project's database,
table `mosaicsync.previews`, where every machine of the team sees it; the preview's own
database says whose preview it is (`mosaicsync.preview_of`), so a preview of a preview is
refused. Only projects recorded here are ever deleted.

`promote` publishes the preview's last deploy byte for byte from the preview's deploy history
(restore.py), after the migrations the preview has and production lacks, and refuses when the
preview's migrations differ from the folder's or production's.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mosaicsync.api import MosaicClient
from mosaicsync.config import Config
from mosaicsync.errors import (
    AuthError,
    ConfigError,
    HistoryError,
    MigrationError,
    NotFoundError,
    PlatformError,
)
from mosaicsync.manifest import sql_literal

if TYPE_CHECKING:
    from mosaicsync.migrate import Migrator

NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,62}")
DEFAULT_NAME = "preview"
DEFAULT_TTL_S = 7 * 86400
SEPARATOR = " · "

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS mosaicsync;
CREATE TABLE IF NOT EXISTS mosaicsync.previews (
    name text PRIMARY KEY,
    project_id text NOT NULL UNIQUE,
    parent_project text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    last_deploy_at timestamptz,
    last_deploy_id bigint,
    parent_live_id bigint,
    state text NOT NULL DEFAULT 'creating',
    created_by text NOT NULL
);
"""
MARKER_SQL = """
CREATE SCHEMA IF NOT EXISTS mosaicsync;
CREATE TABLE IF NOT EXISTS mosaicsync.preview_of (
    id integer PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    parent_project text NOT NULL,
    name text NOT NULL
);
"""

_COLUMNS = (
    "name, project_id, parent_project, state, created_by, last_deploy_id, parent_live_id, "
    "to_char(created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS created_at, "
    "to_char(expires_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS expires_at, "
    "to_char(last_deploy_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') "
    "AS last_deploy_at, expires_at < now() AS expired, "
    "extract(epoch FROM now() - created_at)::bigint AS age_s"
)

_TTL = re.compile(r"(\d+)\s*([smhdw])")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ttl(text: str) -> int:
    """`7d`, `12h`, `30m`, `0s`, `1w2d`: seconds. ConfigError naming the form otherwise."""
    cleaned = text.strip().lower()
    parts = _TTL.findall(cleaned)
    if not cleaned or "".join(f"{n}{u}" for n, u in parts) != cleaned.replace(" ", ""):
        raise ConfigError(
            f"--ttl {text!r} is not a duration",
            hint="write a number and a unit: 30m, 12h, 7d, 2w (0s expires at once)",
        )
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def check_name(name: str) -> str:
    """A preview name: letters, digits and . _ / - (a git branch name fits), 63 at most."""
    if not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{name!r} is not a valid preview name: use 1 to 63 letters, digits and . _ / -, "
            "starting with a letter or digit",
            hint="e.g. `mosaicsync preview feature-x`",
        )
    return name


def default_name(folder: Any) -> str:
    """The git branch of `folder` when it has one (and it is a valid name), else "preview"."""
    git = shutil.which("git")
    if git:
        try:
            done = subprocess.run(
                [git, "-C", str(folder), "symbolic-ref", "-q", "--short", "HEAD"],
                capture_output=True,
                text=True,
                timeout=10,
            )
            branch = done.stdout.strip() if done.returncode == 0 else ""
        except (OSError, subprocess.SubprocessError):
            branch = ""
        if branch and NAME_PATTERN.fullmatch(branch):
            return branch
    return DEFAULT_NAME


def project_name(app: str, name: str) -> str:
    return f"{app}{SEPARATOR}{name}"


@dataclass(frozen=True)
class Preview:
    name: str
    project_id: str
    parent_project: str
    state: str  # creating, ready, failed
    created_by: str
    created_at: str
    expires_at: str
    last_deploy_at: str | None
    last_deploy_id: int | None
    parent_live_id: int | None
    expired: bool
    age_s: int

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Preview:
        def opt(v: Any) -> int | None:
            return None if v is None else int(v)

        return cls(
            r["name"], r["project_id"], r["parent_project"], r["state"], r["created_by"],
            r["created_at"], r["expires_at"], r["last_deploy_at"], opt(r["last_deploy_id"]),
            opt(r["parent_live_id"]), bool(r["expired"]), int(r["age_s"]),
        )  # fmt: skip

    def to_json(self, url: str | None = None) -> dict[str, Any]:
        return {
            "name": self.name,
            "project_id": self.project_id,
            "url": url,
            "parent_project": self.parent_project,
            "state": self.state,
            "created_by": self.created_by,
            "created_at": self.created_at,
            "age_s": self.age_s,
            "expires_at": self.expires_at,
            "expired": self.expired,
            "last_deploy_at": self.last_deploy_at,
            "last_deploy_id": self.last_deploy_id,
            "parent_live_id": self.parent_live_id,
        }


class Registry:
    """The previews of one parent project, in the parent's database."""

    def __init__(self, client: MosaicClient, parent: str) -> None:
        self.client = client
        self.parent = parent

    def _sql(self, query: str) -> list[dict[str, Any]]:
        return self.client.sql(self.parent, query, idempotent=True)

    def all(self) -> list[Preview]:
        rows = self._sql(SCHEMA_SQL + f"SELECT {_COLUMNS} FROM mosaicsync.previews ORDER BY name")
        return [Preview.from_row(r) for r in rows]

    def get(self, name: str) -> Preview | None:
        rows = self._sql(
            SCHEMA_SQL
            + f"SELECT {_COLUMNS} FROM mosaicsync.previews WHERE name = {sql_literal(name)}"
        )
        return Preview.from_row(rows[0]) if rows else None

    def require(self, name: str) -> Preview:
        found = self.get(name)
        if found is None:
            names = ", ".join(p.name for p in self.all()) or "none"
            raise NotFoundError(
                f"no preview named {name!r} of project {self.parent}; previews: {names}",
                hint="`mosaicsync preview list` shows them",
            )
        return found

    def add(self, name: str, project_id: str, ttl_s: int, who: str) -> None:
        self._sql(
            SCHEMA_SQL
            + "INSERT INTO mosaicsync.previews (name, project_id, parent_project, expires_at, "
            f"created_by) VALUES ({sql_literal(name)}, {sql_literal(project_id)}, "
            f"{sql_literal(self.parent)}, now() + make_interval(secs => {int(ttl_s)}), "
            f"{sql_literal(who)}) ON CONFLICT (name) DO UPDATE SET project_id = "
            "EXCLUDED.project_id, created_at = now(), state = 'creating', last_deploy_id = "
            "NULL, last_deploy_at = NULL, expires_at = EXCLUDED.expires_at"
        )

    def update(self, name: str, **values: Any) -> None:
        sets = []
        for key, value in values.items():
            if key == "ttl_s":
                sets.append(f"expires_at = now() + make_interval(secs => {int(value)})")
            elif key == "deployed":
                sets.append("last_deploy_at = now()")
            else:
                sets.append(f"{key} = {sql_literal(value)}")
        self._sql(
            f"UPDATE mosaicsync.previews SET {', '.join(sets)} WHERE name = {sql_literal(name)}"
        )

    def remove(self, name: str) -> None:
        self._sql(f"DELETE FROM mosaicsync.previews WHERE name = {sql_literal(name)}")


def preview_parent(client: MosaicClient, project_id: str) -> str | None:
    """The parent project when `project_id` is a preview (its own database says so), else None."""
    if not _exists(client, project_id, "mosaicsync.preview_of"):
        return None
    rows = client.sql(
        project_id,
        "SELECT parent_project AS parent FROM mosaicsync.preview_of WHERE id = 1",
        idempotent=True,
    )
    return rows[0]["parent"] if rows else None


def _exists(client: MosaicClient, project_id: str, table: str) -> bool:
    rows = client.sql(
        project_id, f"SELECT to_regclass({sql_literal(table)}) IS NOT NULL AS yes", idempotent=True
    )
    return bool(rows[0]["yes"])


def mark_preview(client: MosaicClient, project_id: str, parent: str, name: str) -> None:
    client.sql(
        project_id,
        MARKER_SQL + "INSERT INTO mosaicsync.preview_of (id, parent_project, name) VALUES (1, "
        f"{sql_literal(parent)}, {sql_literal(name)}) ON CONFLICT (id) DO NOTHING",
        idempotent=True,
    )


@dataclass
class PreviewResult:
    preview: Preview
    url: str
    created: bool
    seeded: list[str]
    migrations_applied: int
    deploy: Any  # DeployResult

    def to_json(self) -> dict[str, Any]:
        return {
            "preview": self.preview.to_json(self.url),
            "url": self.url,
            "created": self.created,
            "seeded": self.seeded,
            "migrations_applied": self.migrations_applied,
            "deploy": self.deploy.to_json(),
        }


def create_or_update(
    config: Config,
    client: MosaicClient,
    parent: str,
    name: str,
    *,
    ttl_s: int,
    seed: bool,
    options: Any,
    on_event: Callable[[object], None] | None = None,
    seeder: Callable[[MosaicClient, str], list[str]] | None = None,
) -> PreviewResult:
    """Create (or reuse) the preview NAME of `parent`, migrate, seed on first creation, deploy
    the folder through the usual deploy, and record it in the parent's registry."""
    from mosaicsync.deploy import Deployer
    from mosaicsync.history import History
    from mosaicsync.selection import user_at_host

    check_name(name)
    if preview_parent(client, parent) is not None:
        raise ConfigError(
            f"project {parent} is itself a preview: a preview of a preview is not made",
            hint="run `mosaicsync preview` with the production project selected "
            "([app] project_id, or --project)",
        )
    registry = Registry(client, parent)
    found = registry.get(name)
    created = False
    if found is not None:
        try:
            client.get_project(found.project_id)
        except NotFoundError:
            found = None  # deleted by hand: made again
    if found is None:
        try:
            project = client.create_project(project_name(config.name, name))
        except AuthError as exc:
            raise AuthError(
                f"the platform refused a new project for preview {name!r}: {exc.message}",
                hint="the account's project limit may be reached: `mosaicsync preview prune` "
                "deletes expired previews, `mosaicsync preview delete NAME --yes` one of them",
            ) from None
        except PlatformError as exc:
            raise PlatformError(
                f"the platform refused the project name "
                f"{project_name(config.name, name)!r} for preview {name!r}: {exc.message}",
                hint="choose a shorter preview NAME (or a shorter [app] name in mosaic.toml)",
            ) from None
        project_id = project["project_id"]
        registry.add(name, project_id, ttl_s, user_at_host())
        created = True
    else:
        project_id = found.project_id
        registry.update(name, ttl_s=ttl_s)
    project = client.wait_until_running(project_id)
    mark_preview(client, project_id, parent, name)
    seeded: list[str] = []
    try:
        deploy_options = options._replace(migrate=True, allow_destructive=True)
        # Migrations first (all of them), then the seed, then the site: the deploy's own order.
        deployer = Deployer(config, client, project_id, deploy_options, on_event)
        migrations = 0
        if deployer._has_migrations():
            from mosaicsync.migrate import Migrator

            migrator = Migrator(
                client, project_id, config.migrations_dir, lock_timeout=options.lock_timeout
            )
            migrations = len(migrator.up(allow_destructive=True).applied)
        if seed and seeder is not None:
            seeded = seeder(client, project_id)
        result = deployer.run()
    except BaseException:
        registry.update(name, state="failed")
        raise
    parent_live = History(client, parent, config.history_keep).live()
    registry.update(
        name,
        state="ready",
        deployed=True,
        **({"last_deploy_id": result.deploy_id} if result.deploy_id is not None else {}),
        parent_live_id=parent_live.id if parent_live else None,
    )
    preview = registry.require(name)
    url = project.get("url", "")
    return PreviewResult(preview, url, created, seeded, migrations, result)


def delete(client: MosaicClient, parent: str, name: str) -> Preview:
    """Delete preview NAME's project and its record; never a project that is not recorded."""
    registry = Registry(client, parent)
    preview = registry.require(name)
    try:
        marked = preview_parent(client, preview.project_id)
    except NotFoundError:
        marked = None  # already gone: the record goes too
    else:
        # The record lives in a database people can edit: the project's own marker must agree
        # (a preview stopped before it was marked is still 'creating' and named for it), so a
        # wrong row can never delete production or another app.
        unmarked = (
            marked is None
            and preview.state == "creating"
            and str(client.get_project(preview.project_id).get("name", "")).endswith(
                SEPARATOR + name
            )
        )
        if preview.project_id == parent or (marked != parent and not unmarked):
            raise ConfigError(
                f"project {preview.project_id} is recorded as preview {name!r} of {parent}, "
                "but its own database does not say it is one: it was not deleted",
                hint="check the row in mosaicsync.previews; `mosaicsync projects delete ID "
                "--yes` deletes a project you are sure of",
            )
    with contextlib.suppress(NotFoundError):  # already gone: the record goes too
        client.delete_project(preview.project_id)
    registry.remove(name)
    return preview


def prune(client: MosaicClient, parent: str) -> list[Preview]:
    """Delete every expired preview (by the platform's clock)."""
    gone = []
    for preview in Registry(client, parent).all():
        if preview.expired:
            gone.append(delete(client, parent, preview.name))
    return gone


def check_migrations(
    config: Config, client: MosaicClient, preview_id: str, production_id: str
) -> tuple[list[str], int | None]:
    """The preview's applied migrations must be the folder's files and agree with production's
    history: (problems naming the versions, the newest version the preview has)."""
    from mosaicsync.migrate.files import load_migrations

    def applied(project_id: str) -> dict[str, str]:
        if not _exists(client, project_id, "mosaicsync.migrations"):
            return {}
        rows = client.sql(
            project_id,
            "SELECT version::text AS version, checksum FROM mosaicsync.migrations "
            "WHERE state <> 'baseline'",
            idempotent=True,
        )
        return {r["version"]: r["checksum"] for r in rows}

    mine = applied(preview_id)
    theirs = applied(production_id)
    files = {}
    if config.migrations_dir.is_dir():
        files = {str(m.version): m.checksum for m in load_migrations(config.migrations_dir)}
    problems = []
    for version, checksum in sorted(mine.items(), key=lambda kv: int(kv[0])):
        if version not in files:
            problems.append(f"{version} is applied on the preview but has no file in the folder")
        elif files[version] != checksum:
            problems.append(f"{version} changed in the folder since the preview applied it")
        if version in theirs and theirs[version] != checksum:
            problems.append(f"{version} differs between the preview and production")
    for version in sorted(set(theirs) - set(mine), key=int):
        problems.append(
            f"{version} is applied on production but not on the preview (it was not reviewed "
            "with it)"
        )
    newest = max((int(v) for v in mine), default=None)
    for version in sorted(set(files) - set(mine) - set(theirs), key=int):
        if newest is not None and int(version) < newest:
            problems.append(
                f"{version} is in the folder but not applied on the preview (it was not "
                "reviewed with it)"
            )
    return problems, newest


def promote(
    config: Config,
    client: MosaicClient,
    production: str,
    name: str,
    *,
    options: Any,
    dry_run: bool,
    on_event: Callable[[object], None] | None = None,
    confirm: Callable[[list[Any]], bool] | None = None,
) -> dict[str, Any]:
    """Migrations the preview has and production lacks, then production's site made
    byte-identical to the preview's last deploy from the preview's stored content."""
    from mosaicsync.deploy import Deployer
    from mosaicsync.history import History
    from mosaicsync.restore import Restorer

    preview = Registry(client, production).require(name)
    if preview.expired:
        raise HistoryError(
            f"preview {name!r} expired at {preview.expires_at}: it is not promoted",
            hint=f"run `mosaicsync preview {name}` again to refresh it, then promote",
        )
    if preview.state != "ready" or preview.last_deploy_id is None:
        raise HistoryError(
            f"preview {name!r} is {preview.state} and has no finished deploy to promote",
            hint=f"run `mosaicsync preview {name}` until it succeeds",
        )
    problems, newest = check_migrations(config, client, preview.project_id, production)
    if problems:
        raise MigrationError(
            f"preview {name!r} cannot be promoted: its migrations do not match: "
            + "; ".join(problems),
            hint="run `mosaicsync preview NAME` again from this folder, so the preview applies "
            "the migrations production will get",
        )
    source = History(client, preview.project_id, config.history_keep or 1)
    deployer = Deployer(config, client, production, options, on_event, confirm=confirm)
    migrations: list[str] = []

    def migrate(migrator: Migrator) -> None:
        # Run by the restore once the preview's bytes are fetched, verified and searched, under
        # its lease: a promote that cannot publish leaves production's schema alone too.
        if newest is None:
            return
        up = migrator.up(
            to=newest,
            dry_run=dry_run,
            allow_destructive=options.allow_destructive,
            confirm=confirm,
        )
        # The same names (the files) whether planned or applied.
        applied = {a.version for a in up.applied}
        migrations.extend(m.filename for m in up.planned if up.dry_run or m.version in applied)

    result = Restorer(deployer).run(
        preview.last_deploy_id,
        dry_run=dry_run,
        source=source,
        message=f"promote of {name} #{preview.last_deploy_id}",
        before_publish=migrate,
    )
    return {
        "preview": preview.to_json(),
        "migrations": migrations,
        "restore": result,
    }


def seeder_for(config: Config) -> Callable[[MosaicClient, str], list[str]]:
    """The seed step of a preview: the project's seed files, each applied once (seed.py)."""

    def run(client: MosaicClient, project_id: str) -> list[str]:
        from mosaicsync.seed import Seeder

        return [a.name for a in Seeder(client, project_id, config).run().applied]

    return run
