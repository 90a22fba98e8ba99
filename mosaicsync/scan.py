"""Walk the static root, apply the ignore rules and hash what changed.

A file whose (size, mtime_ns, inode, ctime_ns) still matches the hash cache is never read, so a
deploy that changes nothing costs one `stat` per file; cache misses are hashed on every core.
"""

from __future__ import annotations

import errno
import hashlib
import operator
import os
import stat
import threading
import time
import unicodedata
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from mosaicsync import publishable
from mosaicsync.errors import ScanError
from mosaicsync.hashcache import HashCache, StatKey, stat_key
from mosaicsync.ignore import IGNORE_FILE, IgnoreRules

CHUNK = 1024 * 1024  # bytes read per call when hashing
POOL_MIN_SIZE = 256 * 1024  # smaller files are hashed in the calling thread

# A file changed this recently may be rewritten again within the same tick of the filesystem's
# clock (a Linux jiffy, NTFS's 16 ms) without its stat changing, so its hash is not cached yet.
RACY_WINDOW_NS = 100_000_000


class Root(str):
    """A static root as the `source` of the files that lie at root/path: one string shared by
    all of them, where a path of its own would cost each file ~110 bytes (11 MB at 100k)."""

    __slots__ = ()


class LocalFile(NamedTuple):
    """A file that will be published: where it goes (`path`) and where to read it (`abs_path`).
    (A named tuple: every walk builds one per file, at half a frozen dataclass's cost, which
    sets each field through object.__setattr__: 8 ms of a no-op deploy of 10k files.)"""

    path: str  # POSIX, NFC, relative to the static root
    source: str | Path  # its own path (a link's resolved target, a name normalized), or a Root
    size: int
    sha256: str

    @property
    def abs_path(self) -> Path:
        # Made on demand: building a Path per file costs more than the stat of a no-op walk.
        return Path(self.location)

    @property
    def location(self) -> str:
        """`abs_path` as a string, for the hot paths that only open the file: a Path costs
        ~0.1 ms of parsing per file where a join costs 1 µs."""
        source = self.source
        return os.path.join(source, self.path) if type(source) is Root else os.fspath(source)

    def read_bytes(self) -> bytes:
        with open(self.location, "rb") as f:
            return f.read()


class Skipped(NamedTuple):
    """A path left out of the deploy, with the rule that left it out."""

    path: str  # relative; a directory ends with "/"
    reason: str


@dataclass
class ScanResult:
    """What a walk found: files to publish, what was skipped and how much was read."""

    files: list[LocalFile]  # sorted by path
    skipped: list[Skipped]
    hashed: int  # files whose content was read this time (cache misses)
    bytes_hashed: int


# --- hashing -------------------------------------------------------------------------------------

_buffers = threading.local()


def _read_digest(path: str) -> tuple[str, int]:
    """(sha256 hex, bytes read) of one file, streamed through this thread's reusable buffer."""
    view = getattr(_buffers, "view", None)
    if view is None:
        view = _buffers.view = memoryview(bytearray(CHUNK))
    digest = hashlib.sha256()
    total = 0
    with open(path, "rb", buffering=0) as handle:
        while count := handle.readinto(view):
            digest.update(view[:count])
            total += count
    return digest.hexdigest(), total


def hash_file(path: Path) -> str:
    """The sha256 of a file's raw bytes, read in 1 MiB chunks so memory stays flat."""
    return _read_digest(os.fspath(path))[0]


# --- the walk ------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Found:
    rel: str
    path: str
    key: StatKey  # (size, mtime_ns, inode, ctime_ns): all a 100k-file walk keeps of the stat
    sha: str = ""  # filled from the cache or by hashing
    plain: bool = False  # `path` is the root joined with `rel`, as the walk named every part


def _nfc(name: str) -> str:
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def _link_fix(rel: str) -> str:
    return f"remove the link, or add {rel} to {IGNORE_FILE}"


def vetting(rules: IgnoreRules) -> str:
    """What the walk's verdict on a path depends on: the ignore rules and what the platform can
    store. A path kept by a walk under the same vetting is kept again, without a second look."""
    return hashlib.sha256(f"{rules.fingerprint}\0{publishable.RULES}".encode()).hexdigest()


