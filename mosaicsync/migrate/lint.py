"""Which statements of the pending migrations can lose data, or break what is deployed.

Pure: the classifier reads the migrations' text with PostgreSQL's grammar (pglast) and never
talks to the database. The row counts that make its messages concrete come from one request
built here (`count_sql`) and sent by the runner.

Destructive (data can be lost): DROP TABLE, DROP SCHEMA, DROP ... CASCADE, TRUNCATE, DROP
COLUMN, ALTER COLUMN ... TYPE, DELETE or UPDATE without WHERE. Risky (what is deployed may
break, no data is lost): a table, view or column renamed, SET NOT NULL on an existing column, a
function, procedure, view, trigger or type dropped and not created again in the same file.

Not flagged:
- a statement on an object that an earlier statement of the same run creates (a fresh database
  applying the whole history loses nothing);
- a function, view, trigger or type dropped and created again later in the same file: a
  replacement. With CASCADE it is still destructive, since CASCADE also drops what depends on
  the object (a column of a dropped type, a trigger of a dropped function), which the file does
  not create again;
- statements inside function bodies and DO blocks: the migration does not run them;
- a file the grammar rejects: the runner reports its syntax error instead.

`-- mosaicsync: allow-destructive` between the previous statement and a destructive one marks it
reviewed: it is reported, as a warning, and never stops a run.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any, Literal, NamedTuple

from mosaicsync import findings as fnd
from mosaicsync import sqltext
from mosaicsync.findings import Finding
from mosaicsync.manifest import sql_literal
from mosaicsync.sqltext import LineIndex

if TYPE_CHECKING:
    from mosaicsync.migrate.files import MigrationFile

ALLOW_DESTRUCTIVE = "allow-destructive"
ALLOW_COMMENT = sqltext.ALLOW_DESTRUCTIVE
_ALLOW = re.compile(r"--\s*mosaicsync:\s*allow-destructive\s*$", re.IGNORECASE | re.MULTILINE)
DEFAULT_SCHEMA = "public"
# Rows are counted up to this many; past it the message says "over 1,000,000 rows".
COUNT_CAP = 1_000_000

Level = Literal["destructive", "risky"]

DESTRUCTIVE_HINT = (
    "the data is lost when it is applied; if that is intended, pass --allow-destructive, or put "
    f"`{ALLOW_COMMENT}` on the line above the statement to record the review in the file"
)
RISKY_HINT = (
    "what is deployed may still use the old shape; change it in steps (expand/contract): add "
    "the new, deploy code that uses it, then remove the old in a later migration"
)


class Flagged(NamedTuple):
    """One statement (or one object of a statement naming several) that can lose data or break
    what is deployed; `table` is the table whose rows it affects, as `schema.name`."""

    file: str
    line: int
    column: int
    level: Level
    description: str  # "drops column public.users.email"
    table: str | None = None
    reviewed: bool = False  # marked with `-- mosaicsync: allow-destructive`

    @property
    def stops(self) -> bool:
        """A destructive statement nobody marked as reviewed: the run needs a decision."""
        return self.level == "destructive" and not self.reviewed


# -- names ---------------------------------------------------------------------------------------


def _strings(items: Iterable[Any] | None) -> list[str]:
    return [getattr(i, "sval", str(i)) for i in (items or ())]


def _qualify(parts: Sequence[str]) -> tuple[str, str]:
    """(schema, name) of a possibly qualified name; unqualified names are in `public`."""
    if len(parts) >= 2:
        return parts[-2], parts[-1]
    return DEFAULT_SCHEMA, parts[-1]


def _rel(rv: Any) -> tuple[str, str]:
    return (rv.schemaname or DEFAULT_SCHEMA, rv.relname)


def _dotted(key: tuple[str, ...]) -> str:
    return ".".join(key)


@dataclass
class _Created:
    """What earlier statements of this run created: statements on these lose nothing."""

    relations: set[tuple[str, str]] = field(default_factory=set)
    columns: set[tuple[str, str, str]] = field(default_factory=set)
    schemas: set[str] = field(default_factory=set)
    routines: set[tuple[str, str]] = field(default_factory=set)
    types: set[tuple[str, str]] = field(default_factory=set)
    triggers: set[tuple[str, str, str]] = field(default_factory=set)

    def relation(self, key: tuple[str, str]) -> bool:
        return key in self.relations or key[0] in self.schemas

    def column(self, table: tuple[str, str], column: str) -> bool:
        return self.relation(table) or (*table, column) in self.columns


# What a DROP names, by object kind: how to read its key, and which kind of CREATE replaces it.
_REPLACEABLE = {
    "OBJECT_FUNCTION": "routine",
    "OBJECT_PROCEDURE": "routine",
    "OBJECT_ROUTINE": "routine",
    "OBJECT_VIEW": "relation",
    "OBJECT_MATVIEW": "relation",
    "OBJECT_TRIGGER": "trigger",
    "OBJECT_TYPE": "type",
    "OBJECT_DOMAIN": "type",
}
_WORD = {
    "OBJECT_TABLE": "table",
    "OBJECT_SCHEMA": "schema",
    "OBJECT_FUNCTION": "function",
    "OBJECT_PROCEDURE": "procedure",
    "OBJECT_ROUTINE": "routine",
    "OBJECT_VIEW": "view",
    "OBJECT_MATVIEW": "materialized view",
    "OBJECT_TRIGGER": "trigger",
    "OBJECT_TYPE": "type",
    "OBJECT_DOMAIN": "domain",
    "OBJECT_INDEX": "index",
    "OBJECT_SEQUENCE": "sequence",
    "OBJECT_FOREIGN_TABLE": "foreign table",
    "OBJECT_EXTENSION": "extension",
}


def _drop_key(kind: str, obj: Any) -> tuple[str, ...]:
    """The key a dropped object has in `_Created` (trigger: schema, table, name)."""
    if kind == "OBJECT_SCHEMA":
        return (getattr(obj, "sval", str(obj)),)
    if kind in ("OBJECT_FUNCTION", "OBJECT_PROCEDURE", "OBJECT_ROUTINE", "OBJECT_AGGREGATE"):
        return _qualify(_strings(obj.objname))
    if kind in ("OBJECT_TYPE", "OBJECT_DOMAIN"):
        return _qualify(_strings(obj.names))
    parts = _strings(obj)
    if kind == "OBJECT_TRIGGER":
        return (*_qualify(parts[:-1]), parts[-1])
    return _qualify(parts)


def _creates(node: Any) -> Iterator[tuple[str, tuple[str, ...]]]:
    """(kind, key) of what a statement creates: the kinds are _Created's attributes."""
    name = type(node).__name__
    if name == "CreateStmt":
        yield "relation", _rel(node.relation)
    elif name == "CreateTableAsStmt":
        yield "relation", _rel(node.into.rel)
    elif name == "ViewStmt":
        yield "relation", _rel(node.view)
    elif name == "CreateSchemaStmt" and node.schemaname:
        yield "schema", (node.schemaname,)
    elif name == "CreateFunctionStmt":
        yield "routine", _qualify(_strings(node.funcname))
    elif name == "CreateTrigStmt":
        yield "trigger", (*_rel(node.relation), node.trigname)
    elif name in ("CreateEnumStmt", "CreateRangeStmt"):
        yield "type", _qualify(_strings(node.typeName))
    elif name == "CompositeTypeStmt":
        yield "type", _rel(node.typevar)
    elif name == "CreateDomainStmt":
        yield "type", _qualify(_strings(node.domainname))
    elif name == "DefineStmt" and getattr(node.kind, "name", "") == "OBJECT_TYPE":
        yield "type", _qualify(_strings(node.defnames))
    elif name == "AlterTableStmt":
        table = _rel(node.relation)
        for cmd in node.cmds or ():
            if cmd.subtype.name == "AT_AddColumn" and cmd.def_ is not None:
                yield "column", (*table, cmd.def_.colname)


