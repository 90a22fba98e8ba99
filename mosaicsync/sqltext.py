"""SQL text of migrations: normalization, checksum, statement analysis and error positions.

Pure functions only. PostgreSQL's own grammar (pglast) judges statements. When the grammar
rejects a text, PostgreSQL's own scanner (also from pglast) still splits it by psql's rules, so
that a top-level `COMMIT` is found even in a file with a syntax error.
"""

from __future__ import annotations

import bisect
import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

BOM = "\ufeff"
NO_TRANSACTION = "-- mosaicsync:no-transaction"
_DIRECTIVE = re.compile(r"--\s*mosaicsync:\s*(\S*)\s*$", re.IGNORECASE)
ALLOW_DESTRUCTIVE = "-- mosaicsync: allow-destructive"
# `no-transaction` on line 1 only; `allow-destructive` above any statement (migrate/lint.py).
KNOWN_DIRECTIVES = ("no-transaction", "allow-destructive")


class SqlTextError(ValueError):
    """When: a migration's text cannot be used; `offset` is a character index into it, if known."""

    def __init__(self, message: str, offset: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.offset = offset


def normalize(text: str) -> str:
    """The text as stored, checksummed and sent: no BOM, LF line endings, nothing else changed."""
    return text.removeprefix(BOM).replace("\r\n", "\n").replace("\r", "\n")


def checksum(text: str) -> str:
    """`sha256:` + hex of the normalized text, so CRLF and BOM copies of a file compare equal."""
    return "sha256:" + hashlib.sha256(normalize(text).encode("utf-8")).hexdigest()


def is_transactional(text: str) -> bool:
    """False when the first line is `-- mosaicsync:no-transaction`; unknown directives raise.

    `-- mosaicsync: allow-destructive` may stand on line 1 too, above the first statement.
    """
    first = normalize(text).split("\n", 1)[0].strip()
    match = _DIRECTIVE.match(first)
    if match is None:
        return True
    directive = match.group(1).lower()
    if directive not in KNOWN_DIRECTIVES:
        raise SqlTextError(
            f"unknown directive {first!r} on line 1; the known ones are {NO_TRANSACTION!r} "
            f"(line 1) and {ALLOW_DESTRUCTIVE!r} (above a statement)",
            0,
        )
    return directive != "no-transaction"


# -- positions --------------------------------------------------------------------------------


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters, as psql counts) of a 0-based offset into text."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


class LineIndex:
    """Where each line of a text starts, found once: every lookup is then a binary search.

    For the per-statement positions of a migration, where `line_col` (which scans from the
    start each time) would make a file of many statements quadratic.
    """

    def __init__(self, text: str) -> None:
        self._len = len(text)
        self._starts = [0, *(m.end() for m in re.finditer("\n", text))]

    def line_col(self, offset: int) -> tuple[int, int]:
        """The same answer as `line_col(text, offset)`."""
        offset = max(0, min(offset, self._len))
        i = bisect.bisect_right(self._starts, offset) - 1
        return i + 1, offset - self._starts[i] + 1


def locate(position: int | None, prefix_len: int, body: str) -> int | None:
    """Map PostgreSQL's 1-based character `position` in a request back to an offset in `body`.

    The request is `prefix + body + suffix`; None means the error lies outside the body.
    """
    if position is None:
        return None
    off = position - 1 - prefix_len
    if 0 <= off < len(body):
        return off
    return None


def end_of_text(text: str) -> int:
    """Offset of the last non-blank character: where "at end of input" errors point."""
    stripped = len(text.rstrip())
    return max(0, stripped - 1)


# -- splitting with PostgreSQL's scanner (psql's rules) ------------------------------------------


class _Token(NamedTuple):
    """One token of PostgreSQL's scanner: [start, end) in characters, and its grammar name."""

    start: int
    end: int
    name: str
    # The lowercased word for keywords and unquoted identifiers; None for everything else.
    word: str | None = None