def _parents(paths: Iterable[str]) -> set[str]:
    """Every folder that holds one of `paths` (POSIX, relative), at any depth."""
    folders: set[str] = set()
    for path in paths:
        end = path.rfind("/")
        while end > 0:
            folder = path[:end]
            if folder in folders:
                break  # and so are its parents
            folders.add(folder)
            end = path.rfind("/", 0, end)
    return folders


class _Walker:
    """Collects the publishable files under the root; links are followed only inside it.

    `known`: paths a walk under the same rules kept before (see `vetting`); a plain file or
    folder among them, or holding one of them, is kept without asking the rules again, which is
    a third of a no-op walk. Links are judged afresh, always.
    """

    def __init__(self, root: str, rules: IgnoreRules, known: Collection[str] = ()) -> None:
        self.root = root
        self.root_prefix = root if root.endswith(os.sep) else root + os.sep
        self.rules = rules
        self.found: list[_Found] = []
        self.skipped: list[Skipped] = []
        self.known = known
        self.known_folders = _parents(known) if known else set()

    def inside(self, real: str) -> bool:
        return real == self.root or real.startswith(self.root_prefix)

    def walk(
        self, directory: str, prefix: str, chain: tuple[str, ...], plain: bool = False
    ) -> None:
        """Walk `directory` (a real path) whose files are published under `prefix`.

        `chain` holds the real paths of the directories the walk is inside, to refuse loops;
        `plain`: `directory` is the root joined with `prefix` (no link, no name normalized).
        """
        match = self.rules.match
        found = self.found
        skipped = self.skipped
        check = publishable.check
        known, known_folders = self.known, self.known_folders
        stack = [(directory, prefix, chain, plain)]
        while stack:
            directory, prefix, chain, plain = stack.pop()
            unusual = False  # a name that is not ASCII: two names may then be one once normalized
            try:
                with os.scandir(directory) as entries:
                    for entry in entries:
                        name = entry.name
                        if not name.isascii():
                            name, unusual = _nfc(name), True
                        rel = prefix + name
                        if entry.is_symlink():
                            self.visit_link(entry.path, rel, chain, stack)
                        elif entry.is_dir(follow_symlinks=False):
                            reason = None if rel in known_folders else match(rel, True, True)
                            if reason is not None:
                                skipped.append(Skipped(rel + "/", reason))
                            else:
                                stack.append(
                                    (
                                        entry.path, rel + "/", (*chain, entry.path),
                                        plain and name is entry.name,
                                    )
                                )  # fmt: skip
                        elif entry.is_file(follow_symlinks=False):
                            if rel not in known:
                                reason = match(rel, False, True)
                                if reason is not None:
                                    skipped.append(Skipped(rel, reason))
                                    continue
                                check(rel)
                            st = _stat(entry.path, rel, entry)
                            if st is not None:
                                found.append(
                                    _Found(
                                        rel, entry.path, stat_key(st), "",
                                        plain and name is entry.name,
                                    )
                                )  # fmt: skip
                        else:
                            self.skip_special(rel)
                if unusual:
                    _refuse_nfc_twins(directory, prefix)
            except OSError as exc:
                shown = prefix or "./"
                raise ScanError(
                    f"cannot read directory {shown}: {exc.strerror or exc}",
                    hint=f"fix its permissions, or add {shown} to {IGNORE_FILE}",
                ) from exc

    def skip_special(self, rel: str) -> None:
        reason = self.rules.match(rel, False)
        self.skipped.append(Skipped(rel, reason or "not a regular file"))

    def visit_link(
        self,
        link: str,
        rel: str,
        chain: tuple[str, ...],
        stack: list[tuple[str, str, tuple[str, ...], bool]],
    ) -> None:
        """Follow a symlink inside the root; one that leaves it, dangles or loops is an error."""
        real = self.resolve_link(link, rel, ignorable=True)
        if real is None:
            return
        st = _stat(real, rel)
        if st is None:
            return
        is_dir = stat.S_ISDIR(st.st_mode)
        shown = rel + "/" if is_dir else rel
        reason = self.rules.match(rel, is_dir)
        if reason is not None:
            self.skipped.append(Skipped(shown, reason))
            return
        secret = self.secret_target(real, is_dir)
        if secret is not None:
            self.skipped.append(Skipped(shown, secret))
            return
        if is_dir:
            self.check_loop(real, rel, chain)
            stack.append((real, rel + "/", (*chain, real), False))
        elif stat.S_ISREG(st.st_mode):
            publishable.check(rel)
            self.found.append(_Found(rel, real, stat_key(st)))
        else:
            self.skipped.append(Skipped(rel, "not a regular file"))

    def resolve_link(self, link: str, rel: str, *, ignorable: bool) -> str | None:
        """The real path a link inside the root leads to; None if it is broken but ignored."""
        try:
            raw_target = os.readlink(link)
        except OSError:
            raw_target = "?"
        try:
            real = os.path.realpath(link, strict=True)
        except OSError as exc:
            if ignorable and self._ignored_link(rel):
                return None
            what = "loops" if exc.errno == errno.ELOOP else "points to nothing (it dangles)"
            raise ScanError(f"symlink {rel} -> {raw_target} {what}", hint=_link_fix(rel)) from exc
        if not self.inside(real):
            if ignorable and self._ignored_link(rel):
                return None
            raise ScanError(
                f"symlink {rel} -> {raw_target} leaves the static root (it resolves to {real})",
                hint=_link_fix(rel) + ", or copy the target into the static root",
            )
        return real

    def secret_target(self, real: str, is_dir: bool) -> str | None:
        """Why a link's target is a secret, or None.

        A link must not smuggle out what the rules keep back, such as `env.txt -> .env`.
        """
        target_rel = _nfc(Path(os.path.relpath(real, self.root)).as_posix())
        secret = self.rules.match_with_parents(target_rel, is_dir, secrets_only=True)
        return None if secret is None else f"links to {target_rel}, {secret}"

    def check_loop(self, real: str, rel: str, chain: tuple[str, ...]) -> None:
        """Refuse a directory link that leads back to a directory the walk is already inside."""
        for ancestor in chain:
            if ancestor == real or ancestor.startswith(real + os.sep):
                raise ScanError(
                    f"symlink {rel} -> {os.path.relpath(real, self.root)} loops: it leads back to "
                    "a directory that contains it",
                    hint=_link_fix(rel),
                )

    def _ignored_link(self, rel: str) -> bool:
        """An ignored broken link is skipped rather than an error, whichever way it was named."""
        reason = self.rules.match(rel, False) or self.rules.match(rel, True)
        if reason is None:
            return False
        self.skipped.append(Skipped(rel, reason))
        return True


