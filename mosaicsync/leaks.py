"""Secrets in what is about to be published: the account key a page must never hold, and its kin.

A site is public, so one deploy of a page holding the account's API key hands every project,
database and file of the account to the world. Unlike a pattern-only scanner, mosaicsync knows
the exact values to look for (the key in use, the stored keys, the project's database password
and URL); patterns catch the rest (anything shaped like a Mosaic key, PEM private keys,
PostgreSQL URLs with a password).

The search runs over bytes, in chunks, so a binary file, a file that is not UTF-8 or a 50 MB
bundle costs one linear pass and never a decode error. A finding shows only a masked preview:
the value itself never reaches output, a log or JSON.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

from mosaicsync.contract import extension
from mosaicsync.findings import SECRET, Finding

CHUNK = 1 << 20
# A match is never longer than this, so a chunk re-reads this much of the previous one.
_OVERLAP = 4096
# The shortest exact value searched for: a shorter "password" would match everywhere.
MIN_EXACT = 8

# Formats that cannot carry a key as text; every other file is searched, whatever its name.
_BINARY = """
    .png .jpg .jpeg .gif .webp .avif .ico .bmp .tif .tiff .heic .woff .woff2 .ttf .otf .eot
    .mp3 .mp4 .m4a .webm .ogg .oga .ogv .wav .flac .mov .avi .mkv
    .zip .gz .tgz .br .zst .xz .bz2 .7z .rar .pdf .wasm