_COMMENTS = frozenset({"SQL_COMMENT", "C_COMMENT"})
# Scanner errors after which nothing else can be read: the rest of the text is inside the token.
_UNTERMINATED = "unterminated"
# Where a token the scanner refused (`123abc`, `""`, `0x`) ends, to read on after it.
_BAD_TOKEN = re.compile(r"[^\s;()]+")


def _scan(text: str, base: int) -> list[_Token]:
    # pglast is imported where it is used: ~30 ms that a deploy with no SQL to read never pays.
    from pglast.parser import scan

    tokens = []
    for tok in scan(text):
        value = text[tok.start : tok.end + 1]
        word = None
        if tok.kind != "NO_KEYWORD" or (tok.name == "IDENT" and not value.startswith('"')):
            word = value.lower()
        tokens.append(_Token(base + tok.start, base + tok.end + 1, tok.name, word))
    return tokens


def _tokens(text: str) -> tuple[list[_Token], SqlTextError | None]:
    """The text's tokens, comments left out, and the first unterminated literal or comment.

    PostgreSQL's scanner stops at its first error. An unterminated string, identifier or
    comment runs to the end of the text, as psql reads it; any other refused token is skipped
    and the scan goes on after it.
    """
    from pglast.parser import ParseError

    # The scanner reads a C string: a NUL would end the text early. Same length, same offsets.
    text = text.replace("\0", " ")
    tokens: list[_Token] = []
    problem = None
    pos = 0
    while pos < len(text):
        try:
            tokens += _scan(text[pos:], pos)
            break
        except ParseError as exc:
            message = str(exc.args[0]).split(" at or near ", 1)[0]
            index = exc.args[1] if len(exc.args) > 1 and exc.args[1] is not None else 0
            bad = pos + max(0, int(index))
        terminal = message.startswith(_UNTERMINATED)
        try:
            tokens += _scan(text[pos:bad], pos)
        except ParseError:
            bad, terminal = pos, True  # not at a token boundary after all: stop reading here
        if terminal:
            tokens.append(_Token(bad, len(text), "UNTERMINATED"))
            problem = SqlTextError(message, bad)
            break
        match = _BAD_TOKEN.match(text, bad)
        pos = match.end() if match else bad + 1
        tokens.append(_Token(bad, pos, "INVALID"))
    return [t for t in tokens if t.name not in _COMMENTS], problem


@dataclass
class LexedStatement:
    """One statement as psql would send it: character span and the unquoted words in it."""

    start: int
    end: int
    # (lowercased word, parenthesis depth), in order; quoted text and comments are left out.
    words: list[tuple[str, int]] = field(default_factory=list)


@dataclass
class LexResult:
    """Statements found, plus the first unterminated string, identifier or comment, if any."""

    statements: list[LexedStatement]
    problem: SqlTextError | None = None


def _split(tokens: Sequence[_Token]) -> list[LexedStatement]:
    """Group tokens into statements at each `;` outside parentheses and `BEGIN ATOMIC` bodies."""
    statements: list[LexedStatement] = []
    current: LexedStatement | None = None
    parens = 0
    atomic = 0  # depth of BEGIN ATOMIC ... END, counting the CASE ... END inside it
    previous = ""
    for tok in tokens:
        if tok.name == "ASCII_59" and parens == 0 and atomic == 0:
            if current is not None:
                statements.append(current)
            current, previous = None, ""
            continue
        if current is None:
            current = LexedStatement(tok.start, tok.end)
        current.end = tok.end
        if tok.word is not None:
            current.words.append((tok.word, parens))
        if tok.name == "ASCII_40":
            parens += 1
        elif tok.name == "ASCII_41":
            parens = max(0, parens - 1)
        elif (tok.name == "ATOMIC" and previous == "BEGIN_P") or (atomic and tok.name == "CASE"):
            atomic += 1
        elif atomic and tok.name == "END_P":
            atomic -= 1
        previous = tok.name
    if current is not None:
        statements.append(current)
    return statements


