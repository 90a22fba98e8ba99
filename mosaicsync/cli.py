"""The command line: parse, call the library, render. No HTTP and no SQL here."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from mosaicsync import __version__
from mosaicsync.errors import ConfigError, LocalPlatformError, MosaicError


def _echo_event(message: str) -> None:
    click.echo(message, err=True)


@dataclass
class Session:
    """What every command may need, resolved lazily so `--help` and errors stay fast."""

    json_mode: bool = False
    verbose: bool = False
    config_path: Path | None = None
    target: str | None = None
    api_url: str | None = None
    project: str | None = None

    def output(self, *secrets: str) -> Any:
        from mosaicsync.output import Output

        return Output(json_mode=self.json_mode, verbose=self.verbose, secrets=secrets)

    def config(self) -> Any:
        from mosaicsync.config import find_config, load_config

        path = self.config_path
        if path is None:
            path = find_config(Path.cwd())
        elif path.is_dir():
            path = path / "mosaic.toml"
        if not path.exists():
            raise ConfigError(
                f"{path}: no such file", hint="run `mosaicsync init` or pass --config"
            )
        return load_config(path)

    def config_or_none(self) -> Any:
        try:
            return self.config()
        except ConfigError:
            if self.config_path is not None:
                raise
            return None

    def selection(self, config: Any, *, with_key: bool = False) -> Any:
        """The target, API URL and project (and API key) this command uses: see `selection`."""
        from mosaicsync.credentials import stored_api_key
        from mosaicsync.selection import select_target

        return select_target(
            config,
            os.environ,
            target=self.target,
            api_url=self.api_url,
            project=self.project,
            key_lookup=stored_api_key if with_key else None,
        )

    def api_url_for(self, config: Any) -> str:
        return self.selection(config).api_url

    def client(self, config: Any, out: Any, key: str | None = None) -> Any:
        from mosaicsync.api import MosaicClient

        chosen = self.selection(config, with_key=key is None)
        api_key = key or chosen.api_key.value
        out.secrets = (*out.secrets, api_key)
        return MosaicClient(chosen.api_url, api_key, on_request=out.request)

    def project_id(self, config: Any) -> str:
        return self.selection(config).require_project()


# One instance for every command's --config: a click type is configuration only, and each new
# one looks up its translated name (gettext searches the disk), 37 times at every start.
_CONFIG_PATH = click.Path(path_type=Path)


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The flags every platform command takes, gathered into a `Session`."""

    @click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("-v", "--verbose", is_flag=True, help="Show each request (secrets redacted).")
    @click.option(
        "--config",
        "config_path",
        type=_CONFIG_PATH,
        help="mosaic.toml (or its folder); default: found from the current folder upwards.",
    )
    @click.option("--target", help="A [targets.NAME] table of mosaic.toml (env MOSAIC_TARGET).")
    @click.option("--api-url", help="Platform API base URL (env MOSAIC_API_URL).")
    @click.option("--project", help="Project id (env MOSAIC_PROJECT; default: mosaic.toml).")
    @functools.wraps(func)
    def wrapper(json_mode, verbose, config_path, target, api_url, project, **kwargs):
        session = Session(json_mode, verbose, config_path, target, api_url, project)
        return func(session, **kwargs)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mosaicsync")
def cli() -> None:
    """Deploy static sites, storage and SQL migrations to Mosaic.

    \b
    Example:
      mosaicsync init site --template basic
      cd site && mosaicsync link --create "My App" && mosaicsync deploy
      mosaicsync local            # run a local Mosaic platform for offline work
    """


# -- project set-up ------------------------------------------------------------------------------


@cli.command()
@click.argument("directory", default=".", type=click.Path(path_type=Path, file_okay=False))
@click.option("--template", default="basic", show_default=True, help="basic or todo.")
@click.option("--name", help="App name (default: from the folder name).")
@click.option("--create", is_flag=True, help="Also create the project on the platform and link it.")
@common_options
def init(session: Session, directory: Path, template: str, name: str | None, create: bool) -> None:
    """Create a new project from a template; never overwrites a file.

    \b
    Example:
      mosaicsync init site --template todo --name "Todo App"
    """
    from mosaicsync.config import CONFIG_NAME, load_config, set_project_id
    from mosaicsync.scaffold import init_project

    out = session.output()
    created = init_project(directory, template=template, name=name)
    config = load_config(directory / CONFIG_NAME)
    project_id = None
    if create:
        with session.client(config, out) as client:
            project = client.create_project(config.name)
            project_id = project["project_id"]
            client.wait_until_running(project_id)
        set_project_id(config.path, project_id, target=session.selection(config).target)
    out.result(
        {
            "directory": str(directory.resolve()),
            "template": template,
            "created": [str(p) for p in created],
            "project_id": project_id,
        },
        f"Created {len(created)} files in {directory} from template {template!r}"
        + (f"; linked to project {project_id}" if project_id else "")
        + f".\nNext: cd {directory} && mosaicsync deploy",
    )


@cli.command()
@click.option("--key-stdin", is_flag=True, help="Read the key from stdin (no prompt).")
@common_options
def login(session: Session, key_stdin: bool) -> None:
    """Store an API key (mode 0600) after checking it against the platform.

    The key is read from a hidden prompt, or from stdin when stdin is not a terminal.
    MOSAIC_API_KEY, when set, wins over the stored key.

    \b
    Example:
      echo "$MOSAIC_KEY" | mosaicsync login --api-url http://127.0.0.1:8787/v1/project
    """
    from mosaicsync.credentials import save_api_key

    config = session.config_or_none()
    url = session.api_url_for(config)
    if key_stdin or not sys.stdin.isatty():
        key = sys.stdin.readline().strip()
    else:
        key = click.prompt("API key (mk_...)", hide_input=True).strip()
    if not key:
        raise ConfigError("no API key given", hint="pipe the key on stdin or type it at the prompt")
    out = session.output(key)
    with session.client(config, out, key=key) as client:
        projects = client.list_projects()
    path = save_api_key(url, key)
    out.result(
        {"api_url": url, "credentials": str(path), "projects": len(projects)},
        f"Logged in to {url} ({len(projects)} projects); key stored in {path}",
    )


@cli.command()
@click.option("--all", "all_urls", is_flag=True, help="Forget the keys of every platform.")
@common_options
def logout(session: Session, all_urls: bool) -> None:
    """Forget the stored API key.

    \b
    Example:
      mosaicsync logout --all
    """
    from mosaicsync.credentials import delete_api_key

    url = None if all_urls else session.api_url_for(session.config_or_none())
    removed = delete_api_key(url)
    out = session.output()
    out.result(
        {"removed": removed, "api_url": url},
        ("Removed the stored key" if removed else "No stored key") + (f" for {url}" if url else ""),
    )


@cli.command()
@click.argument("project_id", required=False)
@click.option("--create", "create_name", metavar="NAME", help="Create a new project and link it.")
@common_options
def link(session: Session, project_id: str | None, create_name: str | None) -> None:
    """Link this folder's mosaic.toml to a project (per --target when given).

    \b
    Example:
      mosaicsync link pod-16f
      mosaicsync link --create "My App" --target local
    """
    from mosaicsync.config import set_project_id

    config = session.config()
    out = session.output()
    if not project_id and not create_name:
        raise click.UsageError("give a PROJECT_ID or --create NAME")
    with session.client(config, out) as client:
        if create_name:
            project = client.create_project(create_name)
            project_id = project["project_id"]
            project = client.wait_until_running(project_id)
        else:
            assert project_id is not None
            project = client.get_project(project_id)
    set_project_id(config.path, project_id, target=session.selection(config).target)
    out.result(
        {"project_id": project_id, "url": project.get("url"), "config": str(config.path)},
        f"Linked {config.path} to {project_id} ({project.get('url')})",
    )


# -- deploy ----------------------------------------------------------------------------------------


