"""The hash cache: a file's sha256 is trusted while its (size, mtime_ns, inode, ctime_ns) match,
so a deploy that changes nothing reads no file content. It speeds up hashing; it is never the
truth about what is deployed (that lives on the platform).
"""

from __future__ import annotations

import itertools
import os
import zlib
from pathlib import Path

from mosaicsync.atomic import utf8_pieces, write_atomic

_CACHE_MAGIC = b"mosaicsync-hashcache"
_CACHE_VERSION = 2  # 2 adds the rules its paths were vetted under; 1 is still read


StatKey = tuple[int, int, int, int]


def stat_key(st: os.stat_result) -> StatKey:
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


class HashCache:
    """sha256 by relative path, trusted only while (size, mtime_ns, inode, ctime_ns) all match.

    On disk: a header line `mosaicsync-hashcache 2 <crc32> <vetted>` and then NUL-separated pairs
    of path and "size mtime_ns inode ctime_ns sha256"; NUL cannot occur in a file name, so nothing
    needs escaping and loading is two C-level splits.

    `vetted` is what the scanner vouches for: every path held was found publishable by a walk
    under the rules of that fingerprint ("-": no such promise), so the next walk under the same
    rules need not judge those paths again.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._entries: dict[str, str] = {}
        self._dirty = False
        self._vetted = ""

    @property
    def vetted(self) -> str:
        return self._vetted

    @vetted.setter
    def vetted(self, fingerprint: str) -> None:
        if fingerprint != self._vetted:
            self._vetted = fingerprint
            self._dirty = True

    def vetted_paths(self, fingerprint: str) -> dict[str, str]:
        """The paths held, if they were vetted under `fingerprint`; else none (a mapping whose
        keys are the paths: only membership is meant)."""
        return self._entries if fingerprint and fingerprint == self._vetted else {}

    @classmethod
    def load(cls, path: Path) -> HashCache:
        """The cache at `path`; a missing, corrupt or foreign-version file gives an empty cache."""
        cache = cls(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return cache
        except OSError:
            data = b""
        parsed = _parse_cache(data)
        if parsed is None:
            cache._dirty = True  # replace the unusable file on the next save
        else:
            cache._entries, cache._vetted = parsed
        return cache

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, rel_path: object) -> bool:
        return rel_path in self._entries

    def lookup(self, rel_path: str, key: StatKey) -> str | None:
        """The cached sha256 if the file's stat still matches the one it was hashed with."""
        value = self._entries.get(rel_path)
        if value is None or len(value) < 65 or value[-65] != " ":
            return None
        if value[:-65] != f"{key[0]} {key[1]} {key[2]} {key[3]}":  # a third less than format
            return None
        return value[-64:]

    def store(self, rel_path: str, key: StatKey, sha256: str) -> None:
        """Remember the sha256 read from a file while it had this stat."""
        value = f"{key[0]} {key[1]} {key[2]} {key[3]} {sha256}"
        if self._entries.get(rel_path) != value:
            self._entries[rel_path] = value
            self._dirty = True

    def discard(self, rel_path: str) -> None:
        """Forget one path, whose cached hash can no longer be trusted."""
        if self._entries.pop(rel_path, None) is not None:
            self._dirty = True

    def discard_tree(self, rel_path: str) -> None:
        """Forget `rel_path` and, should it have been a directory, everything under it."""
        self.discard(rel_path)
        prefix = rel_path + "/"
        under = [path for path in self._entries if path.startswith(prefix)]
        for path in under:
            del self._entries[path]
        self._dirty = self._dirty or bool(under)

    def retain(self, live: set[str]) -> None:
        """Drop every entry whose path is not in `live` (the files a full walk found)."""
        stale = self._entries.keys() - live
        for path in stale:
            del self._entries[path]
        self._dirty = self._dirty or bool(stale)

    def save(self) -> None:
        """Write the cache atomically (temp file, then rename); a no-op when nothing changed.

        A cache only saves time, so a directory we cannot write (a read-only checkout) is no error.
        """
        if not self._dirty and self.path.exists():
            return
        pieces = list(utf8_pieces(itertools.chain.from_iterable(self._entries.items()), "\0"))
        vetted = (self._vetted or "-").encode()
        checksum = zlib.crc32(vetted)
        for piece in pieces:
            checksum = zlib.crc32(piece, checksum)
        header = b"%s %d %08x %s\n" % (_CACHE_MAGIC, _CACHE_VERSION, checksum, vetted)
        try:
            ensure_cache_dir(self.path.parent)
            # No fsync: a cache cut short by a power loss fails its checksum and is rebuilt.
            write_atomic(self.path, [header, *pieces], durable=False)
        except OSError:
            return
        self._dirty = False


def ensure_cache_dir(folder: Path) -> None:
    """Create the project's cache folder with a `.gitignore` of its own (as pytest and ruff do),
    so git never lists it: not in commits, not as what makes a deploy's work tree dirty."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / ".gitignore"
    if not marker.exists():
        marker.write_text("# mosaicsync's local cache: never committed\n*\n")


def _parse_cache(data: bytes) -> tuple[dict[str, str], str] | None:
    """(entries, vetted fingerprint) of a cache file, or None when it cannot be used."""
    try:
        header, _, payload = data.partition(b"\n")
        fields = header.split(b" ")
        if fields[0] != _CACHE_MAGIC:
            return None
        version = int(fields[1])
        if version == 1 and len(fields) == 3:
            vetted = b"-"  # written before paths were vouched for: hashes only
            checksum = zlib.crc32(payload)
        elif version == _CACHE_VERSION and len(fields) == 4:
            vetted = fields[3]
            checksum = zlib.crc32(payload, zlib.crc32(vetted))
        else:
            return None
        if int(fields[2], 16) != checksum:
            return None
        fingerprint = "" if vetted == b"-" else vetted.decode("ascii")
        if not payload:
            return {}, fingerprint
        parts = payload.decode("utf-8").split("\0")
    except (ValueError, IndexError):  # a bad header, a bad number or bad UTF-8
        return None
    if len(parts) % 2:
        return None
    return dict(zip(parts[0::2], parts[1::2], strict=True)), fingerprint
