"""Broken references: every local reference of a published page must reach a published file.

Two pure steps, so a caller can cache the first by content hash: `extract` lists the local
references of one HTML or CSS file (from `rewrite.references`, the parser the storage rewrite
uses, so the two never disagree about what a reference is), and `check` resolves them against
what this deploy publishes, the way the platform serves a site: a folder URL serves its
`index.html`, a folder without its slash redirects to it. Each miss is a warning saying why:
missing, differs only in letter case, excluded by an ignore rule (named), inside a skipped
folder, a file that may hold credentials, or above the site root. External URLs are not fetched.

Files over `MAX_CHECKED_BYTES`, binary or not UTF-8 are not parsed; `read_text` says so with a
`not-checked` finding instead.
"""

from __future__ import annotations

import bisect
import functools
import posixpath
import re
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import NamedTuple
from urllib.parse import unquote, urlsplit

from mosaicsync import findings
from mosaicsync.findings import Finding
from mosaicsync.ignore import IgnoreRules
from mosaicsync.publishable import ASSETS_FILE
from mosaicsync.scan import Skipped
from mosaicsync.sitepaths import PAGE_EXTENSIONS, is_page, resolve

# The pages whose references are checked: the ones the storage rewrite reads.
CHECKED_EXTENSIONS = PAGE_EXTENSIONS

# Bigger files are not parsed. The tokenizers are pure Python (about 0.5 to 1 MB a second on
# markup dense with tags and CSS urls), and a page or stylesheet this big is generated: its
# references are better checked by the tool that builds it.
MAX_CHECKED_BYTES = 5 * 1024 * 1024

_SHOWN_MAX = 120  # characters of a reference quoted in a message


class Ref(NamedTuple):
    line: int  # 1-based
    column: int  # 1-based, in characters
    value: str  # as the browser reads it: entities and CSS escapes resolved


def is_checked(path: str) -> bool:
    """Whether the published file at `path` is read for references (HTML and CSS). By type
    alone (`extension`): a caller may ask once per type."""
    return is_page(path)


# -- reading ----------------------------------------------------------------------------------


def read_text(path: Path, rel: str, limit: int = MAX_CHECKED_BYTES) -> str | Finding:
    """The text of the file at `path` (published as `rel`), or why it is not checked.

    A file over `limit` bytes is refused before it is read.
    """
    try:
        if path.stat().st_size > limit:
            return too_big(rel, limit)
        data = path.read_bytes()
    except OSError as exc:
        return not_checked(
            rel, f"cannot be read ({exc.strerror or exc})", "fix its permissions and run again"
        )
    return decode(data, rel, limit)


