"""mosaic.toml: find it, load and validate it all at once, render a new one, set a project id.

mosaic.toml is committed to git, so it never holds a secret. Every problem in it is reported in
one ConfigError, one line each, as `mosaic.toml: [static] root: <problem>; <fix>`. Defaults:

- `[app] name`: the project folder's name.
- `[static] root`: "public" when that folder exists, else "." (the project folder itself).
- `[static] ignore`: none (`.mosaicignore` and the safe defaults still apply).
- `[migrations] dir`: "migrations", which need not exist; like `[static] root`, it must resolve
  inside the project folder (symlinks followed).
- `[migrations] seed`: none. A `.sql` file, or a folder whose `.sql` files are applied in name
  order, of sample data for local and preview projects (`mosaicsync db seed`, `dev`); it must
  exist and resolve inside the project folder. Never published, even inside the static root.
- `[check] strict`: false; true makes broken references stop a deploy, as `--strict` does.
- `[history] keep`: 20 deploys kept restorable by `rollback` (0 turns history off).
- `[targets.NAME]`: none; a target never borrows `[app] project_id`, because a project on one
  platform does not exist on another.
"""

from __future__ import annotations

import copy
import datetime
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, NamedTuple

from mosaicsync.atomic import write_atomic
from mosaicsync.contract import LOCAL_API_URL, PROJECT_ID_PATTERN
from mosaicsync.credentials import api_url_problem, redact
from mosaicsync.errors import ConfigError

if TYPE_CHECKING:
    from tomlkit.items import InlineTable, Item, Table

CONFIG_NAME = "mosaic.toml"
TARGET_ENV = "MOSAIC_TARGET"
DEFAULT_STATIC_ROOT = "public"
DEFAULT_MIGRATIONS_DIR = "migrations"
DEFAULT_HISTORY_KEEP = 20
MAX_HISTORY_KEEP = 1000

# The keys of each table, with an example line used in the fixes.
_SCHEMA: dict[str, dict[str, str]] = {
    "app": {"name": 'name = "My App"', "project_id": 'project_id = "pod-16f"'},
    "static": {"root": 'root = "public"', "ignore": 'ignore = ["drafts/", "*.psd"]'},
    "migrations": {"dir": 'dir = "migrations"', "seed": 'seed = "seed.sql"'},
    "check": {"strict": "strict = true"},
    "history": {"keep": "keep = 20"},
}
_TARGET_SCHEMA: dict[str, str] = {
    "api_url": f'api_url = "{LOCAL_API_URL}"',
    "project_id": 'project_id = "wave-x7k"',
}
_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)
# Notepad and other Windows editors start UTF-8 files with a byte order mark; TOML does not allow
# one, but a user who saved the file that way expects it to load: it is skipped, and kept on edit.
_BOM = "\ufeff"
_SECRET_PREFIX = "mk_"


class Target(NamedTuple):
    """A platform to deploy to: its API URL (None: the usual resolution) and the project there."""

    name: str
    api_url: str | None
    project_id: str | None


class Config(NamedTuple):
    """A validated mosaic.toml, with every path absolute."""

    path: Path
    project_dir: Path
    name: str
    project_id: str | None
    static_root: Path
    static_ignore: tuple[str, ...]
    migrations_dir: Path
    targets: Mapping[str, Target]
    check_strict: bool = False
    history_keep: int = DEFAULT_HISTORY_KEEP
    seed: Path | None = None  # [migrations] seed: a .sql file or a folder of them

    def target(self, name: str | None) -> Target:
        """The target called `name`; None is the default platform with `[app] project_id`."""
        if name is None:
            return Target("default", None, self.project_id)
        if name in self.targets:
            return self.targets[name]
        if self.targets:
            defined = ", ".join(sorted(self.targets))
            raise ConfigError(
                f"{self.path.name}: no target '{name}'; the targets defined are: {defined}",
                hint=f"use one of them, or add a [targets.{_toml_key(name)}] table to {self.path}",
            )
        raise ConfigError(
            f"{self.path.name}: no target '{name}'; it defines no targets",
            hint=f"add a [targets.{_toml_key(name)}] table with api_url and project_id "
            f"to {self.path}",
        )


def resolve_target_name(flag: str | None, env: Mapping[str, str] | None = None) -> str | None:
    """The selected target: `--target`, else MOSAIC_TARGET in `env` (default: os.environ), else
    None (the default platform). selection.select_target asks this, with the env it was given."""
    if flag:
        return flag
    return (os.environ if env is None else env).get(TARGET_ENV, "").strip() or None