def _deploy(session: Session, dry_run: bool, **opts: Any) -> None:
    from mosaicsync.deploy import Deployer
    from mosaicsync.output import human_size

    config = session.config()
    out = session.output()
    project_id = session.project_id(config)
    options = _deploy_options(config, opts, dry_run=dry_run)
    confirm = _confirm_destructive(session)
    with session.client(config, out) as client:
        result = Deployer(
            config, client, project_id, options, out.deploy_event, confirm=confirm
        ).run()
    data = result.to_json()
    seconds = result.duration_ms / 1000
    if dry_run:
        plan = result.plan or {}
        lines = [f"Plan for {project_id} (dry run, nothing changed):"]
        lines += [
            f"  upload  {u['path']}  ({u['target']}, {human_size(u['size'])}, {u['reason']})"
            for u in plan.get("upload", [])
        ]
        lines += [f"  prune   {p['path']}  ({p['target']})" for p in plan.get("prune", [])]
        lines.append(f"  unchanged {plan.get('unchanged', 0)}")
        lines += [f"  migrate {name}" for name in result.migrations_pending]
        if result.live:
            lines.append(f"  live now: {_live_text(result.live)}")
        stopping = [f for f in result.findings if f.severity == "error"]
        if stopping:
            lines.append(f"  deploy would stop here: {len(stopping)} error(s) found (above)")
        human = "\n".join(lines)
    else:
        storage = f", {len(result.storage)} in storage" if result.storage else ""
        human = (
            f"Deployed {project_id}: uploaded {result.uploaded} ({human_size(result.bytes)}), "
            f"unchanged {result.unchanged}, pruned {result.pruned}{storage}"
            f"{f', migrations {result.migrations_applied}' if result.migrations_applied else ''} "
            f"in {seconds:.2f} s\n{result.url}/"
        )
        if result.deploy_id is None and result.live:
            human += f"\nNothing changed; live: {_live_text(result.live)}"
        if result.deploy_id is not None:
            replaced = f", replacing {result.replaces.describe()}" if result.replaces else ""
            human += f"\nRecorded as deploy #{result.deploy_id}{replaced}"
            kept = result.history
            if kept and kept.missing:
                human += (
                    f" (not restorable: {len(kept.missing)} file(s) changed before their bytes "
                    "were kept)"
                )
        if result.storage:
            shown = ", ".join(result.storage[:10])
            more = f" and {len(result.storage) - 10} more" if len(result.storage) > 10 else ""
            human += f"\nIn storage (mapped in mosaic-assets.json): {shown}{more}"
    out.result(data, human)


def _live_text(live: dict[str, Any]) -> str:
    """`#7 (rollback to #5) "message"`: the live deploy as the manifest's digest read it."""
    from mosaicsync.output import printable

    text = f"deploy #{live['id']}"
    if live.get("kind") == "rollback" and live.get("rollback_of") is not None:
        text += f" (rollback to #{live['rollback_of']})"
    elif live.get("kind") == "watch":
        text += " (watch)"
    if live.get("message") and live["message"] != f"rollback to #{live.get('rollback_of')}":
        text += f' "{printable(str(live["message"]))}"'
    return text


def _confirm_destructive(session: Session) -> Callable[[list[Any]], bool] | None:
    """On a terminal (not --json), a question before a migration that drops data; else None,
    and such a migration needs --allow-destructive."""
    if session.json_mode or not (sys.stdin.isatty() and sys.stderr.isatty()):
        return None

    def confirm(found: list[Any]) -> bool:
        from mosaicsync.findings import ordered

        stopping = [f for f in ordered(found) if f.severity == "error"]
        click.echo("These pending migrations lose data:", err=True)
        for f in stopping:
            click.echo(f"  {f.where}: {f.message}", err=True)
        return click.confirm("Apply them?", default=False, err=True)

    return confirm


def migration_safety_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--allow-changed", is_flag=True,
        help="Apply even though an applied migration file changed.",
    )(func)  # fmt: skip
    func = click.option(
        "--allow-out-of-order", is_flag=True,
        help="Apply a pending migration older than the newest applied one.",
    )(func)  # fmt: skip
    func = click.option(
        "--allow-destructive", is_flag=True,
        help="Apply migrations that drop data (DROP TABLE/COLUMN, TRUNCATE...) without asking.",
    )(func)  # fmt: skip
    func = click.option(
        "--lock-timeout", default=30.0, show_default=True,
        help="Seconds to wait for another run's migration lock.",
    )(func)  # fmt: skip
    return func


def deploy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--concurrency",
        type=click.IntRange(1, 256),
        help="Parallel uploads (default: from the round trip, 8 on a fast link, up to 64).",
    )(func)
    func = click.option(
        "--no-prune", "prune", is_flag=True, flag_value=False, default=True,
        help="Keep remote files that are gone locally.",
    )(func)  # fmt: skip
    func = click.option(
        "--no-rewrite", "rewrite", is_flag=True, flag_value=False, default=True,
        help="Do not point HTML/CSS at storage URLs.",
    )(func)  # fmt: skip
    func = click.option(
        "--no-migrate", "migrate", is_flag=True, flag_value=False, default=True,
        help="Do not apply pending migrations.",
    )(func)  # fmt: skip
    func = migration_safety_options(func)
    func = click.option(
        "--allow-secrets", is_flag=True,
        help="Let .mosaicignore re-include files the safe defaults exclude (.env, keys).",
    )(func)  # fmt: skip
    func = click.option(
        "--allow-secret", "allow_secret", multiple=True, metavar="PATH",
        help="Publish this reviewed file despite a secret found in it (never the key in use).",
    )(func)  # fmt: skip
    func = click.option(
        "--strict", is_flag=True,
        help="Broken references stop the deploy (default: [check] strict, else warnings).",
    )(func)  # fmt: skip
    return func


def _deploy_options(config: Any, opts: dict[str, Any], **more: Any) -> Any:
    """DeployOptions from the flags and mosaic.toml, the same for deploy, status, watch, dev."""
    from mosaicsync.deploy import DeployOptions
    from mosaicsync.preflight import allowed_paths

    merged = {**opts, **more}
    merged["strict"] = bool(merged.get("strict")) or config.check_strict
    merged["allow_secret"] = allowed_paths(config.static_root, merged.get("allow_secret", ()))
    return DeployOptions(**merged)


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
@click.option("-m", "--message", metavar="TEXT", help="A note kept with this deploy in `deploys`.")
@deploy_options
@common_options
def deploy(session: Session, dry_run: bool, **opts: Any) -> None:
    """Upload what changed since the last deploy, then prune what is gone.

    Allowed site types go to the site; everything else to storage, with HTML and CSS
    pointed at the storage URLs and the map published as mosaic-assets.json.

    \b
    Example:
      mosaicsync deploy --json
      mosaicsync deploy --target local --dry-run
    """
    _deploy(session, dry_run, **opts)


@cli.command()
@deploy_options
@common_options
def status(session: Session, **opts: Any) -> None:
    """Show what `deploy` would do (the same plan as `deploy --dry-run`).

    \b
    Example:
      mosaicsync status --json
    """
    _deploy(session, True, **opts)


@cli.command()
@click.option(
    "--allow-secret", "allow_secret", multiple=True, metavar="PATH",
    help="A reviewed file whose secret findings pass (never the key in use).",
)  # fmt: skip
@click.option("--allow-secrets", is_flag=True, help="As for deploy: re-included secret files.")
@common_options
def check(session: Session, allow_secret: tuple[str, ...], allow_secrets: bool) -> None:
    """Run the preflight checks alone: secrets in what would be published, broken references,
    destructive or risky pending migrations. Changes nothing.

    Exit 0 when nothing was found (risky migrations are warnings), 9 otherwise.

    \b
    Example:
      mosaicsync check
      mosaicsync check --json
    """
    from mosaicsync.deploy import Deployer
    from mosaicsync.findings import ordered, raise_for

    config = session.config()
    out = session.output()
    project_id = session.project_id(config)
    options = _deploy_options(
        config, {"allow_secret": allow_secret, "allow_secrets": allow_secrets}, dry_run=True
    )
    with session.client(config, out) as client:
        report = Deployer(config, client, project_id, options).check_all()
    found = ordered(report.findings)
    out.findings(found)
    errors = sum(f.severity == "error" for f in found)
    summary = (
        f"checked {report.files} files and {report.migrations} pending migration(s): "
        f"{errors} error(s), {len(found) - errors} warning(s)"
    )
    raise_for(
        found,
        headline=summary.capitalize(),
        hint="fix each error above (file:line:column), then run `mosaicsync check` again",
    )
    data = {
        "files": report.files,
        "files_read": report.files_read,
        "migrations": report.migrations,
        "findings": [f.to_json() for f in found],
    }
    out.result(data, summary.capitalize())


