"""Synthetic sites shaped like real static builds, written fast and reproducibly.

A real build is mostly small text (HTML, CSS, JS, JSON, SVG) and images, a few fonts, nested a
few folders deep, with sizes spread over orders of magnitude. Sizes follow a log-normal law per
type (the shape measured sites show); the content is cheap to make but unique per file, so no two
files share a hash, as in a real build.
"""

from __future__ import annotations

import math
import random
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Kind:
    """One file type: its share of the files and its size law (median bytes, log-sigma, cap)."""

    ext: str
    share: float
    median: int
    sigma: float
    low: int
    high: int


# "mixed": a content site with a JS bundle split into chunks; shares add up to 1.
MIXED: tuple[Kind, ...] = (
    Kind(".html", 0.14, 9_000, 0.7, 600, 200_000),
    Kind(".css", 0.05, 6_000, 1.0, 200, 300_000),
    Kind(".js", 0.20, 7_000, 1.2, 200, 1_500_000),
    Kind(".json", 0.10, 1_500, 1.2, 60, 800_000),
    Kind(".png", 0.26, 7_000, 1.3, 300, 3_000_000),
    Kind(".svg", 0.24, 1_500, 0.9, 150, 100_000),
    Kind(".woff2", 0.01, 28_000, 0.4, 8_000, 200_000),
)
MAX_FONTS = 24  # a site has a handful of font files, whatever its size

# "small": what a cold deploy of small files is measured with (all of them site files).
SMALL: tuple[Kind, ...] = (
    Kind(".html", 0.25, 2_000, 0.5, 300, 8_000),
    Kind(".css", 0.10, 1_500, 0.5, 200, 8_000),
    Kind(".js", 0.25, 2_000, 0.6, 200, 8_000),
    Kind(".json", 0.15, 600, 0.6, 60, 8_000),
    Kind(".svg", 0.15, 900, 0.5, 150, 8_000),
    Kind(".png", 0.10, 1_800, 0.5, 300, 8_000),
)
PROFILES = {"mixed": MIXED, "small": SMALL}

FILES_PER_DIR = 60
_VOCABULARY = (
    "mosaic deploy static site page article post section header footer nav button card grid "
    "image figure caption table list item link anchor title subtitle summary detail content "
    "layout theme color font spacing margin padding border radius shadow transition render "
    "state store route fetch cache token session user account project storage database query"
)
_WORDS = _VOCABULARY.split()


@dataclass
class SiteStats:
    """What was written: counts and bytes per extension."""

    files: int = 0
    bytes: int = 0
    by_ext: dict[str, list[int]] = field(default_factory=dict)  # ext -> [files, bytes]

    def add(self, ext: str, size: int) -> None:
        self.files += 1
        self.bytes += size
        entry = self.by_ext.setdefault(ext, [0, 0])
        entry[0] += 1
        entry[1] += size

    def to_json(self) -> dict[str, object]:
        return {"files": self.files, "bytes": self.bytes, "by_ext": self.by_ext}


def _text_pool(rng: random.Random, size: int) -> str:
    """A long run of words that file bodies are cut from (cheaper than making each one)."""
    parts: list[str] = []
    total = 0
    while total < size:
        word = rng.choice(_WORDS)
        parts.append(word)
        total += len(word) + 1
    return " ".join(parts)


def _size(rng: random.Random, kind: Kind) -> int:
    value = kind.median * math.exp(rng.gauss(0.0, kind.sigma))
    return int(min(max(value, kind.low), kind.high))