def _add(created: _Created, kind: str, key: tuple[str, ...]) -> None:
    if kind == "relation":
        created.relations.add((key[0], key[1]))
    elif kind == "column":
        created.columns.add((key[0], key[1], key[2]))
    elif kind == "schema":
        created.schemas.add(key[0])
    elif kind == "routine":
        created.routines.add((key[0], key[1]))
    elif kind == "type":
        created.types.add((key[0], key[1]))
    elif kind == "trigger":
        created.triggers.add((key[0], key[1], key[2]))


def _was_created(created: _Created, kind: str, key: tuple[str, ...]) -> bool:
    if key and key[0] in created.schemas:
        return True
    if kind == "relation":
        return created.relation((key[0], key[1]))
    if kind == "routine":
        return key in created.routines
    if kind == "type":
        return key in created.types
    if kind == "trigger":
        return key in created.triggers or created.relation((key[0], key[1]))
    return False


# -- the classifier ------------------------------------------------------------------------------


class _Parsed(NamedTuple):
    node: Any
    start: int
    gap: str  # the text between the previous statement and this one: comments only


@lru_cache(maxsize=256)
def _parse(text: str) -> tuple[_Parsed, ...] | None:
    from pglast.parser import ParseError, parse_sql  # on first use: ~30 ms of start-up

    try:
        raw = parse_sql(text)
    except ParseError:
        return None
    out = []
    previous_end = 0
    for item in raw:
        start = item.stmt_location
        out.append(_Parsed(item.stmt, start, text[previous_end:start]))
        previous_end = start + item.stmt_len if item.stmt_len else len(text)
    return tuple(out)