# -- watch and dev ---------------------------------------------------------------------------------


def watch_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option(
        "--debounce-ms", default=30, show_default=True, type=click.IntRange(0, 60_000),
        help="Quiet time before a sync; changes closer together than this go as one.",
    )(func)  # fmt: skip
    func = click.option(
        "--poll", "force_polling", is_flag=True,
        help="Poll the disk instead of using OS events (network or container filesystems).",
    )(func)  # fmt: skip
    return func


def _run_watch(
    config: Any,
    client: Any,
    project_id: str,
    out: Any,
    target: str | None,
    debounce_ms: int,
    force_polling: bool,
    opts: dict[str, Any],
) -> None:
    from mosaicsync.watch import Watcher, WatchOptions

    options = WatchOptions(
        debounce_ms=debounce_ms,
        deploy=_deploy_options(config, opts),
        force_polling=force_polling,
        target=target,
    )
    Watcher(config, client, project_id, options, out.watch_event).run()


@cli.command()
@watch_options
@deploy_options
@common_options
def watch(session: Session, debounce_ms: int, force_polling: bool, **opts: Any) -> None:
    """Deploy, then upload each change as it is saved, until Ctrl-C.

    Only the changed files are hashed and sent. New migration files are applied; an edit
    to an applied one is refused with a warning. A failed sync is retried until it lands.
    Prints one line per sync (one JSON object per line with --json).

    \b
    Example:
      mosaicsync watch
      mosaicsync watch --target local --json
    """
    config = session.config()
    out = session.output()
    chosen = session.selection(config)
    project_id = chosen.require_project()
    target = chosen.target
    with session.client(config, out) as client:
        _run_watch(config, client, project_id, out, target, debounce_ms, force_polling, opts)


@cli.command()
@click.option(
    "--port", default=8787, show_default=True, type=int,
    help="Port of the local platform; 0 picks a free one.",
)  # fmt: skip
@click.option(
    "--data", "data_dir", type=click.Path(path_type=Path),
    help="The local platform's data directory (default: the one `mosaicsync local` uses).",
)  # fmt: skip
@watch_options
@deploy_options
@common_options
def dev(
    session: Session,
    port: int,
    data_dir: Path | None,
    debounce_ms: int,
    force_polling: bool,
    **opts: Any,
) -> None:
    """Develop locally: run the local platform, deploy this folder, reload the browser on save.

    Starts `mosaicsync local --dev`, creates (or reuses) this folder's project there and
    records it under [targets.local] in mosaic.toml, deploys, prints the URL, then watches
    like `mosaicsync watch`. Open pages reload after each sync; a change made only of
    stylesheets is swapped in without a reload.

    \b
    Example:
      mosaicsync dev
      mosaicsync dev --port 0 --json
    """
    from mosaicsync.dev import Dev
    from mosaicsync.local.server import default_data_dir
    from mosaicsync.watch import WatchOptions

    if session.api_url or session.project or session.target:
        raise click.UsageError(
            "dev runs its own local platform: --api-url, --project and --target do not apply"
        )
    config = session.config()
    out = session.output()
    options = WatchOptions(
        debounce_ms=debounce_ms,
        deploy=_deploy_options(config, opts),
        force_polling=force_polling,
        target="local",
    )

    def add_secret(secret: str) -> None:
        out.secrets = (*out.secrets, secret)

    data = (data_dir or default_data_dir()).resolve()
    Dev(
        config, data, port, options,
        on_event=out.watch_event, on_request=out.request, on_secret=add_secret,
    ).run()  # fmt: skip


# -- migrations ------------------------------------------------------------------------------------


@cli.group()
def migrate() -> None:
    """SQL migrations: each applied exactly once, all or nothing, in version order.

    \b
    Example:
      mosaicsync migrate new add_tags
      mosaicsync migrate status --json
      mosaicsync migrate up
    """


def _migrator(session: Session, out: Any, lock_timeout: float = 30.0) -> tuple[Any, Any, Any]:
    from mosaicsync.migrate import Migrator

    config = session.config()
    client = session.client(config, out)
    migrator = Migrator(
        client,
        session.project_id(config),
        config.migrations_dir,
        lock_timeout=lock_timeout,
        on_event=out.deploy_event,
    )
    return config, client, migrator


@migrate.command("new")
@click.argument("name")
@common_options
def migrate_new(session: Session, name: str) -> None:
    """Create the next migration file.

    \b
    Example:
      mosaicsync migrate new create_todos
    """
    from mosaicsync.migrate import new_migration

    config = session.config()
    out = session.output()
    path = new_migration(config.migrations_dir, name)
    out.result({"path": str(path)}, f"Created {path}")


@migrate.command("status")
@common_options
def migrate_status(session: Session) -> None:
    """Show applied, pending, changed and missing migrations, and the lock holder.

    \b
    Example:
      mosaicsync migrate status --json
    """
    out = session.output()
    _, client, migrator = _migrator(session, out)
    with client:
        status = migrator.status()
    data = status.to_json()
    lines = []
    for key in ("applied", "pending", "changed", "missing", "partial", "out_of_order"):
        items = data.get(key) or []
        if items:
            names = ", ".join(_migration_label(i) for i in items)
            lines.append(f"{key:<12} {len(items):>3}  {names}")
    if data.get("lock"):
        lines.append(f"lock         held: {data['lock']}")
    out.result(data, "\n".join(lines) or "No migrations.")


def _migration_label(item: Any) -> str:
    """One migration on one line: names recorded in the database may hold any character."""
    from mosaicsync.output import printable

    if not isinstance(item, dict):
        return printable(str(item))
    if item.get("filename"):
        return printable(str(item["filename"]))
    label = f"{item.get('version')}_{item.get('name')}" if item.get("name") else str(item)
    return printable(label)


@migrate.command("up")
@click.option("--to", "to_version", type=int, help="Stop after this version.")
@click.option("--dry-run", is_flag=True, help="Print the SQL that would be sent; apply nothing.")
@migration_safety_options
@common_options
def migrate_up(
    session: Session,
    to_version: int | None,
    dry_run: bool,
    allow_changed: bool,
    allow_out_of_order: bool,
    allow_destructive: bool,
    lock_timeout: float,
) -> None:
    """Apply pending migrations.

    A migration that drops data stops the run before anything is applied, unless
    --allow-destructive is given or, on a terminal, you answer yes.

    \b
    Example:
      mosaicsync migrate up --dry-run
      mosaicsync migrate up --to 20261125120000
    """
    out = session.output()
    _, client, migrator = _migrator(session, out, lock_timeout)
    with client:
        result = migrator.up(
            to=to_version,
            dry_run=dry_run,
            allow_changed=allow_changed,
            allow_out_of_order=allow_out_of_order,
            allow_destructive=allow_destructive,
            confirm=_confirm_destructive(session),
        )
    data = result.to_json()
    if dry_run:
        data["sql"] = result.sql
        human = "\n\n".join(result.sql) or "Nothing to apply."
    else:
        human = f"Applied {len(result.applied)} migration(s)." + "".join(
            f"\n  {a.version}_{a.name} ({a.ms} ms)" for a in result.applied
        )
    out.result(data, human)


