"""The destructive-migration classifier: pure, no database (migrate/lint.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mosaicsync import findings, sqltext
from mosaicsync.migrate.files import MigrationFile, load_migrations
from mosaicsync.migrate.lint import (
    COUNT_CAP,
    Flagged,
    allowed,
    classify,
    count_sql,
    read_counts,
    tables_to_count,
    to_findings,
)


def mig(version: int, text: str) -> MigrationFile:
    text = sqltext.normalize(text)
    return MigrationFile(
        version,
        "m",
        Path(f"{version:04d}_m.sql"),
        text,
        sqltext.checksum(text),
        sqltext.is_transactional(text),
    )


def flags(*texts: str) -> list[tuple[str, str]]:
    """(level, description) of each flagged statement of migrations 1, 2, ... in order."""
    return [(f.level, f.description) for f in classify([mig(i, t) for i, t in enumerate(texts, 1)])]


@pytest.mark.parametrize(
    ("sql", "expected"),
    [
        ("DROP TABLE users;", ("destructive", "drops table public.users")),
        ("DROP TABLE IF EXISTS app.users;", ("destructive", "drops table app.users")),
        ("DROP SCHEMA app;", ("destructive", "drops schema app")),
        ("DROP SCHEMA app CASCADE;", ("destructive", "drops schema app and everything in it")),
        (
            "ALTER TABLE users DROP COLUMN email;",
            ("destructive", "drops column public.users.email"),
        ),
        (
            "ALTER TABLE users ALTER COLUMN age TYPE bigint;",
            ("destructive", "changes the type of column public.users.age"),
        ),
        ("TRUNCATE todos;", ("destructive", "truncates public.todos")),
        ("DELETE FROM todos;", ("destructive", "deletes every row of public.todos (no WHERE)")),
        (
            "UPDATE todos SET done = true;",
            ("destructive", "updates every row of public.todos (no WHERE)"),
        ),
        (
            "DROP INDEX todos_idx CASCADE;",
            (
                "destructive",
                "drops index public.todos_idx with CASCADE (and all that depends on it)",
            ),
        ),
        ("ALTER TABLE users RENAME TO people;", ("risky", "renames table public.users to people")),
        (
            "ALTER TABLE users RENAME COLUMN email TO mail;",
            ("risky", "renames column public.users.email to mail"),
        ),
        (
            "ALTER TABLE users ALTER COLUMN email SET NOT NULL;",
            ("risky", "sets NOT NULL on existing column public.users.email"),
        ),
        (
            "DROP FUNCTION touch();",
            ("risky", "drops function public.touch, which the file does not create again"),
        ),
        (
            "DROP VIEW open_todos;",
            ("risky", "drops view public.open_todos, which the file does not create again"),
        ),
        (
            "DROP TRIGGER t_touch ON todos;",
            (
                "risky",
                "drops trigger t_touch on public.todos, which the file does not create again",
            ),
        ),
        (
            "DROP TYPE mood;",
            ("risky", "drops type public.mood, which the file does not create again"),
        ),
    ],
)
def test_each_kind_is_classified(sql: str, expected: tuple[str, str]) -> None:
    assert flags(sql) == [expected]


@pytest.mark.parametrize(
    "sql",
    [
        "DELETE FROM todos WHERE done;",
        "UPDATE todos SET done = true WHERE id = 1;",
        "ALTER TABLE todos ADD COLUMN tag text;",
        "ALTER TABLE todos ALTER COLUMN tag DROP NOT NULL;",
        "DROP INDEX todos_idx;",
        "CREATE TABLE t (a int); INSERT INTO todos (task) VALUES ('x');",
        "SELECT 1;",
    ],
)
def test_harmless_statements_are_not_flagged(sql: str) -> None:
    assert flags(sql) == []


def test_statements_in_function_bodies_and_do_blocks_are_not_classified() -> None:
    assert (
        flags(
            "CREATE FUNCTION wipe() RETURNS void LANGUAGE sql AS $$ DELETE FROM todos $$;\n"
            "CREATE FUNCTION wipe2() RETURNS void LANGUAGE plpgsql AS $$\n"
            "BEGIN DROP TABLE todos; TRUNCATE todos; END $$;\n"
            "CREATE FUNCTION wipe3() RETURNS void LANGUAGE sql\n"
            "BEGIN ATOMIC DELETE FROM todos; END;\n"
            "DO $$ BEGIN EXECUTE 'DROP TABLE todos'; DELETE FROM todos; END $$;\n"
        )
        == []
    )


def test_drop_then_create_in_the_same_file_is_a_replacement() -> None:
    text = (
        "DROP TRIGGER IF EXISTS t_touch ON todos;\n"
        "DROP FUNCTION IF EXISTS touch();\n"
        "CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$;\n"
        "CREATE TRIGGER t_touch BEFORE UPDATE ON todos FOR EACH ROW EXECUTE FUNCTION touch();\n"
        "DROP VIEW open_todos;\n"
        "CREATE VIEW open_todos AS SELECT * FROM todos WHERE NOT done;\n"
        "DROP MATERIALIZED VIEW stats;\n"
        "CREATE MATERIALIZED VIEW stats AS SELECT count(*) FROM todos;\n"
        "DROP TYPE mood;\n"
        "CREATE TYPE mood AS ENUM ('ok', 'sad');\n"
    )
    assert flags(text) == []
    # Created again only in a LATER file: the file itself leaves the object dropped.
    assert [
        level for level, _ in flags("DROP VIEW open_todos;", "CREATE VIEW open_todos AS SELECT 1;")
    ] == ["risky"]


def test_cascade_is_destructive_even_in_a_replacement() -> None:
    # CASCADE also drops what depends on the type (a column of that type, with its data).
    assert flags("DROP TYPE mood CASCADE;\nCREATE TYPE mood AS ENUM ('ok');") == [
        ("destructive", "drops type public.mood with CASCADE (and all that depends on it)")
    ]


def test_objects_created_earlier_in_the_same_run_are_not_flagged() -> None:
    assert (
        flags(
            "CREATE TABLE todos (id int, task text, done bool);\nCREATE SCHEMA app;",
            "ALTER TABLE todos DROP COLUMN done, ALTER COLUMN task TYPE varchar(80),\n"
            "  ALTER COLUMN task SET NOT NULL;\nTRUNCATE todos;\nDELETE FROM todos;",
            "ALTER TABLE todos RENAME TO items;\nALTER TABLE items RENAME COLUMN task TO title;\n"
            "DROP TABLE items CASCADE;",
            "CREATE TABLE app.t (a int);\nDROP SCHEMA app CASCADE;",
            "CREATE VIEW v AS SELECT 1;\n"
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'select 1';",
            "DROP VIEW v;\nDROP FUNCTION f();",
        )
        == []
    )
    # A column added by this run may go; an existing one of the same table may not.
    assert flags(
        "ALTER TABLE users ADD COLUMN nick text;",
        "ALTER TABLE users DROP COLUMN nick, DROP COLUMN email;",
    ) == [("destructive", "drops column public.users.email")]


def test_allow_comment_marks_the_next_statement_reviewed_and_only_it() -> None:
    text = (
        "-- mosaicsync: allow-destructive\n"
        "DROP TABLE old_a;\n"
        "--   MOSAICSYNC:allow-destructive\n"
        "/* why: the export went to storage */\n"
        "DROP TABLE old_b;\n"
        "DROP TABLE old_c; -- mosaicsync: allow-destructive\n"
        "DROP TABLE old_d;\n"
        "DROP TABLE old_e;\n"
    )
    flagged = classify([mig(1, text)])
    assert [(f.description.split()[-1], f.reviewed) for f in flagged] == [
        ("public.old_a", True),
        ("public.old_b", True),
        ("public.old_c", False),
        ("public.old_d", True),  # the comment follows old_c's `;`: it stands above old_d
        ("public.old_e", False),
    ]
    # A string holding the words is not a comment.
    assert not classify([mig(1, "SELECT '-- mosaicsync: allow-destructive';\nDROP TABLE x;")])[
        0
    ].reviewed


def test_positions_and_one_record_per_object() -> None:
    flagged = classify([mig(3, "SELECT 1;\n\n  TRUNCATE a, b;\n")])
    assert [(f.file, f.line, f.column, f.table) for f in flagged] == [
        ("0003_m.sql", 3, 3, "public.a"),
        ("0003_m.sql", 3, 3, "public.b"),
    ]


def test_a_file_that_does_not_parse_is_left_to_the_syntax_preflight() -> None:
    assert flags("DROP TABLE users;\nDROP TABLEZ x;") == []


def test_findings_carry_counts_severity_and_hint() -> None:
    d = "destructive"
    flagged = [
        Flagged("0002_m.sql", 1, 1, d, "drops column public.users.email", "public.users"),
        Flagged("0002_m.sql", 2, 1, d, "truncates public.big", "public.big"),
        Flagged("0002_m.sql", 3, 1, d, "drops table public.gone", "public.gone"),
        Flagged("0002_m.sql", 4, 1, d, "drops table public.ok", "public.ok", reviewed=True),
        Flagged("0002_m.sql", 5, 1, "risky", "renames table public.a to b"),
    ]
    assert tables_to_count(flagged) == ["public.big", "public.gone", "public.ok", "public.users"]
    counts = {"public.users": 1204, "public.big": COUNT_CAP + 1, "public.ok": 1}
    out = to_findings(flagged, counts)
    assert [(f.kind, f.severity, f.message) for f in out] == [
        (findings.DESTRUCTIVE, "error", "drops column public.users.email (1,204 rows)"),
        (findings.DESTRUCTIVE, "error", "truncates public.big (over 1,000,000 rows)"),
        (findings.DESTRUCTIVE, "error", "drops table public.gone"),
        (
            findings.DESTRUCTIVE,
            "warning",
            "drops table public.ok (1 row) (reviewed: `-- mosaicsync: allow-destructive`)",
        ),
        (findings.RISKY, "warning", "renames table public.a to b"),
    ]
    assert "--allow-destructive" in out[0].hint and "allow-destructive" in out[0].hint
    assert "expand/contract" in out[4].hint
    assert allowed(out[0]).severity == "warning" and allowed(out[4]) == out[4]


def test_count_sql_quotes_names_and_reads_back() -> None:
    assert count_sql([]) is None
    sql = count_sql(["public.users", "app.O'Brien"], cap=10)
    assert sql is not None and "'app.O''Brien'" in sql and "LIMIT %s) s', r.rel, 11)" in sql
    assert sql.startswith("DO $ms$") and sql.count("$ms$") == 2
    odd = count_sql(["public.a$ms$b"])
    assert odd is not None and odd.startswith("DO $ms_$") and odd.count("$ms_$") == 2
    assert read_counts([{"counts": '{"public.users": 3}'}]) == {"public.users": 3}
    assert read_counts([{"counts": "not json"}]) == {}


def test_the_directive_is_accepted_on_line_1_and_keeps_the_transaction(tmp_path: Path) -> None:
    (tmp_path / "0001_drop.sql").write_text("-- mosaicsync: allow-destructive\nDROP TABLE x;\n")
    (migration,) = load_migrations(tmp_path)
    assert migration.transactional is True
    assert classify([migration])[0].reviewed
    with pytest.raises(sqltext.SqlTextError, match="allow-destructive"):
        sqltext.is_transactional("-- mosaicsync: allow-destruction\nDROP TABLE x;")