def _classify(
    node: Any, created: _Created, later: Sequence[Any]
) -> Iterator[tuple[Level, str, str | None]]:
    """(level, description, table to count) for each thing the statement flags."""
    name = type(node).__name__
    if name == "DropStmt":
        yield from _classify_drop(node, created, later)
    elif name == "AlterTableStmt":
        if getattr(node.objtype, "name", "") != "OBJECT_TABLE":
            return
        table = _rel(node.relation)
        if created.relation(table):
            return
        for cmd in node.cmds or ():
            sub = cmd.subtype.name
            column = cmd.name
            if sub not in ("AT_DropColumn", "AT_AlterColumnType", "AT_SetNotNull"):
                continue
            if column is None or created.column(table, column):
                continue
            where = _dotted((*table, column))
            if sub == "AT_DropColumn":
                cascade = " with CASCADE" if cmd.behavior.name == "DROP_CASCADE" else ""
                yield "destructive", f"drops column {where}{cascade}", _dotted(table)
            elif sub == "AT_AlterColumnType":
                yield "destructive", f"changes the type of column {where}", _dotted(table)
            else:
                yield "risky", f"sets NOT NULL on existing column {where}", _dotted(table)
    elif name == "TruncateStmt":
        for rv in node.relations or ():
            table = _rel(rv)
            if not created.relation(table):
                yield "destructive", f"truncates {_dotted(table)}", _dotted(table)
    elif name in ("DeleteStmt", "UpdateStmt"):
        if node.whereClause is not None or node.relation is None:
            return
        table = _rel(node.relation)
        if created.relation(table):
            return
        verb = "deletes every row of" if name == "DeleteStmt" else "updates every row of"
        yield "destructive", f"{verb} {_dotted(table)} (no WHERE)", _dotted(table)
    elif name == "RenameStmt":
        kind = node.renameType.name
        if kind == "OBJECT_COLUMN" and node.relation is not None:
            table = _rel(node.relation)
            if not created.column(table, node.subname):
                where = _dotted((*table, node.subname))
                yield "risky", f"renames column {where} to {node.newname}", None
        elif kind in ("OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW") and node.relation:
            table = _rel(node.relation)
            if not created.relation(table):
                word = _WORD[kind]
                yield "risky", f"renames {word} {_dotted(table)} to {node.newname}", None


def _classify_drop(
    node: Any, created: _Created, later: Sequence[Any]
) -> Iterator[tuple[Level, str, str | None]]:
    kind = node.removeType.name
    cascade = node.behavior.name == "DROP_CASCADE"
    word = _WORD.get(kind, kind.removeprefix("OBJECT_").lower().replace("_", " "))
    for obj in node.objects or ():
        try:
            key = _drop_key(kind, obj)
        except (AttributeError, IndexError, TypeError):
            continue
        what = f"{word} {_dotted(key)}"
        if kind == "OBJECT_TRIGGER":
            what = f"trigger {key[2]} on {_dotted(key[:2])}"
        if kind == "OBJECT_SCHEMA":
            if key[0] not in created.schemas:
                suffix = " and everything in it" if cascade else ""
                yield "destructive", f"drops schema {key[0]}{suffix}", None
            continue
        if kind in ("OBJECT_TABLE", "OBJECT_FOREIGN_TABLE"):
            if not created.relation((key[0], key[1])):
                extra = " with CASCADE" if cascade else ""
                yield "destructive", f"drops {what}{extra}", _dotted(key)
            continue
        replaceable = _REPLACEABLE.get(kind)
        if replaceable is not None and _was_created(created, replaceable, key):
            continue
        if cascade:
            yield "destructive", f"drops {what} with CASCADE (and all that depends on it)", None
        elif replaceable is not None and not _recreated(replaceable, key, later):
            yield "risky", f"drops {what}, which the file does not create again", None


def _recreated(kind: str, key: tuple[str, ...], later: Sequence[Any]) -> bool:
    return any((kind, key) == made for node in later for made in _creates(node))


