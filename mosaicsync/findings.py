"""What the preflight checks report: one `Finding` per problem, with where it is and what to do.

The checks (secrets in content, destructive migrations, broken references) run on the plan
before anything is sent. Each returns findings; the caller decides what stops the run: an
error-severity finding always does, a warning does under `--strict`. One shape for all of them,
so `deploy`, `status`, `watch`, `dev`, `migrate up` and `check` print and serialize them alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal, NamedTuple

from mosaicsync.errors import ChecksFailed

Severity = Literal["error", "warning"]

# The kinds, as they appear in `--json` (`kind`) and in the README's table.
SECRET = "secret"
DESTRUCTIVE = "destructive-migration"
RISKY = "risky-migration"
BROKEN_REFERENCE = "broken-reference"
SKIPPED = "not-checked"  # a file a check could not read or parse; said, never silent


class Finding(NamedTuple):
    """One problem a check found; `message` never holds a secret, only a masked preview.
    (A named tuple: as immutable as a dataclass, and cheaper to create at start-up.)"""

    kind: str
    file: str  # relative to the static root, or a migration's file name
    line: int | None
    column: int | None
    message: str
    hint: str
    severity: Severity = "error"

    @property
    def where(self) -> str:
        parts = [self.file, *(str(n) for n in (self.line, self.column) if n is not None)]
        return ":".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "file": self.file,
            "line": self.line,
            "column": self.column,
            "message": self.message,
            "hint": self.hint,
            "severity": self.severity,
        }

    def as_error(self) -> Finding:
        return self._replace(severity="error")

    def line_text(self) -> str:
        """`file:line:col: severity: message` as compilers print it, for editors and people."""
        return f"{self.where}: {self.severity}: {self.message}"


def ordered(findings: Iterable[Finding]) -> list[Finding]:
    """Errors first, then by file and position, so the first line is the one to fix first."""
    return sorted(
        findings,
        key=lambda f: (f.severity != "error", f.file, f.line or 0, f.column or 0, f.kind),
    )


def strictened(findings: Iterable[Finding], kinds: Iterable[str]) -> list[Finding]:
    """Warnings of `kinds` raised to errors (`--strict`, `[check] strict`, `check`)."""
    raised = set(kinds)
    return [f.as_error() if f.kind in raised else f for f in findings]


def errors(findings: Iterable[Finding]) -> list[Finding]:
    return [f for f in findings if f.severity == "error"]


_LISTED = 5  # errors named in the message; all of them are in `findings` (and --json)


def raise_for(
    findings: Sequence[Finding],
    *,
    headline: str | None = None,
    outcome: str | None = None,
    hint: str | None = None,
) -> None:
    """Stop with `ChecksFailed` (exit 9) if any finding is an error; warnings pass. The one way
    every check stops a run: `headline: file:line:col: message; ...; outcome`."""
    stopping = ordered(errors(findings))
    if not stopping:
        return
    n = len(stopping)
    shown = "; ".join(f"{f.where}: {f.message}" for f in stopping[:_LISTED])
    if n > _LISTED:
        shown += f"; and {n - _LISTED} more"
    if headline is None:
        headline = f"{n} error{'s' if n > 1 else ''} found"
    text = f"{headline}: {shown}"
    raise ChecksFailed(
        text + (f"; {outcome}" if outcome else ""),
        hint=hint or stopping[0].hint,
        findings=ordered(findings),
    )