@migrate.command("lint")
@common_options
def migrate_lint(session: Session) -> None:
    """Check the pending migrations for statements that drop data or break what is deployed.

    Destructive statements (DROP TABLE/COLUMN, TRUNCATE, DELETE without WHERE...) fail
    with exit 9 unless marked `-- mosaicsync: allow-destructive`; risky ones (renames,
    SET NOT NULL) are warnings. Row counts come from the target's database. Applies nothing.

    \b
    Example:
      mosaicsync migrate lint --json
    """
    from mosaicsync.findings import ordered, raise_for

    out = session.output()
    _, client, migrator = _migrator(session, out)
    with client:
        linted = migrator.lint()
    found = ordered(linted.findings)
    out.findings(found)
    n = sum(f.severity == "error" for f in found)
    raise_for(
        found, headline=f"{n} destructive statement{'s' if n > 1 else ''} not marked as reviewed"
    )
    data = {"pending": linted.pending, "findings": [f.to_json() for f in found]}
    warned = f"{len(found)} warning(s)" if found else "no destructive or risky statement"
    out.result(data, f"Linted {linted.pending} pending migration(s): {warned}.")


@migrate.command("repair")
@click.option("--accept", multiple=True, type=int, help="Record the file's new checksum for V.")
@click.option("--forget", multiple=True, type=int, help="Remove V (file gone) from the history.")
@common_options
def migrate_repair(session: Session, accept: tuple[int, ...], forget: tuple[int, ...]) -> None:
    """Fix the history after an intended change: accept new checksums or forget versions.

    \b
    Example:
      mosaicsync migrate repair --accept 3
    """
    if not accept and not forget:
        raise click.UsageError("give --accept VERSION and/or --forget VERSION")
    out = session.output()
    _, client, migrator = _migrator(session, out)
    with client:
        result = migrator.repair(accept=accept, forget=forget)
    out.result(
        {"accepted": result.accepted, "forgotten": result.forgotten},
        f"Accepted {result.accepted}, forgot {result.forgotten}",
    )


@migrate.command("unlock")
@common_options
def migrate_unlock(session: Session) -> None:
    """Release the migration lock of a crashed run (operators only).

    \b
    Example:
      mosaicsync migrate unlock
    """
    out = session.output()
    _, client, migrator = _migrator(session, out)
    with client:
        previous = migrator.unlock()
    out.result(
        {"previous": previous.to_json() if previous else None},
        f"Unlocked (was held by {previous.describe()})" if previous else "The lock was free.",
    )


# -- history ---------------------------------------------------------------------------------------


def _project_session(session: Session) -> tuple[Any, Any, str]:
    config = session.config()
    return config, session.output(), session.project_id(config)


@cli.group(invoke_without_command=True)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@common_options
@click.pass_context
def deploys(ctx: click.Context, session: Session, limit: int) -> None:
    """List recorded deploys, newest first, and which one is live.

    \b
    Example:
      mosaicsync deploys --json
      mosaicsync deploys show 7
    """
    if ctx.invoked_subcommand is not None:
        return
    from mosaicsync.history import History, live_entry
    from mosaicsync.output import human_size, printable

    config, out, project_id = _project_session(session)
    with session.client(config, out) as client:
        history = History(client, project_id, config.history_keep)
        entries = history.entries(limit=None)
        used = history.used_bytes()
    live = live_entry(entries)
    shown = entries[:limit]
    data = {
        "project_id": project_id,
        "keep": config.history_keep,
        "live": live.id if live else None,
        "history_bytes": used,
        "deploys": [e.to_json(live.id if live else None) for e in shown],
    }
    lines = []
    for e in shown:
        mark = "*" if live and e.id == live.id else " "
        git = ""
        if e.git_commit:
            git = f" {e.git_commit[:8]}{'+dirty' if e.git_dirty else ''}"
        what = f"rollback to #{e.restores}" if e.kind == "rollback" else e.kind
        note = printable(e.message or "") if e.message != f"rollback to #{e.restores}" else ""
        lines.append(
            f"{mark} #{e.id:<4} {e.started_at}  {e.state:<11} {what:<15} "
            f"+{e.uploaded} -{e.pruned} {human_size(e.bytes):>9} {e.files} files"
            f"{git}  {printable(e.who)}  {note}".rstrip()
        )
    newer = [e for e in entries if live and e.id > live.id and e.state != "running"]
    if newer:
        lines.append(
            f"! {newer[0].describe()} {newer[0].state} after the live deploy: the site may "
            "mix both; deploy again or roll back"
        )
    head = (
        f"Deploys of {project_id} (* live; history keeps {config.history_keep}, "
        f"{human_size(used)} in storage):"
        if config.history_keep
        else f"Deploys of {project_id} (history is off: [history] keep = 0):"
    )
    out.result(data, "\n".join([head, *lines]) if lines else "No deploys recorded yet.")


@deploys.command("show")
@click.argument("deploy_id", type=int)
@common_options
def deploys_show(session: Session, deploy_id: int) -> None:
    """The files a deploy changed (compared with the deploy it replaced) and its file set.

    \b
    Example:
      mosaicsync deploys show 7 --json
    """
    from mosaicsync.errors import HistoryError
    from mosaicsync.history import History
    from mosaicsync.output import printable
    from mosaicsync.restore import plan_restore

    config, out, project_id = _project_session(session)
    with session.client(config, out) as client:
        history = History(client, project_id, config.history_keep)
        entry = history.entry(deploy_id)
        if entry is None:
            ids = ", ".join(f"#{e.id}" for e in history.entries()) or "none"
            raise HistoryError(
                f"no deploy #{deploy_id} in this project's history; recorded: {ids}",
                hint="`mosaicsync deploys` lists them",
            )
        files = history.files(deploy_id) if entry.restorable else {}
        before = (
            history.files(entry.replaces)
            if entry.replaces is not None and history.entry(entry.replaces) is not None
            else {}
        )
    changes = plan_restore(files, before) if files else None
    added = [r.path for r in changes.puts if r.path not in before] if changes else []
    changed = [r.path for r in changes.puts if r.path in before] if changes else []
    removed = [r.path for r in changes.prune if r.path not in files] if changes else []
    data = {
        "deploy": entry.to_json(),
        "compared_with": entry.replaces if before else None,
        "added": added,
        "changed": changed,
        "removed": removed,
        "files": [
            {"path": r.path, "sha256": r.sha256, "size": r.size, "target": r.target}
            for r in files.values()
        ],
    }
    lines = [f"Deploy {entry.describe()}: {entry.state}, {printable(entry.message or '')}"]
    if not entry.restorable:
        lines.append("  its file set was not kept (not restorable)")
    elif not before:
        lines.append(f"  {len(files)} files (no earlier deploy kept to compare with)")
    lines += [f"  + {printable(p)}" for p in added]
    lines += [f"  ~ {printable(p)}" for p in changed]
    lines += [f"  - {printable(p)}" for p in removed]
    out.result(data, "\n".join(lines))


