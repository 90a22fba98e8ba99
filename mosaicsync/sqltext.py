"""SQL text of migrations: normalization, checksum, statement analysis and error positions.

Pure functions only. PostgreSQL's own grammar (pglast) judges statements; a small lexer that
follows psql's splitting rules stands in when pglast is missing or disagrees with the text, so
that a top-level `COMMIT` is still found.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

try:
    from pglast.parser import ParseError as PgParseError
    from pglast.parser import parse_sql as pg_parse_sql
except ImportError:  # pragma: no cover - pglast is a dependency; the lexer keeps us working
    PgParseError = None
    pg_parse_sql = None

BOM = "\ufeff"
NO_TRANSACTION = "-- mosaicsync:no-transaction"
_DIRECTIVE = re.compile(r"--\s*mosaicsync:\s*(\S*)\s*$", re.IGNORECASE)
KNOWN_DIRECTIVES = ("no-transaction",)


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
    """False when the first line is `-- mosaicsync:no-transaction`; unknown directives raise."""
    first = normalize(text).split("\n", 1)[0].strip()
    match = _DIRECTIVE.match(first)
    if match is None:
        return True
    directive = match.group(1).lower()
    if directive not in KNOWN_DIRECTIVES:
        raise SqlTextError(
            f"unknown directive {first!r} on line 1; the only one is {NO_TRANSACTION!r}", 0
        )
    return False


# -- positions --------------------------------------------------------------------------------


def line_col(text: str, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters, as psql counts) of a 0-based offset into text."""
    offset = max(0, min(offset, len(text)))
    line = text.count("\n", 0, offset) + 1
    col = offset - (text.rfind("\n", 0, offset) + 1) + 1
    return line, col


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


# -- the fallback lexer (psql's rules) --------------------------------------------------------

_IDENT_START = re.compile(r"[A-Za-z_\u0080-\U0010ffff]")
_IDENT_REST = re.compile(r"[A-Za-z0-9_$\u0080-\U0010ffff]*")
_DOLLAR_TAG = re.compile(r"\$(?:[A-Za-z_\u0080-\U0010ffff][A-Za-z0-9_\u0080-\U0010ffff]*)?\$")
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?")
_CREATE_WORDS = {"create": "c", "function": "f", "procedure": "p", "or": "o", "replace": "r"}


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