def _stat(path: str, rel: str, entry: os.DirEntry[str] | None = None) -> os.stat_result | None:
    """The file's stat, or None if it was deleted since it was listed (it is gone, not broken)."""
    try:
        return entry.stat() if entry is not None else os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ScanError(
            f"cannot read {rel}: {exc.strerror or exc}",
            hint=f"fix its permissions, or add {rel} to {IGNORE_FILE}",
        ) from exc


def _refuse_nfc_twins(directory: str, prefix: str) -> None:
    """Two names of one folder that are one once Unicode-normalized would overwrite each other
    on the platform (looked for only in a folder that has a name that is not ASCII)."""
    names: dict[str, str] = {}
    for raw in sorted(os.listdir(directory)):
        name = _nfc(raw)
        if name in names:
            raise ScanError(
                f"{prefix}{raw!a} and {prefix}{names[name]!a} have the same name once "
                "Unicode-normalized (NFC), so they would overwrite each other",
                hint="rename one of them",
            )
        names[name] = raw


def _real_root(static_root: Path) -> str:
    try:
        real = os.path.realpath(static_root, strict=True)
    except OSError as exc:
        raise ScanError(
            f"the static root {static_root} does not exist",
            hint="create it, or set [static] root in mosaic.toml",
        ) from exc
    if not os.path.isdir(real):
        raise ScanError(
            f"the static root {static_root} is not a directory",
            hint="set [static] root in mosaic.toml to a directory",
        )
    return real


