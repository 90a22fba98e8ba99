"""Point HTML and CSS at files that went to storage, so a site works with some files off-site.

Pure text in, text out: the deploy gives the map of storage-routed paths to their URLs. Only
`src`, `href`, `srcset` attributes and CSS `url(...)` are touched; JavaScript never is (it can
read `mosaic-assets.json`).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

REWRITTEN_EXTENSIONS = frozenset({".html", ".css"})

_ATTR = re.compile(
    r"""(?P<pre>\b(?:src|href|poster)\s*=\s*)(?P<q>["'])(?P<url>[^"'<>]*)(?P=q)""", re.I
)
_SRCSET = re.compile(r"""(?P<pre>\bsrcset\s*=\s*)(?P<q>["'])(?P<val>[^"'<>]*)(?P=q)""", re.I)
_CSS_URL = re.compile(
    r"""(?P<pre>url\(\s*)(?P<q>["']?)(?P<url>[^"')\s]*)(?P=q)(?P<post>\s*\))""", re.I
)
_STYLE_BLOCK = re.compile(r"(<style\b[^>]*>)(.*?)(</style>)", re.I | re.S)
_STYLE_ATTR = re.compile(r"""(\bstyle\s*=\s*)(["'])(.*?)(\2)""", re.I | re.S)


@dataclass(frozen=True)
class Rewritten:
    text: str
    references: tuple[str, ...]  # storage paths this file now points at


def resolve(ref: str, from_path: str) -> str | None:
    """The site path a reference in `from_path` points at, or None if it leaves the site."""
    if not ref or ref.startswith(("#", "data:", "mailto:", "javascript:", "//")):
        return None
    parts = urlsplit(ref)
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


def needs_rewrite(path: str) -> bool:
    return posixpath.splitext(path)[1].lower() in REWRITTEN_EXTENSIONS


def rewrite(text: str, from_path: str, storage_urls: Mapping[str, str]) -> Rewritten:
    """Replace references to storage-routed files with their storage URLs."""
    if not storage_urls:
        return Rewritten(text, ())
    found: set[str] = set()

    def swap(ref: str) -> str:
        target = resolve(ref, from_path)
        if target is not None and target in storage_urls:
            found.add(target)
            return storage_urls[target]
        return ref

    def css(block: str) -> str:
        return _CSS_URL.sub(
            lambda m: m["pre"] + m["q"] + swap(m["url"]) + m["q"] + m["post"], block
        )

    if from_path.lower().endswith(".css"):
        return Rewritten(css(text), tuple(sorted(found)))

    def srcset(m: re.Match[str]) -> str:
        items = []
        for item in m["val"].split(","):
            bits = item.strip().split(None, 1)
            if bits:
                bits[0] = swap(bits[0])
            items.append(" ".join(bits))
        return m["pre"] + m["q"] + ", ".join(items) + m["q"]

    out = _ATTR.sub(lambda m: m["pre"] + m["q"] + swap(m["url"]) + m["q"], text)
    out = _SRCSET.sub(srcset, out)
    out = _STYLE_BLOCK.sub(lambda m: m[1] + css(m[2]) + m[3], out)
    out = _STYLE_ATTR.sub(lambda m: m[1] + m[2] + css(m[3]) + m[4], out)
    return Rewritten(out, tuple(sorted(found)))
