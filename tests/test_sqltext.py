"""Pure tests of migration SQL text: checksums, statement detection, splitting, positions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mosaicsync import sqltext
from mosaicsync.sqltext import (
    analyze,
    checksum,
    is_transactional,
    lex,
    line_col,
    locate,
    normalize,
)

# -- normalization and checksum ---------------------------------------------------------------


def test_checksum_is_prefixed_sha256_of_the_normalized_text() -> None:
    assert checksum("SELECT 1;\n") == (
        "sha256:" + __import__("hashlib").sha256(b"SELECT 1;\n").hexdigest()
    )


@pytest.mark.parametrize(
    "variant",
    ["\ufeffSELECT 1;\nSELECT 2;\n", "SELECT 1;\r\nSELECT 2;\r\n", "SELECT 1;\rSELECT 2;\r"],
)
def test_bom_crlf_and_cr_copies_hash_alike(variant: str) -> None:
    assert checksum(variant) == checksum("SELECT 1;\nSELECT 2;\n")
    assert normalize(variant) == "SELECT 1;\nSELECT 2;\n"


def test_checksum_keeps_everything_else() -> None:
    base = checksum("SELECT 'a b';\n")
    assert checksum("SELECT 'a  b';\n") != base  # whitespace inside a literal matters
    assert checksum("SELECT 'a b';\n\n") != base  # so do blank lines
    assert checksum("SELECT 'a b'; \n") != base  # and trailing spaces
    assert checksum("SELECT 'a b';") != base  # and the final newline


@given(st.text())
def test_normalize_is_idempotent_and_leaves_no_cr(text: str) -> None:
    once = normalize(text)
    assert normalize(once) == once
    assert "\r" not in once
    assert checksum(text) == checksum(once)


# -- the directive ----------------------------------------------------------------------------


def test_directive_on_the_first_line_only() -> None:
    assert is_transactional("CREATE TABLE t (x int);\n")
    assert not is_transactional("-- mosaicsync:no-transaction\nVACUUM t;\n")
    assert not is_transactional("\ufeff-- mosaicsync:no-transaction\r\nVACUUM t;\r\n")
    assert is_transactional("SELECT 1;\n-- mosaicsync:no-transaction\n")


def test_unknown_directive_is_refused() -> None:
    with pytest.raises(sqltext.SqlTextError, match="unknown directive"):
        is_transactional("-- mosaicsync:notransaction\nSELECT 1;\n")


# -- transaction control: top level only -----------------------------------------------------


def _tx(text: str) -> list[str | None]:
    return [s.transaction_control for s in analyze(text).statements]


@pytest.mark.parametrize(
    ("text", "keyword"),
    [
        ("CREATE TABLE a (x int);\nCOMMIT;\nSELECT 1/0;\n", "COMMIT"),
        ("BEGIN;\nCREATE TABLE a (x int);\n", "BEGIN"),
        ("CREATE TABLE a (x int);\nROLLBACK;\n", "ROLLBACK"),
        ("CREATE TABLE a (x int);\nEND;\n", "END"),
        ("START TRANSACTION;\n", "START"),
        ("SAVEPOINT s;\n", "SAVEPOINT"),
        ("commit", "COMMIT"),
    ],
)
def test_top_level_transaction_control_is_found(text: str, keyword: str) -> None:
    assert keyword in _tx(text)


@pytest.mark.parametrize(
    "text",
    [
        "SELECT 'COMMIT; BEGIN;';\n",
        "SELECT E'it\\'s; COMMIT';\n",
        "-- COMMIT;\nSELECT 1;\n",
        "/* outer /* COMMIT; */ still comment ; */ SELECT 1;\n",
        "SELECT $$ COMMIT; $$;\n",
        "SELECT $tag$ $$; COMMIT; $$ $tag$;\n",
        "DO $$ BEGIN COMMIT; END $$;\n",
        "CREATE PROCEDURE p() LANGUAGE plpgsql AS $body$\nBEGIN\n  COMMIT;\nEND\n$body$;\n",
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql\nBEGIN ATOMIC\n  SELECT CASE WHEN true "
        "THEN 1 END;\n  SELECT 2;\nEND;\n",
        'SELECT 1 AS "commit; begin";\n',
        "CREATE TABLE t (\"end\" int, note text DEFAULT 'rollback');\n",
    ],
)
def test_transaction_words_inside_strings_comments_and_bodies_are_ignored(text: str) -> None:
    assert _tx(text) == [None] * len(analyze(text).statements)


def test_lexer_finds_commit_when_pglast_cannot_parse() -> None:
    # Not valid SQL for pglast, so the psql-rules lexer decides.
    result = analyze("CREATE TABLE a (x int);\nSELEC 1;\nCOMMIT;\n")
    assert result.parser == "lexer"
    assert result.syntax_error is not None
    assert line_col("CREATE TABLE a (x int);\nSELEC 1;\nCOMMIT;\n", result.syntax_error.offset) == (
        2,
        1,
    )
    assert [s.transaction_control for s in result.statements] == [None, None, "COMMIT"]


# -- statements that cannot run in a transaction --------------------------------------------


@pytest.mark.parametrize(
    ("text", "reason", "idempotent"),
    [
        ("CREATE INDEX CONCURRENTLY i ON t (x)", "CREATE INDEX CONCURRENTLY", False),
        (
            "CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS i ON t (x)",
            "CREATE UNIQUE INDEX CONCURRENTLY",
            True,
        ),
        ("DROP INDEX CONCURRENTLY IF EXISTS i", "DROP INDEX CONCURRENTLY", True),
        ("REINDEX (CONCURRENTLY) TABLE t", "REINDEX CONCURRENTLY", True),
        ("REINDEX SCHEMA public", "REINDEX SCHEMA", True),
        ("VACUUM (ANALYZE) t", "VACUUM", True),
        ("ALTER SYSTEM SET work_mem = '1MB'", "ALTER SYSTEM", False),
        ("CREATE DATABASE d", "CREATE DATABASE", False),
        (
            "ALTER TABLE p DETACH PARTITION c CONCURRENTLY",
            "DETACH PARTITION ... CONCURRENTLY",
            False,
        ),
        ("CREATE INDEX i ON t (x)", None, False),
        ("ANALYZE t", None, True),
        ("CREATE TABLE IF NOT EXISTS t (x int)", None, True),
    ],
)
def test_no_transaction_statements_are_detected(
    text: str, reason: str | None, idempotent: bool
) -> None:
    (stmt,) = analyze(text + ";\n").statements
    assert stmt.no_transaction == reason
    assert stmt.idempotent == idempotent
    # The fallback lexer reaches the same verdict on the same text.
    words = lex(text).statements[0].words
    lexed = sqltext._describe_words([w for w, d in words if d == 0], [w for w, d in words if d])
    assert lexed[1] == reason
    assert lexed[2] == idempotent


def test_concurrent_index_knows_its_name_for_the_validity_check() -> None:
    text = "CREATE INDEX CONCURRENTLY IF NOT EXISTS todos_done ON app.todos (done);"
    (stmt,) = analyze(text).statements
    assert stmt.index == ("app", "todos_done")


# -- splitting (no-transaction files) ---------------------------------------------------------


def _texts(text: str) -> list[str]:
    return [s.text for s in analyze(text).statements]


def test_split_keeps_each_statement_whole() -> None:
    text = (
        "-- mosaicsync:no-transaction\n"
        "CREATE TABLE IF NOT EXISTS t (x int, note text DEFAULT 'a;b');\n"
        "/* nested /* ; */ ; */\n"
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x);\n"
        "DO $$ BEGIN PERFORM 1; END $$;\n"
        "VACUUM t -- no final semicolon"
    )
    assert _texts(text) == [
        "CREATE TABLE IF NOT EXISTS t (x int, note text DEFAULT 'a;b')",
        "CREATE INDEX CONCURRENTLY IF NOT EXISTS t_x ON t (x)",
        "DO $$ BEGIN PERFORM 1; END $$",
        "VACUUM t",
    ]
    statements = analyze(text).statements
    assert [s.no_transaction for s in statements] == [
        None,
        "CREATE INDEX CONCURRENTLY",
        None,
        "VACUUM",
    ]
    for s in statements:
        assert text[s.start : s.end] == s.text


@pytest.mark.parametrize(
    ("text", "count"),
    [
        ("/* a /* b ; */ c ; */ SELECT 1; SELECT 2;", 2),
        ("SELECT 'back\\'; SELECT 'x'; SELECT 3;", 3),
        ("SELECT E'it\\'s; x'; SELECT 2;", 2),
        ("SELECT $b$ '$$;' $b$; SELECT 2;", 2),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true "
            "THEN 1 END; SELECT 2; END; SELECT 3;",
            2,
        ),
        ("CREATE RULE r AS ON INSERT TO t DO ALSO (NOTIFY a; NOTIFY b); SELECT 2;", 2),
        ("SELECT 1 AS \"we;ird\"; SELECT U&'d\\0061t;a'; SELECT 3;", 3),
        (";;SELECT 1;;", 1),
    ],
)
def test_lexer_splits_like_postgresql(text: str, count: int) -> None:
    assert len(lex(text).statements) == count
    assert len(analyze(text).statements) == count


def test_lexer_reports_unterminated_quotes_and_comments() -> None:
    assert lex("SELECT 'abc").problem is not None
    assert lex("SELECT 1; /* open").problem is not None
    assert lex("SELECT $x$ abc").problem is not None
    assert lex('SELECT "abc').problem is not None
    assert lex("SELECT 1; -- trailing comment").problem is None


# -- positions ----------------------------------------------------------------------------------


def test_line_col_counts_characters_not_bytes() -> None:
    body = "CREATE TABLE t (x int);\n-- café ☕\nSELECT 'café ☕', 'ok' AS x, nosuch FROM t;\n"
    off = body.index("nosuch")
    assert line_col(body, off) == (3, 29)


def test_locate_maps_a_server_position_through_the_prefix() -> None:
    prefix = "/* tag */\nSELECT 1;\n"
    body = "SELECT 'café ☕';\nSELECT nosuch;\n"
    request = prefix + body + "\n;\n"
    position = request.index("nosuch") + 1  # PostgreSQL counts characters from 1
    off = locate(position, len(prefix), body)
    assert off is not None
    assert line_col(body, off) == (2, 8)
    assert locate(3, len(prefix), body) is None  # inside the prefix
    assert locate(len(prefix) + len(body) + 2, len(prefix), body) is None  # after the body
    assert locate(None, len(prefix), body) is None


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200), st.data())
def test_line_col_agrees_with_splitlines(text: str, data: st.DataObject) -> None:
    text = normalize(text)
    off = data.draw(st.integers(0, len(text)))
    line, col = line_col(text, off)
    lines = text.split("\n")
    assert sum(len(x) + 1 for x in lines[: line - 1]) + col - 1 == off
    assert col - 1 <= len(lines[line - 1])


def test_body_ending_in_a_comment_or_without_semicolon_still_splits() -> None:
    assert _texts("SELECT 1;\nSELECT 2 -- done") == ["SELECT 1", "SELECT 2"]
    assert _texts("SELECT 1;\nSELECT 2") == ["SELECT 1", "SELECT 2"]
    # The runner closes a body with "\n;\n": both forms then parse as complete statements.
    for body in ("SELECT 1 -- done", "SELECT 1"):
        assert analyze(body + "\n;\nSELECT 2").syntax_error is None
    assert analyze("SELECT 1 /* open" + "\n;\nSELECT 2").syntax_error is not None


def test_syntax_error_at_end_of_input_points_at_the_last_character() -> None:
    text = "CREATE TABLE t (\n  x int,\n"
    result = analyze(text)
    assert result.syntax_error is not None
    assert line_col(text, result.syntax_error.offset) == (2, 8)


@given(
    st.lists(
        st.sampled_from(
            [
                "SELECT 1",
                "SELECT 'a;b'",
                "SELECT $$;$$",
                "SELECT /* ; */ 2",
                'SELECT 1 AS "x;y"',
                "SELECT E'\\';'",
                "DO $f$ BEGIN PERFORM 1; END $f$",
            ]
        ),
        min_size=1,
        max_size=6,
    ),
    st.sampled_from([";\n", "; ", ";\n-- c\n", ";\n\n"]),
)
def test_lexer_and_pglast_agree_on_generated_scripts(parts: list[str], sep: str) -> None:
    text = sep.join(parts)
    assert [s.text for s in analyze(text).statements] == parts
    lexed = lex(text).statements
    assert [text[s.start : s.end] for s in lexed] == parts


def test_a_column_named_begin_does_not_hide_the_commit_after_a_routine_body() -> None:
    # BEGIN is an unreserved keyword, so a column may be called that. A hand-written lexer that
    # counted every BEGIN inside CREATE FUNCTION never closed the body and swallowed the rest of
    # the file, COMMIT included; the scanner's tokens tell BEGIN ATOMIC from a column name.
    text = (
        "CREATE FUNCTION f() RETURNS int LANGUAGE sql\n"
        "BEGIN ATOMIC\n  SELECT begin FROM t;\nEND;\n"
        "COMMIT;\n"
        "SELEC 1;\n"
    )
    result = analyze(text)
    assert result.parser == "lexer" and result.syntax_error is not None
    assert [s.transaction_control for s in result.statements] == [None, "COMMIT", None]
    assert result.statements[0].text.endswith("END")


def test_tokens_the_scanner_refuses_are_stepped_over() -> None:
    # `123abc` and `""` stop PostgreSQL's scanner; the split reads on after them.
    text = 'SELECT 123abc;\nSELECT "";\nCOMMIT;\n'
    assert [text[s.start : s.end] for s in lex(text).statements] == [
        "SELECT 123abc",
        'SELECT ""',
        "COMMIT",
    ]
    assert lex(text).problem is None
    assert _tx(text) == [None, None, "COMMIT"]


def test_unterminated_problem_points_at_the_opening_quote() -> None:
    text = "SELECT 'café';\nSELECT 'open"
    result = lex(text)
    assert result.problem is not None and result.problem.offset == text.rindex("'")
    assert result.problem.message == "unterminated quoted string"
    assert [text[s.start : s.end] for s in result.statements] == ["SELECT 'café'", "SELECT 'open"]


@given(st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=300))
def test_any_text_splits_into_ordered_spans_without_raising(text: str) -> None:
    statements = lex(text).statements
    ends = [0] + [p for s in statements for p in (s.start, s.end)]
    assert ends == sorted(ends) and ends[-1] <= len(text)
    assert all(s.start < s.end for s in statements)
    analyze(text)


def _problems_seconds(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, n: int) -> float:
    """Time to check a migration of n one-line statements for misplaced COMMIT and the like."""
    from mosaicsync.migrate import files

    line = "INSERT INTO t (a, b) VALUES (1, 'x');\n"
    text = line * n
    analysis = sqltext.Analysis(
        tuple(
            sqltext.Statement(i * len(line), (i + 1) * len(line) - 1, line[:-1]) for i in range(n)
        ),
        "pglast",
    )
    monkeypatch.setattr(files, "analyze_migration", lambda migration: analysis)
    migration = files.MigrationFile(1, "big", tmp_path / "0001_big.sql", text, "", True)
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        assert files._statement_problems(migration) == []
        best = min(best, time.perf_counter() - start)
    return best


def test_statement_positions_of_a_big_migration_cost_linear_time(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Each statement's line used to be counted from the start of the file: quadratic, so a
    # file four times the size took about sixteen times as long (minutes for 8 MB).
    small = _problems_seconds(monkeypatch, tmp_path, 3_000)
    big = _problems_seconds(monkeypatch, tmp_path, 12_000)
    assert big < 8 * small + 0.02, (small, big)


@given(st.text(alphabet="ab\n", max_size=40), st.integers(min_value=-2, max_value=45))
def test_line_index_agrees_with_line_col(text: str, offset: int) -> None:
    assert sqltext.LineIndex(text).line_col(offset) == sqltext.line_col(text, offset)