@cli.command()
@click.argument("deploy_id", type=int, required=False)
@click.option("--dry-run", is_flag=True, help="Print what would be restored; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal).")
@click.option(
    "--lock-timeout", default=30.0, show_default=True,
    help="Seconds to wait for a deploy that holds the lease.",
)  # fmt: skip
@click.option("--concurrency", type=click.IntRange(1, 256), help="Parallel uploads.")
@click.option(
    "--allow-secret", "allow_secret", multiple=True, metavar="PATH",
    help="Restore this reviewed file despite a secret found in it (never the key in use).",
)  # fmt: skip
@common_options
def rollback(
    session: Session,
    deploy_id: int | None,
    dry_run: bool,
    yes: bool,
    lock_timeout: float,
    concurrency: int | None,
    allow_secret: tuple[str, ...],
) -> None:
    """Make the site byte-identical to an earlier deploy (default: the one before the live one).

    Site files, storage files and mosaic-assets.json come back exactly as they were published.
    The database schema is never rolled back: migrations applied since are listed.

    \b
    Example:
      mosaicsync rollback --dry-run
      mosaicsync rollback 7 --yes --json
    """
    from mosaicsync.deploy import Deployer, DeployOptions
    from mosaicsync.output import human_size, printable
    from mosaicsync.preflight import allowed_paths
    from mosaicsync.restore import Restorer

    config, out, project_id = _project_session(session)
    options = DeployOptions(
        concurrency=concurrency,
        lock_timeout=lock_timeout,
        allow_secret=allowed_paths(config.static_root, allow_secret),
    )
    with session.client(config, out) as client:
        deployer = Deployer(config, client, project_id, options, out.deploy_event)
        restorer = Restorer(deployer)
        if not yes and not dry_run:
            # The dry run first: an unknown id or a missing byte is reported before any question.
            preview = restorer.run(deploy_id, dry_run=True)
            plan = preview.plan
            assert plan is not None
            _needs_yes(
                session,
                "rollback changes the live site",
                "`mosaicsync rollback --dry-run` shows what it would do",
            )
            click.confirm(
                f"Roll {project_id} back to {preview.target.describe()} "
                f"({printable(preview.target.message or 'no message')}): restore "
                f"{len(plan.puts)} file(s), delete {len(plan.prune)}?",
                abort=True,
                err=True,
            )
            deploy_id = preview.target.id
        result = restorer.run(deploy_id, dry_run=dry_run)
    data = result.to_json()
    target = result.target.describe()
    plan = result.plan
    if dry_run and plan is not None:
        lines = [f"Rollback of {project_id} to {target} (dry run, nothing changed):"]
        lines += [f"  restore {printable(r.path)}  ({r.target})" for r in plan.puts]
        lines += [f"  delete  {printable(r.path)}  ({r.target})" for r in plan.prune]
        lines.append(f"  unchanged {plan.unchanged}")
    elif result.deploy_id is None:
        lines = [f"{project_id} already serves {target} exactly: nothing changed"]
    else:
        replaced = f", replacing {result.replaces.describe()}" if result.replaces else ""
        lines = [
            f"Rolled {project_id} back to {target}: restored {result.restored} "
            f"({human_size(result.bytes)}), deleted {result.pruned}, unchanged "
            f"{result.unchanged} in {result.duration_ms / 1000:.2f} s",
            f"Recorded as deploy #{result.deploy_id}{replaced}",
            f"{result.url}/",
        ]
    if result.migrations_after:
        names = ", ".join(
            f"{m['version']} {printable(str(m['name']))}" for m in result.migrations_after
        )
        lines.append(
            f"The schema was not rolled back: migrations applied after {target} stay "
            f"applied: {names}"
        )
    out.result(data, "\n".join(lines))


# -- previews --------------------------------------------------------------------------------------


class _DefaultCommandGroup(click.Group):
    """`preview [NAME]` creates or updates; `preview list|delete|prune` are subcommands."""

    default_command = "create"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if not args or (args[0] not in self.commands and args[0] not in ("-h", "--help")):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_DefaultCommandGroup)
def preview() -> None:
    """An isolated copy of the app (its own project: site and database, seeded) per change.

    \b
    Example:
      mosaicsync preview feature-x --json     # create or update, print its URL
      mosaicsync preview list
      mosaicsync preview delete feature-x --yes
      mosaicsync preview prune                # delete expired previews (safe in CI)
      mosaicsync promote feature-x --yes      # publish the preview's bytes to production
    """


@preview.command("create", hidden=True)
@click.argument("name", required=False)
@click.option("--ttl", default="7d", show_default=True, help="Expiry after this run: 30m, 12h, 7d.")
@click.option(
    "--seed/--no-seed",
    default=True,
    help="Apply the seed files this preview has not had yet (each file once, ever).",
)
@deploy_options
@common_options
def preview_create(session: Session, name: str | None, ttl: str, seed: bool, **opts: Any) -> None:
    """Create or update preview NAME (default: the git branch, else "preview").

    \b
    Example:
      mosaicsync preview feature-x --ttl 3d --json
    """
    from mosaicsync import previews

    config, out, parent = _project_session(session)
    ttl_s = previews.parse_ttl(ttl)
    chosen = previews.check_name(name or previews.default_name(config.project_dir))
    options = _deploy_options(config, opts)
    with session.client(config, out) as client:
        result = previews.create_or_update(
            config,
            client,
            parent,
            chosen,
            ttl_s=ttl_s,
            seed=seed,
            options=options,
            on_event=out.deploy_event,
            seeder=previews.seeder_for(config) if seed else None,
        )
    p = result.preview
    human = (
        f"Preview {chosen} ({p.project_id}) {'created' if result.created else 'updated'}: "
        f"{result.url}/\n"
        f"  migrations applied {result.migrations_applied}, seeded "
        f"{', '.join(result.seeded) or 'nothing'}, uploaded {result.deploy.uploaded}, "
        f"expires {p.expires_at}"
    )
    out.result(result.to_json(), human)


@preview.command("list")
@common_options
def preview_list(session: Session) -> None:
    """The previews of this project: URL, age, expiry, last deploy, what they started from.

    \b
    Example:
      mosaicsync preview list --json
    """
    from mosaicsync import previews
    from mosaicsync.output import human_age, printable

    config, out, parent = _project_session(session)
    with session.client(config, out) as client:
        items = previews.Registry(client, parent).all()
        urls = {p["project_id"]: p.get("url") for p in client.list_projects()}
    data = {"project_id": parent, "previews": [p.to_json(urls.get(p.project_id)) for p in items]}
    lines = [
        f"{printable(p.name):<24} {p.project_id:<12} {p.state:<9} "
        f"{'expired' if p.expired else 'expires ' + p.expires_at}  age {human_age(p.age_s)}  "
        f"deploy #{p.last_deploy_id if p.last_deploy_id is not None else '-'} from production "
        f"#{p.parent_live_id if p.parent_live_id is not None else '-'}  "
        f"{printable(str(urls.get(p.project_id) or '(project gone)'))}"
        for p in items
    ]
    out.result(data, "\n".join(lines) or f"No previews of {parent}.")


@preview.command("delete")
@click.argument("name")
@click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal).")
@common_options
def preview_delete(session: Session, name: str, yes: bool) -> None:
    """Delete preview NAME: its project (site, storage, database) and its record.

    \b
    Example:
      mosaicsync preview delete feature-x --yes
    """
    from mosaicsync import previews

    config, out, parent = _project_session(session)
    if not yes:
        _needs_yes(session, f"deleting preview {name!r} deletes its project")
        click.confirm(f"Delete preview {name} with its site and database?", abort=True, err=True)
    with session.client(config, out) as client:
        gone = previews.delete(client, parent, name)
    out.result({"deleted": gone.to_json()}, f"Deleted preview {name} (project {gone.project_id}).")


@preview.command("prune")
@common_options
def preview_prune(session: Session) -> None:
    """Delete every expired preview of this project (safe to run from CI on a schedule).

    \b
    Example:
      mosaicsync preview prune --json
    """
    from mosaicsync import previews

    config, out, parent = _project_session(session)
    with session.client(config, out) as client:
        gone = previews.prune(client, parent)
    names = ", ".join(f"{p.name} ({p.project_id})" for p in gone)
    out.result(
        {"deleted": [p.to_json() for p in gone]},
        f"Deleted {len(gone)} expired preview(s){': ' + names if names else ''}.",
    )