# --- hashing the walk's result -------------------------------------------------------------------


def _hash_batch(batch: list[_Found]) -> int:
    """Fill in `sha` for each file of the batch; the bytes read."""
    total = 0
    for item in batch:
        try:
            for _ in range(3):
                item.sha, count = _read_digest(item.path)
                total += count
                if count == item.key[0]:
                    break
                # Being written while we read it (an editor saving, a build running): the size
                # and the hash must describe the same bytes, so look again.
                item.key = stat_key(os.stat(item.path))
            else:
                raise ScanError(
                    f"{item.rel} kept changing while it was being read",
                    hint="run the command again once whatever writes it has finished",
                )
        except FileNotFoundError as exc:
            raise ScanError(
                f"{item.rel} disappeared while the static root was being read",
                hint="run the command again once whatever deletes it has finished",
            ) from exc
        except OSError as exc:
            raise ScanError(
                f"cannot read {item.rel}: {exc.strerror or exc}",
                hint=f"fix its permissions, or add {item.rel} to {IGNORE_FILE}",
            ) from exc
    return total


def _hash_all(misses: list[_Found], workers: int) -> int:
    """Hash every miss: big files on a thread pool, small ones meanwhile in this thread.

    hashlib and reads release the GIL on big buffers, so big files hash on every core; a small
    file costs mostly interpreter time, which threads would only fight over.
    """
    big = [item for item in misses if item.key[0] >= POOL_MIN_SIZE]
    if workers <= 1 or not big or len(big) == len(misses) == 1:
        return _hash_batch(misses)
    # Imported here: with its logging, a start that hashes nothing big would pay ~9 ms for it.
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    small = [item for item in misses if item.key[0] < POOL_MIN_SIZE]
    big.sort(key=lambda item: item.key[0], reverse=True)  # longest first evens the finish
    pool = ThreadPoolExecutor(max_workers=min(workers, len(big)))
    try:
        futures = [pool.submit(_hash_batch, [item]) for item in big]
        total = _hash_batch(small)
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        for future in done:
            future.result()  # raises the first failure
        return total + sum(future.result() for future in futures)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_by_path = operator.attrgetter("path")


def _resolve(
    found: list[_Found],
    cache: HashCache | None,
    started_ns: int,
    workers: int,
    root: str = "",
) -> tuple[list[LocalFile], int, int, int]:
    """LocalFiles for the walk's result, reading only the files the cache cannot vouch for;
    (files, files read, bytes read, files the cache now holds). The plain ones name `root`,
    the walk's, as their source."""
    misses: list[_Found] = []
    for item in found:
        if cache is not None:
            item.sha = cache.lookup(item.rel, item.key) or ""
        if not item.sha:
            misses.append(item)
    bytes_hashed = _hash_all(misses, workers)
    held = len(found) - len(misses)
    if cache is not None:
        settled_before = started_ns - RACY_WINDOW_NS
        for item in misses:
            key = item.key
            if max(key[1], key[3]) < settled_before:
                cache.store(item.rel, key, item.sha)
                held += 1
            else:
                cache.discard(item.rel)
    shared = Root(root)
    files = [
        LocalFile(item.rel, shared if item.plain else item.path, item.key[0], item.sha)
        for item in found
    ]
    files.sort(key=_by_path)
    return files, len(misses), bytes_hashed, held


def scan(
    static_root: Path,
    rules: IgnoreRules,
    cache: HashCache | None = None,
    *,
    workers: int | None = None,
) -> ScanResult:
    """Walk the static root: the files to publish, with their sha256, and what was skipped."""
    started_ns = time.time_ns()
    root = _real_root(static_root)
    vetted = vetting(rules)
    walker = _Walker(root, rules, cache.vetted_paths(vetted) if cache is not None else ())
    walker.walk(root, "", (root,), plain=True)
    files, hashed, bytes_hashed, held = _resolve(
        walker.found, cache, started_ns, workers or os.cpu_count() or 1, root
    )
    if cache is not None:
        if len(cache) != held:
            # Entries the walk did not meet: files gone since. (Equal counts: every entry is one
            # of the files found, so there is nothing to drop; a set of every path costs a big
            # site.)
            cache.retain({local.path for local in files})
        # Now every path the cache holds is one this walk kept, under these rules.
        cache.vetted = vetted
    walker.skipped.sort(key=lambda skipped: skipped.path)
    return ScanResult(files, walker.skipped, hashed, bytes_hashed)