def lex(text: str) -> LexResult:
    """Split text into statements by psql's rules over PostgreSQL's scanner, without a grammar."""
    tokens, problem = _tokens(text)
    return LexResult(_split(tokens), problem)


# -- statement analysis -----------------------------------------------------------------------


@dataclass(frozen=True)
class Statement:
    """One top-level statement of a migration and what the runner must know about it."""

    start: int
    end: int
    text: str
    # Set for BEGIN, COMMIT, ROLLBACK, END, SAVEPOINT...: the keyword as written, upper case.
    transaction_control: str | None = None
    # Set when PostgreSQL refuses the statement inside a transaction block, e.g. "VACUUM".
    no_transaction: str | None = None
    # Safe to run again after an unknown outcome (IF NOT EXISTS, IF EXISTS, VACUUM...).
    idempotent: bool = False
    # (schema or None, index name) for CREATE INDEX CONCURRENTLY, to check `indisvalid`.
    index: tuple[str | None, str] | None = None


class Analysis(NamedTuple):
    """Statements of a text; `syntax_error` is set when the grammar rejected it (then `parser` is
    "lexer": the statements were split by psql's rules over PostgreSQL's scanner)."""

    statements: tuple[Statement, ...]
    parser: str
    syntax_error: SqlTextError | None = None


def _first_word(text: str) -> str:
    match = re.match(r"[A-Za-z_]+", text)
    return match.group(0).upper() if match else text[:10].upper()


def _trim_end(ends: Sequence[int], start: int, end: int) -> int:
    """End of the last token in [start, end), from the sorted token `ends`: drops trailing
    blanks and comments."""
    i = bisect.bisect_right(ends, end) - 1
    return ends[i] if i >= 0 and ends[i] > start else start


def _default_elems(node: Any) -> set[str]:
    return {getattr(d, "defname", None) for d in (getattr(node, "params", None) or ())}


def _describe_node(node: Any) -> tuple[str | None, bool, tuple[str | None, str] | None]:
    """(reason it cannot run in a transaction, idempotent, index) for one pglast node."""
    name = type(node).__name__
    idempotent = bool(
        getattr(node, "if_not_exists", False)
        or getattr(node, "missing_ok", False)
        or getattr(node, "replace", False)
    )
    if name == "IndexStmt":
        index = None
        if node.idxname:
            schema = node.relation.schemaname if node.relation is not None else None
            index = (schema, node.idxname)
        if node.concurrent:
            unique = "UNIQUE " if node.unique else ""
            return f"CREATE {unique}INDEX CONCURRENTLY", idempotent, index
        return None, idempotent, None
    if name == "DropStmt" and node.concurrent:
        return "DROP INDEX CONCURRENTLY", idempotent, None
    if name == "ReindexStmt":
        kind = getattr(node.kind, "name", str(node.kind))
        if "concurrently" in _default_elems(node):
            return "REINDEX CONCURRENTLY", True, None
        for scope in ("SCHEMA", "DATABASE", "SYSTEM"):
            if kind.endswith(scope):
                return f"REINDEX {scope}", True, None
        return None, True, None
    if name == "VacuumStmt":
        return ("VACUUM" if node.is_vacuumcmd else None), True, None
    if name == "AlterTableStmt":
        for cmd in node.cmds or ():
            part = getattr(cmd, "def_", None)
            if type(part).__name__ == "PartitionCmd" and part.concurrent:
                return "DETACH PARTITION ... CONCURRENTLY", idempotent, None
        return None, idempotent, None
    plain = {
        "CreatedbStmt": "CREATE DATABASE",
        "DropdbStmt": "DROP DATABASE",
        "CreateTableSpaceStmt": "CREATE TABLESPACE",
        "DropTableSpaceStmt": "DROP TABLESPACE",
        "AlterSystemStmt": "ALTER SYSTEM",
        "CreateSubscriptionStmt": "CREATE SUBSCRIPTION",
        "DropSubscriptionStmt": "DROP SUBSCRIPTION",
    }
    return plain.get(name), idempotent, None