@cli.command()
@click.argument("name")
@click.option("--dry-run", is_flag=True, help="Print what would change; change nothing.")
@click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal).")
@migration_safety_options
@click.option("--concurrency", type=click.IntRange(1, 256), help="Parallel uploads.")
@click.option(
    "--allow-secret", "allow_secret", multiple=True, metavar="PATH",
    help="Publish this reviewed file despite a secret found in it (never the key in use).",
)  # fmt: skip
@common_options
def promote(
    session: Session,
    name: str,
    dry_run: bool,
    yes: bool,
    concurrency: int | None,
    allow_secret: tuple[str, ...],
    **opts: Any,
) -> None:
    """Publish preview NAME to production: its migrations, then its exact bytes.

    Applies the migrations the preview has and production lacks, then makes the production
    site byte-identical to the preview's last deploy from the stored content (no rebuild).

    \b
    Example:
      mosaicsync promote feature-x --dry-run
      mosaicsync promote feature-x --yes --json
    """
    from mosaicsync import previews
    from mosaicsync.deploy import DeployOptions
    from mosaicsync.output import printable
    from mosaicsync.preflight import allowed_paths

    config, out, production = _project_session(session)
    options = DeployOptions(
        allow_secret=allowed_paths(config.static_root, allow_secret),
        concurrency=concurrency,
        lock_timeout=opts["lock_timeout"],
        allow_destructive=opts["allow_destructive"],
        allow_changed=opts["allow_changed"],
        allow_out_of_order=opts["allow_out_of_order"],
    )
    with session.client(config, out) as client:

        def run(dry: bool) -> dict[str, Any]:
            return previews.promote(
                config,
                client,
                production,
                name,
                options=options,
                dry_run=dry,
                on_event=out.deploy_event,
                confirm=_confirm_destructive(session),
            )

        if not yes and not dry_run:
            # The dry run first: an unknown preview or a migration mismatch is reported before
            # any question.
            run(True)
            _needs_yes(
                session,
                "promote changes the production site",
                f"`mosaicsync promote {name} --dry-run` shows what it would do",
            )
            click.confirm(
                f"Promote preview {name} to production {production}?", abort=True, err=True
            )
        done = run(dry_run)
    restore = done["restore"]
    data = {
        "preview": done["preview"],
        "migrations": done["migrations"],
        **restore.to_json(),
    }
    verb = "Would promote" if dry_run else "Promoted"
    lines = [
        f"{verb} preview {printable(name)} (deploy #{restore.target.id}) to {production}: "
        f"migrations {len(done['migrations'])}, restored {restore.restored}, deleted "
        f"{restore.pruned}, unchanged {restore.unchanged}",
    ]
    lines += [f"  migrate {m}" for m in done["migrations"]]
    if restore.deploy_id is not None:
        lines.append(f"Recorded as deploy #{restore.deploy_id}")
    lines.append(f"{restore.url}/")
    out.result(data, "\n".join(lines))


# -- the platform at the command line ----------------------------------------------------------


def _needs_yes(session: Session, what: str, hint: str | None = None) -> None:
    """A change that asks first: with nobody at a terminal (or --json), --yes must say so."""
    if session.json_mode or not sys.stdin.isatty():
        raise ConfigError(f"{what} and nobody is at a terminal to confirm it, so pass --yes", hint)


def _no_prompt(flag: str, what: str) -> None:
    """Nobody at the keyboard: fail with the flag to pass instead of waiting on a prompt."""
    if not sys.stdin.isatty():
        raise click.UsageError(f"{what}: stdin is not a terminal, so pass {flag}")


@cli.group()
def projects() -> None:
    """List, create and delete projects.

    \b
    Example:
      mosaicsync projects create "My App" --json
      mosaicsync projects list
    """


@projects.command("list")
@common_options
def projects_list(session: Session) -> None:
    """List the projects of this API key.

    \b
    Example:
      mosaicsync projects list --json
    """
    out = session.output()
    with session.client(session.config_or_none(), out) as client:
        items = client.list_projects()
    from mosaicsync.output import printable

    lines = [
        " ".join(
            (
                f"{printable(str(p['project_id'])):<12}",
                f"{printable(str(p['status'])):<13}",
                f"{printable(str(p['name']))}  {printable(str(p['url']))}",
            )
        )
        for p in items
    ]
    out.result({"projects": items}, "\n".join(lines) or "No projects.")


@projects.command("create")
@click.argument("name")
@click.option("--no-wait", is_flag=True, help="Return while the project is still provisioning.")
@common_options
def projects_create(session: Session, name: str, no_wait: bool) -> None:
    """Create a project (and wait until its database is ready).

    \b
    Example:
      mosaicsync projects create "Todo App"
    """
    out = session.output()
    with session.client(session.config_or_none(), out) as client:
        project = client.create_project(name)
        if not no_wait:
            project = client.wait_until_running(project["project_id"])
    from mosaicsync.output import printable

    out.result(
        {"project": project},
        printable(f"Created {project['project_id']} ({project['status']}): {project['url']}"),
    )


@projects.command("delete")
@click.argument("project_id")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@common_options
def projects_delete(session: Session, project_id: str, yes: bool) -> None:
    """Delete a project with its site, storage and database. There is no undo.

    \b
    Example:
      mosaicsync projects delete pod-16f --yes
    """
    if not yes:
        _no_prompt("--yes", f"deleting {project_id}")
        click.confirm(f"Delete {project_id} with its site, storage and database?", abort=True)
    out = session.output()
    with session.client(session.config_or_none(), out) as client:
        client.delete_project(project_id)
    out.result({"project_id": project_id, "deleted": True}, f"Deleted {project_id}.")


@cli.command()
@click.argument("query", required=False)
@click.option(
    "-f", "--file", "sql_file", type=click.File("rb"), help="Read the query from a UTF-8 file."
)
@common_options
def sql(session: Session, query: str | None, sql_file: Any) -> None:
    """Run SQL on the project's database: a table on a terminal, JSON otherwise.

    Several statements run as one transaction; the result is the last statement's.

    \b
    Example:
      mosaicsync sql "select 1 as x" --json
      mosaicsync sql -f report.sql
    """
    from mosaicsync.output import render_table

    if sql_file is not None:
        query = _sql_text(sql_file.read(), sql_file.name)
    if not query:
        raise click.UsageError("give a QUERY or -f FILE")
    config = session.config_or_none()
    out = session.output()
    with session.client(config, out) as client:
        rows = client.sql(session.project_id(config), query)
    if session.json_mode or not sys.stdout.isatty():
        click.echo(out.redact(json.dumps(rows, ensure_ascii=False)))
    else:
        out.text(render_table(rows))


def _sql_text(raw: bytes, name: str) -> str:
    """The query in a `-f` file: UTF-8, a leading byte order mark skipped (Notepad writes one)."""
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(
            f"{Path(name).name}: not UTF-8 text (byte {exc.start}, line {line}); save it as UTF-8",
            hint="convert it, e.g. `iconv -f latin1 -t utf-8`, or save it as UTF-8 in the editor",
        ) from None


@cli.group()
def db() -> None:
    """The project's PostgreSQL: connection URL, a psql shell, seed data and reset.

    \b
    Example:
      mosaicsync db url
      mosaicsync db shell
      mosaicsync db seed --yes
    """


@db.command("url")
@click.option("--show-password", is_flag=True, help="Print the password instead of a mask.")
@common_options
def db_url(session: Session, show_password: bool) -> None:
    """Print the database URL (password masked unless --show-password).

    \b
    Example:
      psql "$(mosaicsync db url --show-password)"
    """
    from mosaicsync.credentials import MASK

    config = session.config_or_none()
    out = session.output()
    with session.client(config, out) as client:
        creds = client.database(session.project_id(config))
    if show_password:
        # Asked for explicitly: printed as is, bypassing the redaction of every other output.
        if session.json_mode:
            click.echo(json.dumps({"schema": "mosaicsync/1", "status": "ok", **creds}))
        else:
            click.echo(creds["database_url"])
        return
    masked = dict(creds, password=MASK)
    masked["database_url"] = creds["database_url"].replace(
        ":" + creds["password"] + "@", f":{MASK}@"
    )
    out.result(masked, masked["database_url"])


@db.command("shell", context_settings={"ignore_unknown_options": True})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
@common_options
def db_shell(session: Session, psql_args: tuple[str, ...]) -> None:
    """Open psql on the project's database (the password goes in the environment, not argv).

    \b
    Example:
      mosaicsync db shell -- -c "select count(*) from todos"
    """
    import shutil
    import subprocess

    psql = shutil.which("psql")
    if psql is None:
        raise ConfigError("psql is not installed", hint="install the PostgreSQL client (psql)")
    config = session.config_or_none()
    out = session.output()
    with session.client(config, out) as client:
        creds = client.database(session.project_id(config))
    env = {
        **os.environ,
        "PGHOST": str(creds["host"]),
        "PGPORT": str(creds["port"]),
        "PGUSER": creds["user"],
        "PGDATABASE": creds["database"],
        "PGPASSWORD": creds["password"],
    }
    code = subprocess.call([psql, *psql_args], env=env)
    sys.exit(code)


