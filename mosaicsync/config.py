"""mosaic.toml: find it, load and validate it all at once, render a new one, set a project id.

mosaic.toml is committed to git, so it never holds a secret. Every problem in it is reported in
one ConfigError, one line each, as `mosaic.toml: [static] root: <problem>; <fix>`. Defaults:

- `[app] name`: the project folder's name.
- `[static] root`: "public" when that folder exists, else "." (the project folder itself).
- `[static] ignore`: none (`.mosaicignore` and the safe defaults still apply).
- `[migrations] dir`: "migrations", which need not exist.
- `[targets.NAME]`: none; a target never borrows `[app] project_id`, because a project on one
  platform does not exist on another.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import difflib
import os
import re
import stat
import tempfile
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pathspec
import tomli_w

from mosaicsync.contract import LOCAL_API_URL, PROJECT_ID_PATTERN
from mosaicsync.credentials import api_url_problem, redact
from mosaicsync.errors import ConfigError

CONFIG_NAME = "mosaic.toml"
TARGET_ENV = "MOSAIC_TARGET"
DEFAULT_STATIC_ROOT = "public"
DEFAULT_MIGRATIONS_DIR = "migrations"

# The keys of each table, with an example line used in the fixes.
_SCHEMA: dict[str, dict[str, str]] = {
    "app": {"name": 'name = "My App"', "project_id": 'project_id = "pod-16f"'},
    "static": {"root": 'root = "public"', "ignore": 'ignore = ["drafts/", "*.psd"]'},
    "migrations": {"dir": 'dir = "migrations"'},
}
_TARGET_SCHEMA: dict[str, str] = {
    "api_url": f'api_url = "{LOCAL_API_URL}"',
    "project_id": 'project_id = "wave-x7k"',
}
_PROJECT_ID = re.compile(PROJECT_ID_PATTERN)
_SECRET_PREFIX = "mk_"


@dataclass(frozen=True)
class Target:
    """A platform to deploy to: its API URL (None: the usual resolution) and the project there."""

    name: str
    api_url: str | None
    project_id: str | None


@dataclass(frozen=True)
class Config:
    """A validated mosaic.toml, with every path absolute."""

    path: Path
    project_dir: Path
    name: str
    project_id: str | None
    static_root: Path
    static_ignore: tuple[str, ...]
    migrations_dir: Path
    targets: Mapping[str, Target]

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


def resolve_target_name(flag: str | None) -> str | None:
    """The selected target: `--target`, else MOSAIC_TARGET, else None (the default platform)."""
    if flag:
        return flag
    return os.environ.get(TARGET_ENV, "").strip() or None


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
    if mdir is not None and migrations_dir.exists() and not migrations_dir.is_dir():
        check.add(
            "[migrations] dir",
            f"{mdir!r} is a file, not a folder",
            "point it at the folder that holds the NNNN_name.sql files",
        )
    check.unknown_keys(migrations, ("migrations",), _SCHEMA["migrations"], secrets)
    if migrations_dir != static_root and migrations_dir.is_relative_to(static_root):
        # With `root = "."` (the default without public/) the schema and its seed data would
        # otherwise be published with the site.
        inside = migrations_dir.relative_to(static_root).as_posix()
        ignore.append("/" + re.sub(r"([*?\[\\])", r"\\\1", inside) + "/")

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
        "# SQL files named NNNN_name.sql, applied in version order by `mosaicsync migrate`.",
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
    """Set `[app] project_id` (or the target's) by editing one line, so comments and layout stay."""
    _check_project_id(project_id)
    table = ("app",) if target is None else ("targets", target)
    where = "[app]" if target is None else f"[targets.{_toml_key(target)}]"
    real = Path(path).resolve()  # a symlinked mosaic.toml is edited where it lives
    text = _read_text(real)
    doc = _parse(text, Path(path).name)
    edited = _with_project_id(text, table, project_id)

    # The edit must change that one value and nothing else, or the file is left alone.
    expected = copy.deepcopy(doc)
    try:
        node = expected
        for key in table:
            node = node.setdefault(key, {})
        node["project_id"] = project_id
        ok = tomllib.loads(edited) == expected
    except (AttributeError, tomllib.TOMLDecodeError):
        ok = False
    if not ok:
        raise ConfigError(
            f"{Path(path).name}: {where} is written in a way mosaicsync cannot edit safely "
            "(an inline table?); the file was not changed",
            hint=f"add {_assign('project_id', project_id)} to {where} in {path} by hand",
        )
    _write_atomic(real, edited)


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
            fix = f"the tables of {CONFIG_NAME} are [app], [static], [migrations], [targets.NAME]"
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
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)" or "(at end of document)".
        found = re.fullmatch(r"(.*) \(at (line \d+, column \d+|end of document)\)", str(exc))
        problem, where = found.groups() if found else (str(exc), "end of document")
        where = where.replace("end of document", "end of file")
        raise ConfigError(
            redact(f"{file_name}: {where}: invalid TOML: {problem}; fix the syntax there"),
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
    return tomli_w.dumps({key: 0}).removesuffix(" = 0\n")


def _assign(key: str, value: object) -> str:
    """One `key = value` line; tomli-w does the quoting and escaping."""
    return tomli_w.dumps({key: value}).rstrip("\n")


# -- editing without rewriting ---------------------------------------------------------------


@dataclass(frozen=True)
class _Statement:
    """One TOML statement: a table header or a key/value pair, possibly spanning lines."""

    start: int  # offset of its first character
    end: int  # offset of the newline that ends it, or len(text)
    kind: str  # "table", "array" (an [[array]] header) or "value"
    path: tuple[str, ...]  # the header's key, or the key relative to its table
    eq: int  # offset of the "=" of a key/value pair, else -1
    comment: int  # offset of a trailing comment, else -1


def _statements(text: str) -> list[_Statement]:
    """Split TOML text into statements; strings, arrays and comments may hold any character."""
    out: list[_Statement] = []
    i, n = 0, len(text)
    while i < n:
        if text[i] in " \t\r\n":
            i += 1
            continue
        if text[i] == "#":
            i = _line_end(text, i)
            continue
        start, depth, eq, comment = i, 0, -1, -1
        while i < n and not (text[i] == "\n" and depth <= 0):
            c = text[i]
            if c in "\"'":
                i = _string_end(text, i)
                continue
            if c == "#":
                if depth <= 0 and comment < 0:
                    comment = i
                i = _line_end(text, i)
                continue
            if c in "[{":
                depth += 1
            elif c in "]}":
                depth -= 1
            elif c == "=" and depth == 0 and eq < 0:
                eq = i
            i += 1
        source = text[start:i].rstrip("\r")
        if source.startswith("[["):
            out.append(_Statement(start, i, "array", _header_path(source), -1, comment))
        elif source.startswith("["):
            out.append(_Statement(start, i, "table", _header_path(source), -1, comment))
        else:
            key_path = _header_path(text[start:eq] + "= 0")
            out.append(_Statement(start, i, "value", key_path, eq, comment))
    return out


def _line_end(text: str, i: int) -> int:
    j = text.find("\n", i)
    return len(text) if j < 0 else j


def _string_end(text: str, i: int) -> int:
    """The offset just past the string that starts at `i`."""
    n = len(text)
    quote = text[i]
    if text.startswith(quote * 3, i):
        j = i + 3
        while True:
            k = text.find(quote * 3, j)
            if k < 0:
                return n
            backslashes = len(text[j:k]) - len(text[j:k].rstrip("\\"))
            if quote == '"' and backslashes % 2:
                j = k + 1
                continue
            end = k + 3
            while end < n and end < k + 5 and text[end] == quote:  # up to 2 quotes of content
                end += 1
            return end
    j = i + 1
    while j < n and text[j] != "\n":
        if quote == '"' and text[j] == "\\":
            j += 2
            continue
        if text[j] == quote:
            return j + 1
        j += 1
    return j


def _header_path(source: str) -> tuple[str, ...]:
    """The key path that one statement defines, read by tomllib itself rather than by hand."""
    node: Any = tomllib.loads(source)
    path: list[str] = []
    while isinstance(node, dict) and len(node) == 1:
        key = next(iter(node))
        path.append(key)
        node = node[key]
    return tuple(path)


def _with_project_id(text: str, table: tuple[str, ...], project_id: str) -> str:
    newline = "\r\n" if "\r\n" in text else "\n"
    key = (*table, "project_id")
    current: tuple[str, ...] | None = ()
    header: _Statement | None = None
    first_value: _Statement | None = None
    dotted: tuple[_Statement, tuple[str, ...]] | None = None
    for st in _statements(text):
        if st.kind == "table":
            current = st.path
            if st.path == table:
                header = st
            continue
        if st.kind == "array" or current is None:
            current = None
            continue
        full = current + st.path
        if full == key:
            return _replace_value(text, st, project_id)
        if current == table and first_value is None:
            first_value = st
        if len(current) < len(table) and full[: len(table)] == table and len(full) > len(table):
            dotted = (st, current)

    if header is not None:
        indent = _indent(text, first_value or header)
        line = indent + _assign("project_id", project_id)
        return _insert_after(text, header, line, newline)
    if dotted is not None:
        # The table is written with dotted keys (`app.name = ...`): add one more beside them.
        st, current = dotted
        dotted_key = ".".join(_toml_key(k) for k in key[len(current) :])
        line = _indent(text, st) + f"{dotted_key} = {_assign('v', project_id)[4:]}"
        return _insert_after(text, st, line, newline)
    header_line = "[" + ".".join(_toml_key(k) for k in table) + "]"
    body = text if not text or text.endswith("\n") else text + newline
    if body.strip() and not body.endswith(newline * 2):
        body += newline
    return body + header_line + newline + _assign("project_id", project_id) + newline


def _replace_value(text: str, st: _Statement, project_id: str) -> str:
    end = st.comment if st.comment >= 0 else st.end
    value_start = st.eq + 1
    while text[value_start] in " \t":
        value_start += 1
    value_end = value_start + len(text[value_start:end].rstrip(" \t\r"))
    old = text[value_start:value_end]
    literal = old.startswith("'") and not old.startswith("'''")
    new = f"'{project_id}'" if literal else _assign("v", project_id)[4:]
    gap = text[value_end:end]
    if st.comment >= 0 and gap and set(gap) == {" "}:
        # Keep a trailing comment in its column when the new value leaves room for it.
        gap = " " * max(1, len(gap) + len(old) - len(new))
    return text[:value_start] + new + gap + text[end:]


def _indent(text: str, st: _Statement) -> str:
    line_start = text.rfind("\n", 0, st.start) + 1
    return text[line_start : st.start]


def _insert_after(text: str, st: _Statement, line: str, newline: str) -> str:
    if st.end >= len(text):
        return text + newline + line
    return text[: st.end + 1] + line + newline + text[st.end + 1 :]


def _write_atomic(path: Path, text: str) -> None:
    """Replace `path` by a complete new file with the same mode; a crash leaves the old one."""
    mode = stat.S_IMODE(path.stat().st_mode)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text.encode("utf-8"))
            f.flush()
            os.fsync(f.fileno())
        os.replace(name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        raise
