"""How pages name site files: which published files are pages (HTML and CSS: the storage
rewrite edits them, the references check reads them) and which site path a reference in one
leads to. Kept apart from the parsers (rewrite.py, ~17 ms to import), so a run that parses no
page, such as a deploy of one changed script, never loads them.
"""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit

from mosaicsync.contract import extension

PAGE_EXTENSIONS = frozenset({".html", ".css"})


def is_page(path: str) -> bool:
    """Whether the site file at `path` is read for references. By type alone (`extension`)."""
    return extension(path) in PAGE_EXTENSIONS


def resolve(ref: str, from_path: str) -> str | None:
    """The site path a reference in `from_path` points at, or None if it leaves the site."""
    if not ref or ref.startswith(("#", "data:", "mailto:", "javascript:", "//")):
        return None
    try:
        parts = urlsplit(ref)
    except ValueError:  # e.g. an unclosed IPv6 bracket: not a reference we can follow
        return None
    if parts.scheme or parts.netloc:
        return None
    path = unquote(parts.path)
    if not path:
        return None
    if path.startswith("/"):
        joined = path.lstrip("/")
    else:
        joined = posixpath.join(posixpath.dirname(from_path), path)
    normalized = posixpath.normpath(joined)
    if normalized.startswith("../") or normalized == "..":
        return None
    return normalized