def classify(migrations: Sequence[MigrationFile]) -> list[Flagged]:
    """Every destructive or risky statement of `migrations`, given in apply order."""
    created = _Created()
    flagged: list[Flagged] = []
    for migration in migrations:
        parsed = _parse(migration.text)
        if parsed is None:
            continue  # the syntax preflight reports it
        lines = LineIndex(migration.text)
        nodes = [p.node for p in parsed]
        for i, item in enumerate(parsed):
            reviewed = _ALLOW.search(item.gap) is not None
            line, column = lines.line_col(item.start)
            for level, description, table in _classify(item.node, created, nodes[i + 1 :]):
                flagged.append(
                    Flagged(migration.filename, line, column, level, description, table, reviewed)
                )
            for kind, key in _creates(item.node):
                _add(created, kind, key)
            _follow_rename(item.node, created)
    return flagged


def _follow_rename(node: Any, created: _Created) -> None:
    """A table or column this run created keeps counting as created under its new name."""
    if type(node).__name__ != "RenameStmt" or node.relation is None:
        return
    table = _rel(node.relation)
    kind = node.renameType.name
    if kind == "OBJECT_COLUMN" and created.column(table, node.subname):
        created.columns.add((*table, node.newname))
    elif kind in ("OBJECT_TABLE", "OBJECT_VIEW", "OBJECT_MATVIEW") and created.relation(table):
        created.relations.add((table[0], node.newname))


# -- row counts ----------------------------------------------------------------------------------


def count_sql(tables: Iterable[str], cap: int = COUNT_CAP) -> str | None:
    """One read-only request counting the rows of each `schema.name` (up to cap + 1).

    A table that does not exist is left out rather than failing the request. The counts come
    back as one JSON text through a transaction-local setting: a DO block cannot return rows,
    and this needs no object created and no XML support in the server. None when there is
    nothing to count.
    """
    names = sorted(set(tables))
    if not names:
        return None
    pairs = ", ".join(
        f"({sql_literal(name)}, {sql_literal(name.split('.', 1)[0])}, "
        f"{sql_literal(name.split('.', 1)[1])})"
        for name in names
    )
    tag = "$ms$"
    while tag in pairs:  # a table name holding the quote tag would end the block early
        tag = tag[:-1] + "_$"
    return (
        f"DO {tag}\n"
        "DECLARE r record; n bigint; counts jsonb := '{}';\nBEGIN\n"
        "  FOR r IN SELECT t.name, to_regclass(quote_ident(t.nsp) || '.' || quote_ident(t.rel))"
        f" AS rel FROM (VALUES {pairs}) AS t(name, nsp, rel) LOOP\n"
        "    CONTINUE WHEN r.rel IS NULL;\n"
        "    EXECUTE format('SELECT count(*) FROM (SELECT 1 FROM %s LIMIT %s) s', r.rel, "
        f"{cap + 1}) INTO n;\n"
        "    counts := counts || jsonb_build_object(r.name, n);\n"
        "  END LOOP;\n"
        "  PERFORM set_config('mosaicsync.row_counts', counts::text, true);\n"
        f"END {tag};\n"
        "SELECT current_setting('mosaicsync.row_counts') AS counts"
    )


def read_counts(rows: Iterable[dict[str, Any]]) -> dict[str, int]:
    """`schema.name` -> rows, from the answer to `count_sql`; absent tables are left out."""
    counts: dict[str, int] = {}
    for row in rows:
        try:
            found = json.loads(row.get("counts") or "{}")
        except (TypeError, ValueError):
            continue
        if isinstance(found, dict):
            counts.update({str(k): int(v) for k, v in found.items() if isinstance(v, int)})
    return counts


def _rows(n: int, cap: int) -> str:
    if n > cap:
        return f"over {cap:,} rows"
    return f"{n:,} row{'' if n == 1 else 's'}"


def to_findings(
    flagged: Iterable[Flagged], counts: dict[str, int] | None = None, cap: int = COUNT_CAP
) -> list[Finding]:
    """The flagged statements as findings: an unreviewed destructive one is an error."""
    counts = counts or {}
    out = []
    for f in flagged:
        message = f.description
        if f.table is not None and f.table in counts:
            message += f" ({_rows(counts[f.table], cap)})"
        if f.level == "destructive":
            kind, hint = fnd.DESTRUCTIVE, DESTRUCTIVE_HINT
            if f.reviewed:
                message += f" (reviewed: `{ALLOW_COMMENT}`)"
        else:
            kind, hint = fnd.RISKY, RISKY_HINT
        severity: fnd.Severity = "error" if f.stops else "warning"
        out.append(Finding(kind, f.file, f.line, f.column, message, hint, severity))
    return out


def allowed(finding: Finding) -> Finding:
    """A destructive finding the run was told to go on with: kept, as a warning."""
    if finding.severity != "error":
        return finding
    return finding._replace(severity="warning", message=finding.message + " (allowed)")


def tables_to_count(flagged: Iterable[Flagged]) -> list[str]:
    return sorted({f.table for f in flagged if f.table is not None})