def find_config(start: Path) -> Path:
    """The mosaic.toml in `start` or the nearest of its parents, as git finds its repository."""
    here = Path(start).absolute()
    if not here.is_dir():
        here = here.parent
    for folder in (here, *here.parents):
        candidate = folder / CONFIG_NAME
        if candidate.is_file():
            return candidate
    raise ConfigError(
        f"no {CONFIG_NAME} in {here} or its parents; run `mosaicsync init` or pass --config"
    )


def load_config(path: Path) -> Config:
    """Read and validate `path`; one ConfigError lists every problem, each with its fix."""
    path = Path(path).absolute()
    project_dir = path.parent.resolve()
    doc = _parse(_read_text(path), path.name)
    check = _Checker(path.name)

    secrets = _find_secrets(doc, check)
    for key, value in doc.items():
        if (key,) in secrets:
            continue
        if key != "targets" and key not in _SCHEMA:
            check.unknown((key,), [*_SCHEMA, "targets"], is_table=isinstance(value, dict))
        elif not isinstance(value, dict):
            check.add(key, f"expected a table, got {_type_name(value)}", f"write it as [{key}]")

    app = _table(doc, "app")
    name = check.string(app, ("app", "name"), secrets)
    if name is not None and not name.strip():
        check.add("[app] name", "is empty", f"give the app a name, e.g. {_SCHEMA['app']['name']}")
        name = None
    project_id = _project_id(check, app, ("app", "project_id"), secrets)
    check.unknown_keys(app, ("app",), _SCHEMA["app"], secrets)

    static = _table(doc, "static")
    root = check.string(static, ("static", "root"), secrets)
    if "root" not in static:
        root = DEFAULT_STATIC_ROOT if (project_dir / DEFAULT_STATIC_ROOT).is_dir() else "."
    static_root = _static_root(check, project_dir, root) if root is not None else project_dir
    ignore = _ignore_patterns(check, static, secrets)
    check.unknown_keys(static, ("static",), _SCHEMA["static"], secrets)

    migrations = _table(doc, "migrations")
    mdir = check.string(migrations, ("migrations", "dir"), secrets)
    migrations_dir = (project_dir / (mdir or DEFAULT_MIGRATIONS_DIR)).resolve()
    if not migrations_dir.is_relative_to(project_dir):
        # Like `[static] root`: `migrate up` would apply SQL from anywhere, `migrate new` write it.
        check.add(
            "[migrations] dir",
            f"{mdir!r} resolves to {migrations_dir}, outside the project folder {project_dir}",
            "keep the migrations inside the project (symlinks are followed); "
            'set dir to a folder in it, e.g. dir = "migrations"',
        )
    elif mdir is not None and migrations_dir.exists() and not migrations_dir.is_dir():
        check.add(
            "[migrations] dir",
            f"{mdir!r} is a file, not a folder",
            "point it at the folder that holds the NNNN_name.sql files",
        )
    seed = _seed_path(check, project_dir, check.string(migrations, ("migrations", "seed"), secrets))
    check.unknown_keys(migrations, ("migrations",), _SCHEMA["migrations"], secrets)
    for private in (migrations_dir, seed):
        if private is None or private == static_root or not private.is_relative_to(static_root):
            continue
        # With `root = "."` (the default without public/) the schema and its seed data would
        # otherwise be published with the site.
        inside = private.relative_to(static_root).as_posix()
        slash = "/" if private.is_dir() or private == migrations_dir else ""
        ignore.append("/" + re.sub(r"([*?\[\\])", r"\\\1", inside) + slash)

    checks = _table(doc, "check")
    strict = checks.get("strict", False)
    if not isinstance(strict, bool):
        check.add(
            "[check] strict",
            f"expected true or false, got {_type_name(strict)}",
            "write strict = true",
        )
        strict = False
    check.unknown_keys(checks, ("check",), _SCHEMA["check"], secrets)

    history = _table(doc, "history")
    keep = history.get("keep", DEFAULT_HISTORY_KEEP)
    if isinstance(keep, bool) or not isinstance(keep, int) or not 0 <= keep <= MAX_HISTORY_KEEP:
        shown = _type_name(keep) if not isinstance(keep, int) or isinstance(keep, bool) else keep
        check.add(
            "[history] keep",
            f"expected a whole number of deploys from 0 to {MAX_HISTORY_KEEP}, got {shown}",
            "write keep = 20 (0 turns deploy history and rollback off)",
        )
        keep = DEFAULT_HISTORY_KEEP
    check.unknown_keys(history, ("history",), _SCHEMA["history"], secrets)

    targets = _targets(check, doc, secrets)
    check.raise_if_any(path)
    return Config(
        path=path,
        project_dir=project_dir,
        name=name or project_dir.name,
        project_id=project_id,
        static_root=static_root,
        static_ignore=tuple(ignore),
        migrations_dir=migrations_dir,
        targets=MappingProxyType(targets),
        check_strict=strict,
        history_keep=keep,
        seed=seed,
    )