def _cut(pool: str, rng: random.Random, size: int) -> str:
    if size >= len(pool):
        return (pool * (size // len(pool) + 1))[:size]
    start = rng.randrange(0, len(pool) - size)
    return pool[start : start + size]


def _png(rng: random.Random, size: int, tag: bytes) -> bytes:
    """A PNG container of about `size` bytes with incompressible pixel data, as photos have."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data)
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    side = max(1, int(math.sqrt(size / 3)))
    head = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0))
    overhead = len(head) + 12 + 12 + len(tag)
    body = tag + rng.randbytes(max(0, size - overhead))
    return head + chunk(b"IDAT", body) + chunk(b"IEND", b"")


def _text_file(ext: str, index: int, body: str, fonts: list[str], depth: int) -> str:
    up = "../" * depth
    if ext == ".html":
        return (
            f'<!doctype html>\n<html><head><meta charset="utf-8"><title>Page {index}</title>\n'
            f'<link rel="stylesheet" href="{up}assets/css/site.css"></head>\n'
            f"<body><main><h1>Page {index}</h1>\n<p>{body}</p></main>\n"
            f'<script src="{up}assets/js/app.js"></script></body></html>\n'
        )
    if ext == ".css":
        font = ""
        if fonts and index % 4 == 0:
            font = (
                f"@font-face{{font-family:F{index};src:url('{up}{fonts[index % len(fonts)]}')"
                " format('woff2')}\n"
            )
        return f"/* build {index} */\n{font}.c{index}{{content:'{body}'}}\n"
    if ext == ".js":
        return f"/* chunk {index} */\nexport const text{index} = {body!r};\n"
    if ext == ".json":
        return f'{{"id": {index}, "text": "{body}"}}\n'
    if ext == ".svg":
        return (
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" id="i{index}">'
            f"<title>{body}</title></svg>\n"
        )
    raise ValueError(ext)


def _folder(kind: Kind, index: int) -> tuple[str, int]:
    """A folder like a real build's (posts/0012/, assets/js/03/); also its depth."""
    bucket = index // FILES_PER_DIR
    if kind.ext == ".html":
        return f"posts/{bucket // 50:03d}/{bucket % 50:02d}", 3
    if kind.ext == ".woff2":
        return "assets/fonts", 2
    if kind.ext == ".json":
        return f"data/{bucket:04d}", 2
    if kind.ext == ".png":
        return f"images/{bucket // 40:03d}/{bucket % 40:02d}", 3
    sub = {".css": "css", ".js": "js", ".svg": "icons"}[kind.ext]
    return f"assets/{sub}/{bucket:04d}", 3


def _counts(files: int, kinds: tuple[Kind, ...]) -> list[tuple[Kind, int]]:
    counts = []
    for kind in kinds:
        n = round(files * kind.share)
        if kind.ext == ".woff2":
            n = min(n, MAX_FONTS) if files >= 100 else 0
        counts.append((kind, n))
    # The biggest type absorbs rounding so the total is exact.
    biggest = max(range(len(counts)), key=lambda i: counts[i][1])
    kind, n = counts[biggest]
    counts[biggest] = (kind, n + files - sum(c for _, c in counts))
    return counts


def generate_site(root: Path, files: int, *, profile: str = "mixed", seed: int = 1) -> SiteStats:
    """Write a site of exactly `files` files under `root`; the same seed gives the same bytes."""
    kinds = PROFILES[profile]
    rng = random.Random(seed)
    pool = _text_pool(rng, 4_000_000)
    stats = SiteStats()
    counts = _counts(files, kinds)
    font_count = dict((k.ext, n) for k, n in counts).get(".woff2", 0)
    fonts = [f"assets/fonts/font{i:02d}.woff2" for i in range(font_count)]
    made: set[str] = set()
    for kind, count in counts:
        for index in range(count):
            folder, depth = _folder(kind, index)
            if kind.ext == ".woff2":
                rel = fonts[index]
            else:
                rel = f"{folder}/{kind.ext[1:]}{index:06d}{kind.ext}"
            if index == 0 and kind.ext == ".html":
                rel, depth = "index.html", 0
            if index == 0 and kind.ext == ".css":
                rel, depth = "assets/css/site.css", 2
            if index == 0 and kind.ext == ".js":
                rel, depth = "assets/js/app.js", 2
            size = _size(rng, kind)
            if kind.ext in (".png", ".woff2"):
                data = _png(rng, size, rel.encode()) if kind.ext == ".png" else rng.randbytes(size)
            else:
                text = _text_file(kind.ext, index, _cut(pool, rng, size), fonts, depth)
                data = text.encode()
            parent = (root / rel).parent
            key = parent.as_posix()
            if key not in made:
                parent.mkdir(parents=True, exist_ok=True)
                made.add(key)
            (root / rel).write_bytes(data)
            stats.add(kind.ext, len(data))
    return stats


def touch_one(root: Path, rel: str = "assets/css/site.css") -> Path:
    """Change one file's bytes (an edit), keeping its type and roughly its size."""
    path = root / rel
    path.write_bytes(path.read_bytes() + b"\n/* edited */\n")
    return path