_TRANSACTION_WORDS = {"begin", "commit", "end", "rollback", "abort", "savepoint", "release"}


def _describe_words(
    words: Sequence[str], nested: Sequence[str] = ()
) -> tuple[str | None, str | None, bool]:
    """(transaction keyword, no-transaction reason, idempotent) from a statement's top-level
    words; `nested` are the words inside parentheses, where REINDEX puts its options."""
    w = [*words, "", "", "", ""]
    tx = None
    if w[0] in _TRANSACTION_WORDS or (w[0] in ("start", "prepare") and w[1] == "transaction"):
        tx = w[0].upper()
    joined = " ".join(words)
    idempotent = bool(
        re.search(r"\bif (not )?exists\b", joined)
        or w[0] in ("vacuum", "reindex", "analyze")
        or (w[0] == "create" and w[1] == "or" and w[2] == "replace")
    )
    reason = None
    if w[0] == "create" and (
        w[1:3] == ["index", "concurrently"] or w[1:4] == ["unique", "index", "concurrently"]
    ):
        reason = (
            "CREATE UNIQUE INDEX CONCURRENTLY" if w[1] == "unique" else "CREATE INDEX CONCURRENTLY"
        )
    elif w[0] == "drop" and w[1:3] == ["index", "concurrently"]:
        reason = "DROP INDEX CONCURRENTLY"
    elif w[0] == "reindex" and ("concurrently" in (*words, *nested)):
        reason = "REINDEX CONCURRENTLY"
    elif w[0] == "reindex" and w[1] in ("schema", "database", "system"):
        reason = f"REINDEX {w[1].upper()}"
    elif w[0] == "vacuum":
        reason = "VACUUM"
    elif w[0] in ("create", "drop") and w[1] in ("database", "tablespace", "subscription"):
        reason = f"{w[0]} {w[1]}".upper()
    elif w[0] == "alter" and w[1] == "system":
        reason = "ALTER SYSTEM"
    elif w[0] == "alter" and "detach" in words and words[-1:] == ["concurrently"]:
        reason = "DETACH PARTITION ... CONCURRENTLY"
    return tx, reason, idempotent


def _lexer_statements(text: str, lexed: list[LexedStatement]) -> Iterator[Statement]:
    for item in lexed:
        words = [w for w, depth in item.words if depth == 0]
        nested = [w for w, depth in item.words if depth > 0]
        tx, reason, idempotent = _describe_words(words, nested)
        yield Statement(item.start, item.end, text[item.start : item.end], tx, reason, idempotent)


def analyze(text: str) -> Analysis:
    """Split text into top-level statements and classify each: by PostgreSQL's grammar, or, when
    it rejects the text, by psql's rules over PostgreSQL's scanner (`parser == "lexer"`)."""
    from pglast.parser import ParseError, parse_sql

    try:
        raw = parse_sql(text)
    except ParseError as exc:
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        offset = end_of_text(text) if index is None else int(index)
        problem = SqlTextError(str(message), offset)
        lexed = lex(text).statements
        return Analysis(tuple(_lexer_statements(text, lexed)), "lexer", problem)
    ends = [tok.end for tok in _tokens(text)[0]]
    statements = []
    for item in raw:
        start = item.stmt_location
        end = start + item.stmt_len if item.stmt_len else len(text)
        end = _trim_end(ends, start, end)
        node = item.stmt
        tx = _first_word(text[start:end]) if type(node).__name__ == "TransactionStmt" else None
        reason, idempotent, index = _describe_node(node)
        statements.append(Statement(start, end, text[start:end], tx, reason, idempotent, index))
    return Analysis(tuple(statements), "pglast")