def _db_write(session: Session, command: str, effect: str, yes: bool, force: bool) -> Any:
    """The confirmations `db seed` and `db reset` need: --yes without a terminal, and
    --force-production for a project that is not on a local platform (seed.production_reason)."""
    from mosaicsync.seed import production_reason

    if not yes:
        _needs_yes(session, f"`db {command}` {effect}")
    config = session.config()
    chosen = session.selection(config)
    project_id = chosen.require_project()

    def recorded_preview(selection: Any) -> bool:
        from mosaicsync.previews import preview_parent

        try:
            with session.client(config, session.output()) as client:
                return preview_parent(client, selection.require_project()) is not None
        except MosaicError:  # cannot tell: treated as production
            return False

    reason = production_reason(chosen, also_safe=recorded_preview)
    if reason is not None and not force:
        raise ConfigError(
            f"`db {command}` refused: {reason}; it {effect}",
            hint="seed and reset are for local and preview projects; if you really mean this "
            "project, pass --force-production",
        )
    if not yes:
        click.confirm(f"{effect[0].upper()}{effect[1:]} on {project_id}?", abort=True, err=True)
    return config, project_id


def db_write_options(func: Callable[..., Any]) -> Callable[..., Any]:
    for option in reversed(
        [
            click.option("--yes", is_flag=True, help="Do not ask (needed without a terminal)."),
            click.option(
                "--force-production",
                is_flag=True,
                help="Also on a project that is not on a local platform (may hold real data).",
            ),
        ]
    ):
        func = option(func)
    return func


def _seed_lines(result: Any) -> list[str]:
    from mosaicsync.output import printable

    lines = [f"  applied {printable(a.name)} ({a.ms} ms)" for a in result.applied]
    lines += [f"  skipped {printable(name)} (applied before)" for name in result.skipped]
    lines += [f"  warning: {printable(w)}" for w in result.warnings]
    return lines


@db.command("seed")
@db_write_options
@common_options
def db_seed(session: Session, yes: bool, force_production: bool) -> None:
    """Apply the seed data ([migrations] seed) not applied yet: each file once, recorded.

    Refused on a project that is not on a local platform unless --force-production.

    \b
    Example:
      mosaicsync db seed --yes --target local
    """
    from mosaicsync.seed import Seeder

    config, project_id = _db_write(
        session, "seed", "writes sample data into the database", yes, force_production
    )
    if config.seed is None:
        raise ConfigError(
            "no seed data: mosaic.toml has no [migrations] seed",
            hint='add seed = "seed.sql" (a file, or a folder of .sql files) under [migrations]',
        )
    out = session.output()
    with session.client(config, out) as client:
        result = Seeder(client, project_id, config).run()
    human = [f"Seeded {project_id}: {len(result.applied)} file(s) applied."]
    out.result(result.to_json(), "\n".join(human + _seed_lines(result)))


@db.command("reset")
@click.option(
    "--lock-timeout", default=30.0, show_default=True,
    help="Seconds to wait for a deploy that holds the lease.",
)  # fmt: skip
@db_write_options
@common_options
def db_reset(session: Session, yes: bool, force_production: bool, lock_timeout: float) -> None:
    """Drop the project's data and apply every migration and the seed data again.

    The site and its deploy history stay as they are. Refused on a project that is not on a
    local platform unless --force-production.

    \b
    Example:
      mosaicsync db reset --yes --target local
    """
    from mosaicsync.seed import reset

    config, project_id = _db_write(
        session, "reset", "drops every table and row of the database", yes, force_production
    )
    out = session.output()
    with session.client(config, out) as client:
        result = reset(
            client, project_id, config, lock_timeout=lock_timeout, on_event=out.deploy_event
        )
    applied = result.migrations.applied
    lines = [
        f"Reset {project_id}: {len(applied)} migration(s) and "
        f"{len(result.seeds.applied)} seed file(s) applied."
    ]
    lines += [f"  migration {a.version}_{a.name} ({a.ms} ms)" for a in applied]
    out.result(result.to_json(), "\n".join(lines + _seed_lines(result.seeds)))


@cli.group()
def storage() -> None:
    """Object storage: list, upload (presigned, streamed) and delete.

    \b
    Example:
      mosaicsync storage put video.mp4 --name media/intro.mp4
      mosaicsync storage ls
    """


@storage.command("ls")
@common_options
def storage_ls(session: Session) -> None:
    """List objects and usage.

    \b
    Example:
      mosaicsync storage ls --json
    """
    from mosaicsync.output import human_size, printable

    config = session.config_or_none()
    out = session.output()
    with session.client(config, out) as client:
        listing = client.list_storage(session.project_id(config))
    usage = listing.get("usage", {})
    files = listing.get("files", [])
    lines = [f"{human_size(f['size']):>10}  {printable(str(f['filename']))}" for f in files]
    lines.append(f"used {usage.get('used')} of {usage.get('limit')} ({usage.get('percent')}%)")
    out.result(listing, "\n".join(lines))