def scan_paths(
    static_root: Path,
    rel_paths: Iterable[str],
    rules: IgnoreRules,
    cache: HashCache | None = None,
) -> tuple[list[LocalFile], list[str]]:
    """Re-check only `rel_paths` (what a watcher saw change): (files present, paths now gone).

    A directory yields every file under it. A gone path may have been a directory, so callers
    drop it and everything under it; an ignored path counts as gone, as a full scan would.
    """
    started_ns = time.time_ns()
    root = _real_root(static_root)
    walker = _Walker(root, rules)
    gone: set[str] = set()
    for raw in rel_paths:
        parts = _split_rel(raw)
        rel = "/".join(_nfc(part) for part in parts)
        before = len(walker.found)
        _visit_one(walker, parts, rel)
        if len(walker.found) == before:
            gone.add(rel)
    unique = {item.rel: item for item in walker.found}
    files, _, _, _ = _resolve(list(unique.values()), cache, started_ns, os.cpu_count() or 1)
    if cache is not None:
        for rel in gone:
            cache.discard_tree(rel)
        if cache.vetted != vetting(rules):
            # Paths kept under these rules join paths kept under others: vouch for none of them
            # until a full walk looks at all of them again.
            cache.vetted = ""
    return files, sorted(gone)


def _split_rel(raw: str) -> list[str]:
    parts = [part for part in raw.replace(os.sep, "/").split("/") if part not in ("", ".")]
    if not parts or ".." in parts or os.path.isabs(raw):
        raise ValueError(f"{raw!r} is not a path inside the static root")
    return parts


def _visit_one(walker: _Walker, parts: list[str], rel: str) -> None:
    """Add what one path holds to the walker, with the same rules and link checks as a full walk."""
    names = _locate(walker.root, parts)
    if names is None:
        return
    logical = rel.split("/")
    chain = [walker.root]
    current = walker.root
    for depth, name in enumerate(names[:-1], start=1):
        parent_rel = "/".join(logical[:depth])
        if walker.rules.match(parent_rel, True) is not None:
            return
        current = os.path.join(current, name)
        if os.path.islink(current):
            real = walker.resolve_link(current, parent_rel, ignorable=False)
            if real is None or walker.secret_target(real, True) is not None:
                return
            walker.check_loop(real, parent_rel, tuple(chain))
            current = real
        chain.append(current)
    path = os.path.join(current, names[-1])
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    stack: list[tuple[str, str, tuple[str, ...]]] = []
    if stat.S_ISLNK(st.st_mode):
        walker.visit_link(path, rel, tuple(chain), stack)
    elif stat.S_ISDIR(st.st_mode):
        if walker.rules.match(rel, True) is None:
            stack.append((path, rel + "/", (*chain, path)))
    elif stat.S_ISREG(st.st_mode):
        if walker.rules.match(rel, False) is None:
            publishable.check(rel)
            walker.found.append(_Found(rel, path, stat_key(st)))
    else:
        walker.skip_special(rel)
    for directory, prefix, dir_chain in stack:
        walker.walk(directory, prefix, dir_chain)


def _locate(root: str, parts: list[str]) -> list[str] | None:
    """The on-disk names for `parts`, also when the disk keeps a name in another Unicode form."""
    if os.path.lexists(os.path.join(root, *parts)):
        return parts
    if all(part.isascii() for part in parts):
        return None
    names: list[str] = []
    current = root
    for part in parts:
        wanted = unicodedata.normalize("NFC", part)
        try:
            listing = os.listdir(current)
        except OSError:
            return None
        match = next((name for name in listing if _nfc(name) == wanted), None)
        if match is None:
            return None
        names.append(match)
        current = os.path.join(current, match)
    return names