class _Lexer:
    """Walks text as psql's scanner does: quotes, E'' escapes, dollar tags, nested comments,
    parentheses, and BEGIN ... END inside CREATE FUNCTION/PROCEDURE bodies."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.statements: list[LexedStatement] = []
        self.problem: SqlTextError | None = None
        self._reset()

    def _reset(self) -> None:
        self.current: LexedStatement | None = None
        self.paren_depth = 0
        self.begin_depth = 0
        self.identifiers: list[str] = []

    def _token(self, start: int, end: int) -> None:
        if self.current is None:
            self.current = LexedStatement(start, end)
        self.current.end = end

    def _fail(self, message: str, offset: int) -> int:
        if self.problem is None:
            self.problem = SqlTextError(message, offset)
        self._token(offset, len(self.text))
        return len(self.text)

    def _word(self, word: str) -> None:
        assert self.current is not None
        self.current.words.append((word, self.paren_depth))
        count = len(self.identifiers)
        self.identifiers.append(_CREATE_WORDS.get(word, "") if count < 4 else "")
        ids = [*self.identifiers, "", "", "", ""]
        in_routine = ids[0] == "c" and (
            ids[1] in ("f", "p") or (ids[1] == "o" and ids[2] == "r" and ids[3] in ("f", "p"))
        )
        if not in_routine or self.paren_depth:
            return
        if word == "begin" or (word == "case" and self.begin_depth >= 1):
            # CASE also ends with END, but only matters inside a BEGIN ATOMIC body.
            self.begin_depth += 1
        elif word == "end" and self.begin_depth > 0:
            self.begin_depth -= 1

    def _string(self, start: int, i: int, backslash: bool) -> int:
        """Skip a quoted literal whose opening quote is at i; returns the index after it."""
        text, n = self.text, len(self.text)
        j = i + 1
        while j < n:
            ch = text[j]
            if backslash and ch == "\\":
                j += 2
                continue
            if ch == "'":
                if j + 1 < n and text[j + 1] == "'":
                    j += 2
                    continue
                return j + 1
            j += 1
        return self._fail("unterminated quoted string", start)

    def run(self) -> LexResult:
        text, n, i = self.text, len(self.text), 0
        while i < n:
            ch = text[i]
            nxt = text[i + 1] if i + 1 < n else ""
            if ch in " \t\n\r\f\v":
                i += 1
            elif ch == "-" and nxt == "-":
                end = text.find("\n", i)
                i = n if end < 0 else end
            elif ch == "/" and nxt == "*":
                depth, j = 1, i + 2
                while j < n and depth:
                    if text.startswith("/*", j):
                        depth, j = depth + 1, j + 2
                    elif text.startswith("*/", j):
                        depth, j = depth - 1, j + 2
                    else:
                        j += 1
                i = j if depth == 0 else self._fail("unterminated /* comment", i)
            elif ch == "'":
                end = self._string(i, i, backslash=False)
                self._token(i, end)
                i = end
            elif ch == '"':
                j = i + 1
                while True:
                    j = text.find('"', j)
                    if j < 0 or not text.startswith('""', j):
                        break
                    j += 2
                end = j + 1 if j >= 0 else self._fail("unterminated quoted identifier", i)
                self._token(i, end)
                i = end
            elif ch == "$":
                match = _DOLLAR_TAG.match(text, i)
                if match:
                    tag = match.group(0)
                    close = text.find(tag, match.end())
                    if close < 0:
                        end = self._fail("unterminated dollar-quoted string", i)
                    else:
                        end = close + len(tag)
                else:
                    end = i + 1
                    while end < n and "0" <= text[end] <= "9":
                        end += 1
                self._token(i, end)
                i = end
            elif _IDENT_START.match(ch):
                end = _IDENT_REST.match(text, i + 1).end()  # type: ignore[union-attr]
                word = text[i:end]
                lower = word.lower()
                if end < n and text[end] == "'" and lower in ("e", "b", "x", "n"):
                    end = self._string(i, end, backslash=lower == "e")
                    self._token(i, end)
                elif lower == "u" and text.startswith(("&'", '&"'), end):
                    # U&'...' and U&"..." quote as usual; their escapes use another character.
                    self._token(i, end + 1)
                    end += 1
                else:
                    self._token(i, end)
                    self._word(lower)
                i = end
            elif "0" <= ch <= "9" or (ch == "." and "0" <= nxt <= "9"):
                end = _NUMBER.match(text, i).end()  # type: ignore[union-attr]
                self._token(i, end)
                i = end
            elif ch == ";":
                if self.paren_depth == 0 and self.begin_depth == 0:
                    if self.current is not None:
                        self.statements.append(self.current)
                    self._reset()
                elif self.current is not None:
                    self.current.end = i + 1
                i += 1
            else:
                if ch == "(":
                    self._token(i, i + 1)
                    self.paren_depth += 1
                elif ch == ")":
                    self._token(i, i + 1)
                    self.paren_depth = max(0, self.paren_depth - 1)
                else:
                    self._token(i, i + 1)
                i += 1
        if self.current is not None:
            self.statements.append(self.current)
        return LexResult(self.statements, self.problem)


def lex(text: str) -> LexResult:
    """Split text into statements by psql's rules, without a grammar."""
    return _Lexer(text).run()


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


@dataclass(frozen=True)
class Analysis:
    """Statements of a text; `syntax_error` is set when pglast rejected it (the lexer split it)."""

    statements: tuple[Statement, ...]
    parser: str
    syntax_error: SqlTextError | None = None


def _first_word(text: str) -> str:
    match = re.match(r"[A-Za-z_]+", text)
    return match.group(0).upper() if match else text[:10].upper()


def _trim_end(text: str, start: int, end: int) -> int:
    """End of the last token in text[start:end]: drops trailing blanks and comments."""
    found = lex(text[start:end]).statements
    return start + found[-1].end if found else start


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
    """Split text into top-level statements and classify each; pglast first, the lexer as backup."""
    lexed = lex(text)
    if pg_parse_sql is None:
        return Analysis(tuple(_lexer_statements(text, lexed.statements)), "lexer", lexed.problem)
    try:
        raw = pg_parse_sql(text)
    except PgParseError as exc:  # type: ignore[misc]
        message, index = exc.args[0], exc.args[1] if len(exc.args) > 1 else None
        offset = end_of_text(text) if index is None else int(index)
        problem = SqlTextError(str(message), offset)
        return Analysis(tuple(_lexer_statements(text, lexed.statements)), "lexer", problem)
    statements = []
    for item in raw:
        start = item.stmt_location
        end = start + item.stmt_len if item.stmt_len else len(text)
        end = _trim_end(text, start, end)
        node = item.stmt
        tx = _first_word(text[start:end]) if type(node).__name__ == "TransactionStmt" else None
        reason, idempotent, index = _describe_node(node)
        statements.append(Statement(start, end, text[start:end], tx, reason, idempotent, index))
    return Analysis(tuple(statements), "pglast")