@storage.command("put")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--name", help="Object name (default: the file's name).")
@click.option(
    "--allow-secret", is_flag=True,
    help="Upload it despite a secret found in it, once reviewed (never the key in use).",
)  # fmt: skip
@common_options
def storage_put(session: Session, file: Path, name: str | None, allow_secret: bool) -> None:
    """Upload a file to storage through a presigned URL, streamed from disk.

    \b
    Example:
      mosaicsync storage put backup.tar.gz --name backups/2026-11-25.tar.gz
    """
    from mosaicsync.credentials import all_stored_keys
    from mosaicsync.findings import raise_for
    from mosaicsync.output import human_size
    from mosaicsync.preflight import Preflight, Secrets

    config = session.config_or_none()
    out = session.output()
    object_name = name or file.name
    size = file.stat().st_size
    with session.client(config, out) as client:
        project_id = session.project_id(config)
        # What a deploy refuses to publish, storage put refuses too: the same secret search.
        secrets = Secrets(
            client.api_key_for_checks(),
            all_stored_keys(),
            lambda: client.database(project_id),
        )
        allowed = [object_name] if allow_secret else []
        found = Preflight(Path(), secrets, allow_secret=allowed, use_cache=False).secrets_in(
            file, object_name
        )
        out.findings(found)
        raise_for(found, outcome="nothing was uploaded")
        signed = client.upload_url(project_id, object_name, size)
        client.put_presigned(
            signed["upload_url"], file, size, name=str(file), command="storage put"
        )
        listing = client.list_storage(project_id)
    url = next((f["url"] for f in listing["files"] if f["filename"] == object_name), None)
    out.result(
        {"filename": object_name, "size": size, "url": url},
        f"Uploaded {object_name} ({human_size(size)}): {url}",
    )


@storage.command("rm")
@click.argument("names", nargs=-1, required=True)
@common_options
def storage_rm(session: Session, names: tuple[str, ...]) -> None:
    """Delete objects from storage.

    \b
    Example:
      mosaicsync storage rm media/old.mp4
    """
    config = session.config_or_none()
    out = session.output()
    with session.client(config, out) as client:
        project_id = session.project_id(config)
        for name in names:
            client.delete_object(project_id, name)
    out.result({"deleted": list(names)}, f"Deleted {len(names)} object(s).")


@cli.group()
def auth() -> None:
    """Magic-link sign-in for your app's users.

    \b
    Example:
      mosaicsync auth magic-link user@example.com --redirect /dashboard
    """


@auth.command("magic-link")
@click.argument("email")
@click.option(
    "--redirect",
    "redirect_url",
    default="/",
    show_default=True,
    help="Path on your site the user lands on.",
)
@common_options
def auth_magic_link(session: Session, email: str, redirect_url: str) -> None:
    """Send a sign-in link (free tier: 10 emails a day).

    \b
    Example:
      mosaicsync auth magic-link user@example.com --redirect /dashboard --json
    """
    config = session.config_or_none()
    out = session.output()
    with session.client(config, out) as client:
        answer = client.magic_link(session.project_id(config), email, redirect_url)
    from mosaicsync.output import printable

    out.result({"email": email, **answer}, printable(str(answer.get("message", "Sent."))))


@cli.command()
@click.option("--subject", required=True, help="One line: what went wrong.")
@click.option("--message", required=True, help="What you tried, the errors, how to reproduce.")
@click.option(
    "--diagnostics",
    is_flag=True,
    help="Attach version, OS, Python and the last error (never a secret).",
)
@common_options
def ticket(session: Session, subject: str, message: str, diagnostics: bool) -> None:
    """Submit a support ticket to the platform.

    \b
    Example:
      mosaicsync ticket --subject "deploy fails with 502" --message "..." --diagnostics
    """
    from mosaicsync.diagnostics import diagnostics_text

    config = session.config_or_none()
    out = session.output()
    body = message + ("\n\n" + diagnostics_text() if diagnostics else "")
    project_id = None
    with contextlib.suppress(ConfigError):  # a ticket need not name a project
        project_id = session.project_id(config)
    with session.client(config, out) as client:
        answer = client.create_ticket(subject, out.redact(body), project_id)
    from mosaicsync.output import printable

    out.result(
        {"ticket": answer},
        printable(
            f"Ticket #{answer.get('ticket_id')} {answer.get('status')}: {answer.get('message')}"
        ),
    )


@cli.command()
@common_options
def doctor(session: Session) -> None:
    """Check config, key, reachability, versions and clock skew.

    \b
    Example:
      mosaicsync doctor --json
    """
    from mosaicsync.diagnostics import run_doctor

    out = session.output()
    report = run_doctor(session)
    lines = [f"{'ok ' if c['ok'] else 'FAIL'} {c['name']}: {c['detail']}" for c in report["checks"]]
    out.result(report, "\n".join(lines))
    if not report["ok"]:
        sys.exit(1)


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option(
    "--port",
    default=8787,
    show_default=True,
    type=int,
    help="Port to listen on; 0 picks a free one.",
)
@click.option(
    "--data",
    "data_dir",
    type=click.Path(path_type=Path),
    help="Data directory (default: the user's data dir, mosaicsync/local).",
)
@click.option(
    "--database-url",
    envvar="MOSAIC_LOCAL_DATABASE_URL",
    help="Use this PostgreSQL server (a role with CREATEROLE and CREATEDB) "
    "instead of the embedded one.",
)
@click.option(
    "--pg-bin",
    type=click.Path(path_type=Path, file_okay=False, exists=True),
    envvar="MOSAIC_LOCAL_PG_BIN",
    help="Run the managed cluster with these PostgreSQL binaries "
    "(e.g. /usr/lib/postgresql/15/bin).",
)
@click.option(
    "--api-key",
    "api_keys",
    multiple=True,
    envvar="MOSAIC_LOCAL_API_KEY",
    help="Register a fixed key (mk_...) for scripts; each key is its own account. Repeatable.",
)
@click.option("--key-ttl-days", default=30.0, show_default=True, help="Lifetime of generated keys.")
@click.option(
    "--statement-timeout",
    default=30.0,
    show_default=True,
    help="Seconds before a query on the SQL endpoint is cancelled.",
)
@click.option(
    "--max-rows", default=10_000, show_default=True, help="Most rows the SQL endpoint returns."
)
@click.option(
    "--max-result-bytes",
    default=10 * 1024 * 1024,
    show_default=True,
    help="Largest SQL result, in bytes of JSON.",
)
@click.option(
    "--max-file-size",
    default=10 * 1024 * 1024,
    show_default=True,
    help="Largest site file, in bytes.",
)
@click.option(
    "--max-body",
    default=16 * 1024 * 1024,
    show_default=True,
    help="Largest API request body, in bytes (413 beyond).",
)
@click.option(
    "--storage-quota",
    default=20 * 1000**3,
    show_default=True,
    help="Storage quota per project, in bytes (free tier: 20 GB).",
)
@click.option(
    "--emails-per-day",
    default=10,
    show_default=True,
    help="Magic-link emails per project per UTC day; 0 = unlimited.",
)
@click.option(
    "--rate-limit",
    default=1000.0,
    show_default=True,
    help="Requests per second per API key before 429; 0 = off.",
)
@click.option(
    "--projects-per-account",
    default=20,
    show_default=True,
    help="Most projects one API key's account may have (403 beyond); 0 = unlimited.",
)
@click.option(
    "--connections-per-account",
    default=10,
    show_default=True,
    help="Most SQL endpoint connections one account's projects hold at once (429 beyond).",
)
@click.option(
    "--connection-wait",
    default=5.0,
    show_default=True,
    help="Seconds an SQL request waits for a free connection before 429.",
)
@click.option(
    "--provision-delay",
    default=0.0,
    show_default=True,
    help="Seconds a new project stays 'provisioning'.",
)
@click.option(
    "--allow-clock-override", is_flag=True, help="Enable POST /_local/clock so tests can move time."
)
@click.option(
    "--dev",
    is_flag=True,
    help="Live reload: serve HTML with a script that reloads it when the site changes.",
)
@click.option(
    "--reset-db",
    is_flag=True,
    help="Move a PostgreSQL data dir of another major version aside and start afresh.",
)
def local(**opts: object) -> None:
    """Run a local Mosaic platform: the API, sites, storage, outbox and real PostgreSQL.

    Everything lives in one data directory and survives restarts. On first start an API key
    is printed once and stored (mode 0600) in the data directory.

    \b
    Example:
      mosaicsync local --port 8787 --api-key mk_local_dev
      curl -H 'X-API-Key: mk_local_dev' http://127.0.0.1:8787/v1/project/projects
    """
    from mosaicsync.local.server import LocalPlatform, StartupError, default_data_dir
    from mosaicsync.local.settings import LocalSettings

    data_dir = opts.pop("data_dir") or default_data_dir()
    settings = LocalSettings(
        data_dir=Path(data_dir).resolve(),
        api_keys=list(opts.pop("api_keys") or ()),
        fast_db=os.environ.get("MOSAIC_LOCAL_FAST_DB") == "1",
        **opts,  # type: ignore[arg-type]
    )
    platform = LocalPlatform(settings, on_event=_echo_event)
    try:
        try:
            started = platform.start()
        except StartupError as exc:
            raise LocalPlatformError(str(exc)) from None
        click.echo(f"Mosaic local platform (mosaicsync {__version__})")
        click.echo(f"  API       {started.api_url}")
        click.echo(
            f"  Sites     http://<project-id>.localhost:{started.port}/  "
            f"or {started.base_url}/sites/<project-id>/"
        )
        # The only place the operator token is shown: it opens every account's mail and tickets.
        click.echo(f"  Outbox    {started.base_url}/_local/?token={started.operator_token}")
        click.echo(f"  Database  {started.database}")
        click.echo(f"  Data      {started.data_dir}")
        if started.new_key:
            word = "New API key (the old one expired)" if started.new_key.rotated else "API key"
            click.echo(f"{word}: {started.new_key.key}")
            click.echo(f"  shown once; stored with mode 0600 in {started.new_key.path}")
        click.echo(f"Listening on {started.base_url}  (Ctrl-C to stop)", nl=True)
        sys.stdout.flush()
        platform.serve()
    finally:
        platform.close()
    click.echo("Stopped.", err=True)


def main() -> None:
    json_mode = "--json" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("Interrupted.", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except MosaicError as exc:
        from mosaicsync.diagnostics import record_last_error
        from mosaicsync.output import Output

        out = Output(json_mode=json_mode)
        out.error(exc)
        record_last_error(exc, out.redact(exc.message))
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