"""
BINARY_EXTENSIONS = frozenset(_BINARY.split())

# Each pattern starts with a literal, so that the regex engine skips ahead with a fast search;
# what must not come before a match is checked afterwards (`_starts_a_word`).
_KEY = rb"mk_[A-Za-z0-9_\-]{20,200}"
_PEM = rb"-----BEGIN (?:[A-Z0-9]+ ){0,3}PRIVATE KEY-----"
_URL = rb"postgres(?:ql)?://[^\s:/@\"'<>`]{1,200}:([^\s@\"'<>`/]{1,200})@"
# Passwords that documentation writes in example URLs; publishing them leaks nothing.
_PLACEHOLDER = (
    rb"(?i)(?:pass(?:word)?|secret|changeme|example|xxx+|\*+|\.\.\.+|(?:your|my)[_\-]?\w*)"
    rb"|.*[$<{%].*"
)
_WORD_CHARACTER = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-+.")


# The literal every match of a pattern starts with: a chunk without it is skipped at the speed
# of a substring test, which is faster the longer the literal (3 bytes: 0.8 ms per MiB; 11: 0.4).
_LITERALS = ((b"mk_", _KEY), (b"-----BEGIN ", _PEM), (b"postgres", _URL))


@functools.cache
def _patterns() -> tuple[tuple[bytes, re.Pattern[bytes]], ...]:
    """Compiled on first use: a deploy that reads no file never pays for them."""
    return tuple((literal, re.compile(p)) for literal, p in _LITERALS)


@functools.cache
def _finders() -> tuple[tuple[bytes, Callable[[bytes], object]], ...]:
    """How each pattern's literal is looked for: as a substring, except that a literal of three
    bytes is found twice as fast by a regex of itself (0.5 ms per MiB, against 1.0)."""
    return tuple(
        (literal, re.compile(re.escape(literal)).search if len(literal) <= 3 else _within(literal))
        for literal, _ in _LITERALS
    )


def _within(literal: bytes) -> Callable[[bytes], bool]:
    return lambda data: literal in data


@functools.cache
def _placeholder() -> re.Pattern[bytes]:
    return re.compile(_PLACEHOLDER)


def _starts_a_word(data: bytes, at: int) -> bool:
    return at == 0 or data[at - 1] not in _WORD_CHARACTER


HINT = (
    "a published file is public: remove the value from {file} (the Mosaic API and the database "
    "are for the developer's machine or a server, never for the browser); if you rotated it "
    "already and reviewed the file, pass --allow-secret {file}"
)
KEY_IN_USE_HINT = (
    "remove the API key from {file}: it opens every project, database and file of the account, "
    "and a published file is public; the Mosaic API is for the developer's machine, never the "
    "browser. If it was ever published, rotate the key in the dashboard"
)


class Secret(NamedTuple):
    """An exact value to look for, what to call it, and whether --allow-secret may pass it."""

    value: str
    label: str  # "the API key in use", "the project's database password"...
    allowable: bool = True


class Hit(NamedTuple):
    offset: int  # in bytes
    label: str
    preview: str
    allowable: bool


_USERINFO = r"^([A-Za-z][A-Za-z0-9+.\-]*://[^:/@]*:)[^@]*(@[^/?#]*)"


def mask(value: str) -> str:
    """`mk_Ab…9z`: enough to tell two keys apart, never enough to use one."""
    url = re.match(_USERINFO, value)
    if url:
        return f"{url.group(1)}…{url.group(2)}"
    if value.startswith("mk_") and len(value) >= 12:
        return f"{value[:5]}…{value[-2:]}"
    if len(value) >= 16:
        return f"{value[:2]}…{value[-2:]}"
    return "…"


class Searcher:
    """One search for a run: the exact values plus the patterns.

    A plain substring test per value and per pattern's literal comes first: it runs at memory
    speed, and most files hold none of them. Only then does a regex run, and only its own.
    """

    def __init__(self, secrets: Iterable[Secret]) -> None:
        exact: dict[bytes, Secret] = {}
        for secret in secrets:
            value = secret.value.strip()
            if len(value) < MIN_EXACT:
                continue
            known = exact.get(value.encode())
            # The same value under two names: the stricter (not allowable) one wins.
            if known is None or (known.allowable and not secret.allowable):
                exact[value.encode()] = secret
        # A value that begins with a pattern's literal (the key in use with mk_, the database
        # URL with postgres) is looked for only where that literal is: most data lacks it, and
        # each value's own search costs 0.4 ms per MiB.
        self._exact = [
            (value, secret, next((lit for lit, _ in _LITERALS if value.startswith(lit)), None))
            for value, secret in sorted(exact.items(), key=lambda item: len(item[0]), reverse=True)
        ]

    def hits(self, data: bytes, base: int = 0) -> Iterator[Hit]:
        """The hits in `data`, by offset; a span matched by an exact value is not reported
        again by a pattern (the database URL also looks like a URL with a password)."""
        found: dict[int, Hit] = {}
        covered: list[tuple[int, int]] = []
        present = {literal: bool(find(data)) for literal, find in _finders()}
        for value, secret, literal in self._exact:
            if literal is not None and not present[literal]:
                continue
            at = data.find(value)
            while at >= 0:
                if all(not (s <= at < e) for s, e in covered):
                    found[at] = Hit(base + at, secret.label, mask(secret.value), secret.allowable)
                    covered.append((at, at + len(value)))
                at = data.find(value, at + 1)
        for literal, pattern in _patterns():
            if not present[literal]:
                continue
            for match in pattern.finditer(data):
                at = match.start()
                if any(s <= at < e for s, e in covered) or not _starts_a_word(data, at):
                    continue
                judged = self._judge(match)
                if judged is not None:
                    found.setdefault(at, Hit(base + at, *judged))
        for at in sorted(found):
            yield found[at]

    @staticmethod
    def _judge(match: re.Match[bytes]) -> tuple[str, str, bool] | None:
        text = match.group(0)
        if text.startswith(b"mk_"):
            if not (re.search(rb"[0-9]", text[3:]) and re.search(rb"[A-Za-z]", text[3:])):
                return None  # an identifier such as mk_primary_button_background_color
            return "a string shaped like a Mosaic API key", mask(text.decode("ascii")), True
        if text.startswith(b"-----BEGIN"):
            return "a PEM private key", text.decode("ascii"), True
        if _placeholder().fullmatch(match.group(1) or b""):
            return None
        shown = text[: match.start(1) - match.start()].decode("utf-8", "replace")
        return "a PostgreSQL URL with a password", f"{shown}…@", True

    def search(self, stream: BinaryIO) -> Iterator[Hit]:
        """Every hit in a stream, read in chunks; each match found once, however it straddles."""
        base, tail, seen = 0, b"", -1
        while True:
            chunk = stream.read(CHUNK)
            data = tail + chunk
            for hit in self.hits(data, base):
                if hit.offset > seen:
                    seen = hit.offset
                    yield hit
            if not chunk:
                return
            keep = min(len(data), _OVERLAP)
            base += len(data) - keep
            tail = data[-keep:] if keep else b""


def worth_reading(path: str) -> bool:
    """False for media and archives, which cannot carry a pasted key as text. By type alone
    (`extension`): a caller may ask once per type."""
    return extension(path) not in BINARY_EXTENSIONS


def position(source: Path, offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a byte offset of a file."""
    line, line_start, read = 1, 0, 0
    with source.open("rb") as f:
        while read < offset:
            chunk = f.read(min(CHUNK, offset - read))
            if not chunk:
                break
            count = chunk.count(b"\n")
            if count:
                line += count
                line_start = read + chunk.rindex(b"\n") + 1
            read += len(chunk)
        f.seek(line_start)
        before = f.read(offset - line_start)
    return line, len(before.decode("utf-8", "replace")) + 1


def findings_for(path: str, source: Path, hits: Iterable[Hit], *, allowed: bool) -> list[Finding]:
    """The findings of one file; `allowed` (--allow-secret) drops all but non-allowable hits."""
    found = []
    for hit in hits:
        if allowed and hit.allowable:
            continue
        line, column = position(source, hit.offset)
        hint = (KEY_IN_USE_HINT if not hit.allowable else HINT).format(file=path)
        message = f"{hit.label} ({hit.preview}) would be published"
        found.append(Finding(SECRET, path, line, column, message, hint, "error"))
    return found