def render_config(
    name: str,
    *,
    project_id: str | None = None,
    static_root: str = DEFAULT_STATIC_ROOT,
    migrations_dir: str = DEFAULT_MIGRATIONS_DIR,
) -> str:
    """The text of a new mosaic.toml, with comments that explain each table."""
    if project_id is not None:
        _check_project_id(project_id)
    app = [_assign("name", name)]
    if project_id is not None:
        app.append(_assign("project_id", project_id))
    lines = [
        f"# {CONFIG_NAME}: how mosaicsync deploys this folder. Commit it: it never holds a secret",
        "# (the API key comes from `mosaicsync login` or MOSAIC_API_KEY).",
        "# [app] project_id is the Mosaic project to deploy to; `mosaicsync link` writes it.",
        "",
        "[app]",
        *app,
        "",
        "[static]",
        "# The folder published as the site. Files matching `ignore` (gitignore syntax),",
        "# .mosaicignore or the safe defaults (.env, .git/, keys, editor files) are not uploaded.",
        _assign("root", static_root),
        _assign("ignore", []),
        "",
        "[migrations]",
        "# SQL files named NNNN_name.sql, applied in version order by `mosaicsync migrate up`.",
        _assign("dir", migrations_dir),
        "",
        "# Other platforms, chosen with --target NAME or MOSAIC_TARGET. A project there has its",
        "# own id, which `mosaicsync link --target NAME` writes into the table.",
        "# [targets.local]",
        f"# {_TARGET_SCHEMA['api_url']}",
        "",
    ]
    return "\n".join(lines)


def set_project_id(path: Path, project_id: str, *, target: str | None = None) -> None:
    """Set `[app] project_id` (or the target's), keeping the file's comments, order and layout."""
    _check_project_id(project_id)
    table = ("app",) if target is None else ("targets", target)
    where = "[app]" if target is None else f"[targets.{_toml_key(target)}]"
    real = Path(path).resolve()  # a symlinked mosaic.toml is edited where it lives
    text = _read_text(real)
    doc = _parse(text, Path(path).name)
    bom = _BOM if text.startswith(_BOM) else ""
    text = text.removeprefix(_BOM)

    # Imported here: only the commands that edit the file pay for it.
    from tomlkit.exceptions import TOMLKitError

    # The edit must change that one value and nothing else, or the file is left alone.
    expected = copy.deepcopy(doc)
    try:
        node = expected
        for key in table:
            node = node.setdefault(key, {})
        node["project_id"] = project_id
        edited = _with_project_id(text, table, project_id)
        ok = tomllib.loads(edited) == expected
    except (AttributeError, TypeError, ValueError, _CannotEdit, TOMLKitError):
        # tomllib's TOMLDecodeError is a ValueError; so are some of tomlkit's refusals.
        ok = False
    if not ok:
        raise ConfigError(
            f"{Path(path).name}: {where} is written in a way mosaicsync cannot edit safely; "
            "the file was not changed",
            hint=f"add {_assign('project_id', project_id)} to {where} in {path} by hand",
        )
    write_atomic(real, bom + edited)


# -- validation ------------------------------------------------------------------------------