def decode(data: bytes, rel: str, limit: int = MAX_CHECKED_BYTES) -> str | Finding:
    """`data` as text (UTF-8, a BOM dropped), or why the file at `rel` is not checked."""
    if len(data) > limit:
        return too_big(rel, limit)
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        return not_checked(rel, "not UTF-8 (it is UTF-16)", _SAVE_AS_UTF8)
    if b"\x00" in data:
        return not_checked(
            rel,
            "binary (it holds NUL bytes)",
            "if it is not text, give it an extension that says what it is",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        byte = data[exc.start]
        return not_checked(
            rel, f"not UTF-8 (byte 0x{byte:02x} at offset {exc.start})", _SAVE_AS_UTF8
        )


_SAVE_AS_UTF8 = "the platform serves HTML and CSS as UTF-8: save it as UTF-8"


def not_checked(rel: str, why: str, hint: str) -> Finding:
    return Finding(
        kind=findings.SKIPPED,
        file=rel,
        line=None,
        column=None,
        message=f"not checked for broken references: {why}",
        hint=hint,
        severity="warning",
    )


def too_big(rel: str, limit: int) -> Finding:
    return not_checked(
        rel,
        f"over {limit / 2**20:g} MB",
        f"references are checked in files up to {limit / 2**20:g} MB; check a generated "
        "bundle's references in the tool that builds it",
    )


# -- extracting -------------------------------------------------------------------------------


class _Lines:
    """Line starts found once, so each position is a binary search (as sqltext.LineIndex)."""

    def __init__(self, text: str) -> None:
        self._starts = [0, *(m.end() for m in re.finditer(r"\r\n?|\n|\f", text))]

    def line_col(self, offset: int) -> tuple[int, int]:
        i = bisect.bisect_right(self._starts, offset) - 1
        return i + 1, offset - self._starts[i] + 1


def extract(text: str, path: str) -> list[Ref]:
    """The local references of the HTML or CSS file published at `path`, in order."""
    from mosaicsync.rewrite import references  # the parsers: only when a page is read

    found = [ref for ref in references(text, path) if is_local(ref.value)]
    if not found:
        return []
    lines = _Lines(text)
    return [Ref(*lines.line_col(ref.offset), ref.value) for ref in found]


def is_local(value: str) -> bool:
    """False for what leaves the site or stays on the page: a scheme (`https:`, `data:`,
    `mailto:`, `javascript:`), `//host`, `#fragment` or `?query` alone, nothing at all."""
    value = value.strip("\x00\t\n\f\r ")
    if not value or value.startswith(("#", "//", "\\\\", "/\\", "\\/")):
        return False
    try:
        parts = urlsplit(value)
    except ValueError:  # an unclosed `[` after `//`: a host, not a path
        return False
    return not parts.scheme and not parts.netloc and bool(parts.path)


# -- checking ---------------------------------------------------------------------------------


def check(
    refs_by_file: Mapping[str, Sequence[Ref]],
    published: Collection[str],
    skipped: Sequence[Skipped],
    rules: IgnoreRules,
) -> list[Finding]:
    """A warning for each reference that does not reach a file this deploy publishes.

    `published`: every path the deploy publishes, to the site or to storage. `skipped` and
    `rules`: the scan's and the rules it ran with, to say why a file is not published.
    """
    site = _Site(published, skipped, rules)
    out: list[Finding] = []
    for file in sorted(refs_by_file):
        for ref in refs_by_file[file]:
            problem = site.problem(ref.value, file)
            if problem is not None:
                reason, hint = problem
                message = f"broken reference `{_shown(ref.value)}`: {reason}"
                out.append(
                    Finding(
                        kind=findings.BROKEN_REFERENCE,
                        file=file,
                        line=ref.line,
                        column=ref.column,
                        message=message,
                        hint=hint,
                        severity="warning",
                    )
                )
    return out


class _Site:
    def __init__(
        self, published: Collection[str], skipped: Sequence[Skipped], rules: IgnoreRules
    ) -> None:
        self.published = {*published, ASSETS_FILE}
        self.skipped_files = {s.path: s.reason for s in skipped if not s.path.endswith("/")}
        self.skipped_dirs = sorted(
            (s for s in skipped if s.path.endswith("/")), key=lambda s: len(s.path)
        )
        self.rules = rules
        self._why: dict[tuple[str, ...], tuple[str, str] | None] = {}
        self._problems: dict[tuple[str, str], tuple[str, str] | None] = {}

    def problem(self, value: str, file: str) -> tuple[str, str] | None:
        """(reason, hint) when `value` in `file` reaches no published file, else None.

        It depends on the value and the file's folder alone, and pages of a site share most of
        their references (a stylesheet, a logo, the home page): each pair is judged once."""
        key = (value, file.rpartition("/")[0])
        try:
            return self._problems[key]
        except KeyError:
            found = self._problems[key] = self._problem(value, file)
            return found

    def _problem(self, value: str, file: str) -> tuple[str, str] | None:
        if not is_local(value):
            return None
        target = resolve(value, file)
        if target is None:
            clamped = _clamped(value, file)
            return (
                "it goes above the site root with `..`",
                f"a browser stops at the root and fetches `/{_shown(clamped)}`; write that "
                "(from the root), or drop the extra `../`",
            )
        candidates = _candidates(value, target)
        if not self.published.isdisjoint(candidates):
            return None
        if "\\" in target:
            return (
                "it holds a backslash; browsers read it as `/`, but no published name has one",
                f"write `{_shown(value.replace(chr(92), '/'))}`, with forward slashes",
            )
        if candidates not in self._why:
            self._why[candidates] = self._why_not(candidates)
        return self._why[candidates]

    @functools.cached_property
    def _by_lower(self) -> dict[str, str]:
        """Published paths by lowercased path (the first in order): built on the first miss."""
        found: dict[str, str] = {}
        for path in sorted(self.published):
            found.setdefault(path.lower(), path)
        return found

    def _why_not(self, candidates: tuple[str, ...]) -> tuple[str, str]:
        wanted = candidates[0]
        shown = _shown(wanted)
        for candidate in candidates:
            secret = self.rules.match_with_parents(candidate, False, secrets_only=True)
            if secret is not None:
                return (
                    f"`{_shown(candidate)}` is never published: it may hold credentials ({secret})",
                    "remove the reference; such files are never published",
                )
        for candidate in candidates:
            actual = self._by_lower.get(candidate.lower())
            if actual is not None:
                return (
                    f"`{_shown(candidate)}` is published as `{_shown(actual)}`; web servers "
                    "are case-sensitive",
                    f"write it as `{_shown(actual)}`, letter case included, or rename the file",
                )
        for candidate in candidates:
            reason = self.skipped_files.get(candidate)
            if reason is not None:
                ruled = self.rules.match(candidate, False) is not None
                how = "it is excluded by an ignore rule" if ruled else "the scan skipped it"
                return (
                    f"`{_shown(candidate)}` is not published: {how} ({reason})",
                    "remove or narrow that rule (or add a `!` rule after it) to publish the file, "
                    "or remove the reference",
                )
        for candidate in candidates:
            for folder in self.skipped_dirs:
                if candidate.startswith(folder.path):
                    where = _shown(folder.path)
                    hint = (
                        f"copy the file out of `{where}` into the site (or bundle it), and "
                        "point the reference there"
                    )
                    if not folder.reason.startswith("default:"):
                        hint = f"remove or narrow that rule to publish `{where}`, or {hint}"
                    return (
                        f"`{_shown(candidate)}` is inside `{where}`, a folder that is not "
                        f"published ({folder.reason})",
                        hint,
                    )
        for candidate in candidates:
            reason = self.rules.match_with_parents(candidate, False)
            if reason is not None:
                return (
                    f"`{_shown(candidate)}` is not published: it is excluded by an ignore rule "
                    f"({reason})",
                    "remove or narrow that rule to publish the file, or remove the reference",
                )
        return (
            f"no file `{shown}` is published",
            "create it in the static root, or fix the reference",
        )


def _candidates(value: str, target: str) -> tuple[str, ...]:
    """The published paths that would serve `target`: a folder serves its `index.html`."""
    path = unquote(urlsplit(value.strip("\x00\t\n\f\r ")).path)
    last = path.rpartition("/")[2]
    index = "index.html" if target == "." else f"{target}/index.html"
    if last in ("", ".", ".."):
        return (index,)
    return (target, index)


def _clamped(value: str, file: str) -> str:
    """Where a reference that climbs above the root lands: browsers stop at the root."""
    path = unquote(urlsplit(value.strip("\x00\t\n\f\r ")).path)
    joined = path if path.startswith("/") else posixpath.join("/", posixpath.dirname(file), path)
    return posixpath.normpath(joined).lstrip("/")


def _shown(text: str) -> str:
    """`text` for a message: query and fragment dropped, control characters escaped, capped."""
    text = text.partition("#")[0].partition("?")[0] or text
    if not text.isprintable():
        text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)
    if len(text) > _SHOWN_MAX:
        text = text[: _SHOWN_MAX - 1] + "…"
    return text
