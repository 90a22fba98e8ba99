"""The command line: parse, call the library, render. No HTTP and no SQL here."""

from __future__ import annotations

import functools
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

    def target_of(self, config: Any) -> Any:
        name = self.target or os.environ.get("MOSAIC_TARGET") or None
        return config.target(name) if config is not None else None

    def api_url_for(self, config: Any) -> str:
        from mosaicsync.credentials import resolve_api_url

        return resolve_api_url(self.api_url, self.target_of(config))

    def client(self, config: Any, out: Any, key: str | None = None) -> Any:
        from mosaicsync.api import MosaicClient
        from mosaicsync.credentials import resolve_api_key

        url = self.api_url_for(config)
        api_key = key or resolve_api_key(url).value
        out.secrets = (*out.secrets, api_key)
        return MosaicClient(url, api_key, on_request=out.request)

    def project_id(self, config: Any) -> str:
        if self.project:
            return self.project
        if os.environ.get("MOSAIC_PROJECT"):
            return os.environ["MOSAIC_PROJECT"]
        target = self.target_of(config)
        if target is not None and target.project_id:
            return target.project_id
        if config is not None and config.project_id:
            return config.project_id
        raise ConfigError(
            "no project selected",
            hint="run `mosaicsync link PROJECT_ID` (or `link --create NAME`), "
            "or pass --project / set MOSAIC_PROJECT",
        )


def common_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """The flags every platform command takes, gathered into a `Session`."""

    @click.option("--json", "json_mode", is_flag=True, help="Print one JSON document on stdout.")
    @click.option("-v", "--verbose", is_flag=True, help="Show each request (secrets redacted).")
    @click.option(
        "--config",
        "config_path",
        type=click.Path(path_type=Path),
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
        set_project_id(config.path, project_id, target=session.target)
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
    set_project_id(config.path, project_id, target=session.target)
    out.result(
        {"project_id": project_id, "url": project.get("url"), "config": str(config.path)},
        f"Linked {config.path} to {project_id} ({project.get('url')})",
    )


# -- deploy ----------------------------------------------------------------------------------------


def _deploy(session: Session, dry_run: bool, **opts: Any) -> None:
    from mosaicsync.deploy import Deployer, DeployOptions
    from mosaicsync.output import human_size

    config = session.config()
    out = session.output()
    project_id = session.project_id(config)
    options = DeployOptions(dry_run=dry_run, **opts)
    with session.client(config, out) as client:
        result = Deployer(config, client, project_id, options, out.deploy_event).run()
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
        human = "\n".join(lines)
    else:
        storage = f", {len(result.storage)} in storage" if result.storage else ""
        human = (
            f"Deployed {project_id}: uploaded {result.uploaded} ({human_size(result.bytes)}), "
            f"unchanged {result.unchanged}, pruned {result.pruned}{storage} "
            f"in {seconds:.2f} s\n{result.url}/"
        )
    out.result(data, human)


def deploy_options(func: Callable[..., Any]) -> Callable[..., Any]:
    func = click.option("--concurrency", default=8, show_default=True, help="Parallel uploads.")(
        func
    )
    func = click.option(
        "--no-prune", "prune", is_flag=True, flag_value=False, default=True,
        help="Keep remote files that are gone locally.",
    )(func)  # fmt: skip
    func = click.option(
        "--no-rewrite", "rewrite", is_flag=True, flag_value=False, default=True,
        help="Do not point HTML/CSS at storage URLs.",
    )(func)  # fmt: skip
    func = click.option(
        "--allow-secrets", is_flag=True,
        help="Let .mosaicignore re-include files the safe defaults exclude (.env, keys).",
    )(func)  # fmt: skip
    return func


@cli.command()
@click.option("--dry-run", is_flag=True, help="Print the plan; change nothing.")
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
    default=200.0,
    show_default=True,
    help="Requests per second per API key before 429; 0 = off.",
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
        except Exception as exc:
            if type(exc).__name__ == "PostgresError":
                raise LocalPlatformError(str(exc)) from None
            raise
        click.echo(f"Mosaic local platform (mosaicsync {__version__})")
        click.echo(f"  API       {started.api_url}")
        click.echo(
            f"  Sites     http://<project-id>.localhost:{started.port}/  "
            f"or {started.base_url}/sites/<project-id>/"
        )
        click.echo(f"  Outbox    {started.base_url}/_local/")
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
        from mosaicsync.output import Output

        Output(json_mode=json_mode).error(exc)
        sys.exit(exc.exit_code)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