class _Checker:
    """Collects problems so that one error can list them all."""

    def __init__(self, file_name: str) -> None:
        self.file_name = file_name
        self.problems: list[str] = []

    def add(self, where: str, problem: str, fix: str) -> None:
        # Values are quoted in problems; a URL may carry a password, so mask on the way in.
        self.problems.append(redact(f"{self.file_name}: {where}: {problem}; {fix}"))

    def raise_if_any(self, path: Path) -> None:
        if self.problems:
            raise ConfigError("\n".join(self.problems), hint=f"edit {path}")

    def string(
        self, table: dict[str, Any], key: tuple[str, ...], secrets: set[tuple[str, ...]]
    ) -> str | None:
        """The string at `key` in `table`; None, with a problem noted, if it is something else."""
        value = table.get(key[-1])
        if value is None or key in secrets:
            return None
        if isinstance(value, str):
            return value
        example = _example(key)
        self.add(_where(key), f"expected a string, got {_type_name(value)}", f"write {example}")
        return None

    def unknown(self, key: tuple[str, ...], known: list[str], *, is_table: bool = False) -> None:
        """Note an unknown key, with the closest known one and the table it may belong in."""
        import difflib  # only for a mistake: every command loads a config

        name = key[-1]
        close = difflib.get_close_matches(name, known, n=1)
        problem = f"unknown key '{name}'"
        if close:
            problem += f" (did you mean '{close[0]}'?)"
        else:
            homes = [t for t, keys in _SCHEMA.items() if name in keys and (t,) != key[:-1]]
            if homes:
                problem += f" (did you mean [{homes[0]}] {name}?)"
        if len(key) == 1:
            where = f"[{_toml_key(name)}]" if is_table else _toml_key(name)
            fix = (
                f"the tables of {CONFIG_NAME} are [app], [static], [migrations], [check], "
                "[history], [targets.NAME]"
            )
        else:
            where = _where(key)
            table = f"[{_toml_key(key[0])}]" if len(key) == 2 else _where(key[:-1])
            fix = f"the keys of {table} are {', '.join(known)}"
        self.add(where, problem, fix)

    def unknown_keys(
        self,
        table: dict[str, Any],
        key: tuple[str, ...],
        known: Mapping[str, str],
        secrets: set[tuple[str, ...]],
    ) -> None:
        for name in table:
            if name not in known and (*key, name) not in secrets:
                self.unknown((*key, name), list(known))


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            f"{path} does not exist; run `mosaicsync init` or pass --config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path.name}: byte {exc.start} is not UTF-8; save the file as UTF-8"
        ) from None


def _parse(text: str, file_name: str) -> dict[str, Any]:
    try:
        return tomllib.loads(text.removeprefix(_BOM))
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)" or "(at end of document)".
        found = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", str(exc))
        problem, where = found.groups() if found else (str(exc), "end of document")
        where = where.replace("end of document", "end of file")
        raise ConfigError(
            redact(f"{file_name}: {where}: invalid TOML: {problem}; fix the syntax there"),
            hint="TOML's syntax is described at https://toml.io",
        ) from None
    except RecursionError:
        # tomllib recurses once per level of nested arrays and inline tables; a few thousand
        # levels exhaust Python's stack. No configuration needs more than a handful.
        raise ConfigError(
            f"{file_name}: values nested too deeply (TOML nested thousands of levels); "
            "flatten the arrays and tables",
            hint="TOML's syntax is described at https://toml.io",
        ) from None


def _find_secrets(doc: dict[str, Any], check: _Checker) -> set[tuple[str, ...]]:
    """Report every string that looks like an API key, and return their keys to skip elsewhere."""
    found: set[tuple[str, ...]] = set()

    def visit(value: Any, key: tuple[str, ...]) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                visit(v, (*key, k))
        elif isinstance(value, list):
            for v in value:
                visit(v, key)
        elif (
            isinstance(value, str) and value.strip().startswith(_SECRET_PREFIX) and key not in found
        ):
            found.add(key)
            check.add(
                _where(key),
                f"looks like an API key (it starts with {_SECRET_PREFIX})",
                f"delete it: {CONFIG_NAME} is committed to git, so keys belong in "
                "`mosaicsync login` or MOSAIC_API_KEY",
            )

    visit(doc, ())
    return found


def _project_id(
    check: _Checker, table: dict[str, Any], key: tuple[str, ...], secrets: set[tuple[str, ...]]
) -> str | None:
    value = check.string(table, key, secrets)
    if value is not None and not _PROJECT_ID.fullmatch(value):
        check.add(
            _where(key),
            f"{value!r} is not a Mosaic project id (like 'pod-16f')",
            "copy the id from the platform, or run `mosaicsync link` to set it",
        )
        return None
    return value


def _static_root(check: _Checker, project_dir: Path, root: str) -> Path:
    resolved = (project_dir / root).resolve()
    fix_folder = 'set root to the folder that holds your site, e.g. root = "public"'
    if not root.strip():
        check.add("[static] root", "is empty", 'use root = "." for the project folder itself')
    elif not resolved.is_relative_to(project_dir):
        check.add(
            "[static] root",
            f"{root!r} resolves to {resolved}, outside the project folder {project_dir}",
            "keep the site inside the project (symlinks are followed); " + fix_folder,
        )
    elif not resolved.exists():
        check.add(
            "[static] root",
            f"{root!r} does not exist in {project_dir}",
            "create the folder, or " + fix_folder,
        )
    elif not resolved.is_dir():
        check.add("[static] root", f"{root!r} is a file, not a folder", fix_folder)
    return resolved


def _seed_path(check: _Checker, project_dir: Path, seed: str | None) -> Path | None:
    """`[migrations] seed`, resolved like `[static] root`; given, it must exist in the project."""
    if seed is None:
        return None
    resolved = (project_dir / seed).resolve()
    fix = 'set seed to a .sql file or a folder of them in the project, e.g. seed = "seed.sql"'
    if not seed.strip():
        check.add("[migrations] seed", "is empty", fix + ", or remove the key")
    elif not resolved.is_relative_to(project_dir):
        check.add(
            "[migrations] seed",
            f"{seed!r} resolves to {resolved}, outside the project folder {project_dir}",
            "keep the seed data inside the project (symlinks are followed); " + fix,
        )
    elif not resolved.exists():
        check.add(
            "[migrations] seed",
            f"{seed!r} does not exist in {project_dir}",
            "create it, or " + fix + ", or remove the key",
        )
    elif not (resolved.is_file() or resolved.is_dir()):
        check.add("[migrations] seed", f"{seed!r} is neither a file nor a folder", fix)
    else:
        return resolved
    return None


def _ignore_patterns(
    check: _Checker, static: dict[str, Any], secrets: set[tuple[str, ...]]
) -> list[str]:
    value = static.get("ignore", [])
    key = ("static", "ignore")
    if key in secrets:
        return []
    fix = f"write a list of gitignore patterns, e.g. {_SCHEMA['static']['ignore']}"
    if not isinstance(value, list):
        check.add(_where(key), f"expected an array of strings, got {_type_name(value)}", fix)
        return []
    patterns: list[str] = []
    for index, pattern in enumerate(value):
        where = f"{_where(key)}[{index}]"
        if not isinstance(pattern, str):
            check.add(where, f"expected a string, got {_type_name(pattern)}", fix)
            continue
        import pathspec  # only for a project that has patterns: it costs a start ~15 ms

        try:
            pathspec.GitIgnoreSpec.from_lines([pattern])
        except ValueError as exc:  # pathspec's pattern errors are ValueErrors
            check.add(where, f"{pattern!r} is not a valid gitignore pattern ({exc})", fix)
            continue
        patterns.append(pattern)
    return patterns


def _targets(
    check: _Checker, doc: dict[str, Any], secrets: set[tuple[str, ...]]
) -> dict[str, Target]:
    targets: dict[str, Target] = {}
    for name, table in _table(doc, "targets").items():
        key = ("targets", name)
        if not isinstance(table, dict):
            if key not in secrets:
                check.add(
                    _where(key),
                    f"expected a table, got {_type_name(table)}",
                    f"write it as [targets.{_toml_key(name)}] with {_TARGET_SCHEMA['api_url']}",
                )
            continue
        api_url = check.string(table, (*key, "api_url"), secrets)
        if api_url is not None:
            problem = api_url_problem(api_url)
            if problem:
                check.add(
                    _where((*key, "api_url")),
                    f"{api_url!r} {problem}",
                    f"write the platform's base URL, e.g. {_TARGET_SCHEMA['api_url']}",
                )
                api_url = None
            else:
                api_url = api_url.strip().rstrip("/")
        project_id = _project_id(check, table, (*key, "project_id"), secrets)
        check.unknown_keys(table, key, _TARGET_SCHEMA, secrets)
        targets[name] = Target(name, api_url, project_id)
    return targets


def _table(doc: dict[str, Any], name: str) -> dict[str, Any]:
    value = doc.get(name, {})
    return value if isinstance(value, dict) else {}


def _check_project_id(project_id: str) -> None:
    if not _PROJECT_ID.fullmatch(project_id):
        raise ConfigError(
            f"{project_id!r} is not a Mosaic project id (like 'pod-16f')",
            hint="copy the id from the platform",
        )


def _where(key: tuple[str, ...]) -> str:
    """`[static] root` for ("static", "root"); `[targets.local]` for ("targets", "local")."""
    if len(key) == 1:
        return key[0]
    if key[0] == "targets" and len(key) == 2:
        return f"[targets.{_toml_key(key[1])}]"
    if key[0] == "targets":
        return f"[targets.{_toml_key(key[1])}] {'.'.join(map(_toml_key, key[2:]))}"
    return f"[{_toml_key(key[0])}] {'.'.join(map(_toml_key, key[1:]))}"


def _example(key: tuple[str, ...]) -> str:
    if key[0] == "targets":
        return _TARGET_SCHEMA.get(key[-1], f'{key[-1]} = "..."')
    return _SCHEMA.get(key[0], {}).get(key[-1], f'{key[-1]} = "..."')


def _type_name(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, datetime.date | datetime.time):
        return "a date or time"
    return type(value).__name__


def _toml_key(key: str) -> str:
    """`key` as TOML writes it: bare when it can be, else quoted by tomli-w."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    import tomli_w  # writing only; loading is tomllib

    return tomli_w.dumps({key: 0}).removesuffix(" = 0\n")


def _assign(key: str, value: object) -> str:
    """One `key = value` line; tomli-w does the quoting and escaping."""
    import tomli_w

    return tomli_w.dumps({key: value}).rstrip("\n")


# -- editing in place -----------------------------------------------------------------------------


class _CannotEdit(Exception):
    """The table to edit is something else (a string, an array of tables) or tomlkit gave up."""


def _with_project_id(text: str, table: tuple[str, ...], project_id: str) -> str:
    """`text` with `project_id` set in `table`; tomlkit keeps everything else as it was written."""
    # A CRLF file is edited as LF and converted back, so that the lines added match the others.
    crlf = "\r\n" in text and "\n" not in text.replace("\r\n", "")
    source = text.replace("\r\n", "\n") if crlf else text
    edited = _edited(source, table, project_id)
    return edited.replace("\n", "\r\n") if crlf else edited


def _edited(source: str, table: tuple[str, ...], project_id: str) -> str:
    import tomlkit
    from tomlkit.items import InlineTable, String, StringType, Table

    doc = tomlkit.parse(source)
    node: Any = doc
    for key in table:
        child = node.get(key)
        if child is None and not isinstance(node, InlineTable):
            return _with_new_table(source, table, project_id)
        if child is None:
            _add_inline(node, key, tomlkit.inline_table())
            child = node[key]
        if not isinstance(child, Table | InlineTable):
            raise _CannotEdit(key)
        node = child

    old = node.get("project_id")
    literal = isinstance(old, String) and old.type == StringType.SLL
    new = tomlkit.string(project_id, literal=literal)
    if old is not None:
        node["project_id"] = new
        placed = node["project_id"]
        if old.trivia.comment and set(old.trivia.comment_ws) == {" "}:
            # Keep a trailing comment in its column when the new value leaves room for it.
            width = len(old.trivia.comment_ws) + len(old.as_string()) - len(placed.as_string())
            placed.trivia.comment_ws = " " * max(1, width)
    elif isinstance(node, InlineTable):
        _add_inline(node, "project_id", new)
    else:
        _add_first(node, new)
    return doc.as_string()


def _with_new_table(source: str, table: tuple[str, ...], project_id: str) -> str:
    """A table that does not exist yet goes at the end, after a blank line."""
    if source and not source.endswith("\n"):
        source += "\n"
    if source.strip() and not source.endswith("\n\n"):
        source += "\n"
    header = "[" + ".".join(_toml_key(key) for key in table) + "]"
    return f"{source}{header}\n{_assign('project_id', project_id)}\n"


def _add_first(table: Table, value: Item) -> None:
    """Add `project_id` right after the table's header, indented like the key below it."""
    first = next((item for key, item in table.value.body if key is not None), None)
    if table.is_super_table() or first is None:
        # Dotted keys (`app.name = ...`) get one more beside them; an empty table, its first.
        table["project_id"] = value
        return
    value.trivia.indent = first.trivia.indent
    # tomlkit appends to a table, after any comments that introduce the next one; only this
    # (private) method inserts at a position.
    table.value._insert_at(0, "project_id", value)


def _add_inline(table: InlineTable, key: str, value: Item) -> None:
    """Add `key` to an inline table, keeping its padding: `{ a = 1, key = ... }`."""
    import tomlkit
    from tomlkit.items import Whitespace

    body = table.value.body
    padded = bool(body) and body[-1][0] is None and isinstance(body[-1][1], Whitespace)
    value.trivia.indent = "" if padded or not table else " "
    table[key] = value
    if padded:
        table.append(None, tomlkit.ws(" "))
