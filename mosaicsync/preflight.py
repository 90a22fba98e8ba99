"""The content checks on what a deploy is about to publish: secrets, then broken references.

Run by `deploy`, `status`, `watch`, `dev` and `check` on the scanner's file set, before anything
is sent. What they found about a file's content is kept by content hash in `.mosaicsync/checks`
(a run's few new verdicts appended to `checks-new`), so a file is read at most once per
version, and a run whose file set, ignore rules and secrets are those of the last fully checked
run reads no file at all (a no-op deploy). When only content changed since that run (the same
paths), the findings about the other files are kept and the changed ones alone are judged:
their content hashes are kept in `checks-files` for that comparison.

The exact secrets are the API key in use, the stored keys, and the project's database password
and URL. The first two are known locally; the database's are fetched once per run, and only when
a file has to be read. The cache never holds a secret: only a salted digest telling whether the
local ones changed (then every verdict is dropped).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import posixpath
import threading
import time
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mosaicsync import leaks
from mosaicsync.atomic import write_atomic
from mosaicsync.contract import extensions
from mosaicsync.findings import SKIPPED, Finding, ordered
from mosaicsync.hashcache import ensure_cache_dir
from mosaicsync.ignore import IgnoreRules
from mosaicsync.scan import LocalFile, Skipped

CACHE_NAME = "checks"
# Bumped whenever a check changes what it finds, so old verdicts are not trusted.
_VERSION = 1
# Bytes of appended verdicts after which the verdicts file is written whole again.
_LOG_LIMIT = 64 * 1024


def _max_parsed() -> int:
    from mosaicsync.references import MAX_CHECKED_BYTES

    return MAX_CHECKED_BYTES


def referencing() -> Callable[[str], bool]:
    """The rule of which files have their references checked: the ones the rewrite parses.
    (Imported when a check runs: the parsers cost a no-op deploy's start-up time otherwise;
    asked once per run, not per file, where the import statement alone cost 3 µs a file.)"""
    from mosaicsync.references import is_checked

    return is_checked


class Secrets:
    """The exact values to look for; the database's are fetched on first need, once.
    (Plain classes here and below: dataclass creation is a start-up cost every deploy pays.)"""

    def __init__(
        self,
        key_in_use: str | None = None,
        stored_keys: Sequence[str] = (),
        database: Callable[[], Mapping[str, Any]] | None = None,
    ) -> None:
        self.key_in_use = key_in_use
        self.stored_keys = stored_keys
        self.database = database
        self._fetched: list[leaks.Secret] | None = None
        self._fetching: threading.Thread | None = None
        self._failed: BaseException | None = None

    def local(self) -> list[leaks.Secret]:
        found = [
            leaks.Secret(k, "a Mosaic API key from the credentials file") for k in self.stored_keys
        ]
        if self.key_in_use:
            found.append(leaks.Secret(self.key_in_use, "the API key in use", allowable=False))
        return found

    def prefetch(self) -> None:
        """Start fetching the database's secrets on a thread: the request's round trip then
        overlaps the parsing of the pages that changed. `remote` waits for it, and raises
        what it raised."""
        if self._fetched is None and self._fetching is None and self.database is not None:
            self._fetching = threading.Thread(target=self._fetch_on_thread, daemon=True)
            self._fetching.start()

    def _fetch_on_thread(self) -> None:
        try:
            self._fetch()
        except BaseException as exc:  # raised in the caller's thread by `remote`
            self._failed = exc

    def remote(self) -> list[leaks.Secret]:
        if self._fetching is not None:
            self._fetching.join()
            self._fetching = None
            if self._failed is not None:
                failed, self._failed = self._failed, None
                raise failed
        if self._fetched is None:
            self._fetch()
        assert self._fetched is not None
        return self._fetched

    def _fetch(self) -> None:
        fetched = []
        if self.database is not None:
            info = self.database()
            if info.get("password"):
                fetched.append(
                    leaks.Secret(str(info["password"]), "the project's database password")
                )
            if info.get("database_url"):
                fetched.append(
                    leaks.Secret(str(info["database_url"]), "the project's database URL")
                )
        self._fetched = fetched


class Report(NamedTuple):
    """What a check run found, and how much it had to read to find it."""

    findings: list[Finding]
    files_read: int = 0
    ms: float = 0.0
    reused: bool = False  # the whole answer came from the last fully checked run


class _Cache:
    """Verdicts by content hash (clean of secrets; the references an HTML/CSS file holds), and
    the state and findings of the last full run. Two files: the small one, read by every run,
    and the verdicts, read only when a file changed (a no-op deploy never parses them)."""

    def __init__(self, path: Path) -> None:
        self.path = path  # the verdicts; the last run's state sits beside it
        self.salt = os.urandom(16).hex()
        self.fingerprint = ""
        self.last_state = ""
        self.last_findings: list[dict[str, Any]] = []
        self._clean: set[str] | None = None
        self._refs: dict[str, list[list[Any]]] | None = None
        self.dirty = False
        # Verdicts made by this run, appended to the log when the whole file need not change.
        self._new_clean: list[str] = []
        self._new_refs: dict[str, list[list[Any]]] = {}
        self._rewrite = False  # the verdicts file must be written whole
        self._log_bytes = 0
        self.last_files: tuple[str, list[str]] | None = None  # to keep with the last state

    @property
    def _log_path(self) -> Path:
        return self.path.with_name(self.path.name + "-new")

    @property
    def _last_path(self) -> Path:
        return self.path.with_name(self.path.name + "-last")

    @property
    def _files_path(self) -> Path:
        return self.path.with_name(self.path.name + "-files")

    def files_of_last_run(self) -> tuple[str, list[str]] | None:
        """The shape digest and the content hashes (in path order) of the files of the last
        fully checked run, if they were kept: an edit is then checked by what it changed."""
        if not self.last_state:
            return None
        with contextlib.suppress(OSError, ValueError):
            state, shape, hashes = self._files_path.read_text().split("\n", 2)
            if state == self.last_state:  # written with that run's findings, not another's
                return shape, hashes.split("\n") if hashes else []
        return None

    @classmethod
    def load(cls, path: Path) -> _Cache:
        cache = cls(path)
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(cache._last_path.read_bytes())
            if data["version"] == _VERSION:
                cache.salt = str(data["salt"])
                cache.fingerprint = str(data["fingerprint"])
                cache.last_state = str(data["last_state"])
                cache.last_findings = list(data["last_findings"])
        return cache

    def _load_verdicts(self) -> None:
        clean: set[str] = set()
        refs: dict[str, list[list[Any]]] = {}
        self._rewrite = True
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(self.path.read_bytes())
            # Verdicts made under another salt belong to another state file: not trusted.
            if data["version"] == _VERSION and data["salt"] == self.salt:
                clean, refs = set(data["clean"]), dict(data["refs"])
                self._rewrite = False
        # Then the log: one line per run since the file was written whole. A line cut short
        # (a run stopped while appending) or made under another salt is skipped.
        with contextlib.suppress(OSError):
            log = self._log_path.read_bytes()
            self._log_bytes = len(log)
            for line in log.splitlines():
                with contextlib.suppress(ValueError, TypeError, KeyError):
                    entry = json.loads(line)
                    if entry["version"] == _VERSION and entry["salt"] == self.salt:
                        clean.update(entry["clean"])
                        refs.update(entry["refs"])
        self._clean, self._refs = clean, refs

    def add_clean(self, sha256: str) -> None:
        """No secret in this content (under the local secrets of `fingerprint`)."""
        self.clean.add(sha256)
        self._new_clean.append(sha256)
        self.dirty = True

    def add_refs(self, sha256: str, refs: list[list[Any]]) -> None:
        """The references this HTML/CSS content holds."""
        self.refs[sha256] = refs
        self._new_refs[sha256] = refs
        self.dirty = True

    @property
    def clean(self) -> set[str]:
        if self._clean is None:
            self._load_verdicts()
        assert self._clean is not None
        return self._clean

    @property
    def refs(self) -> dict[str, list[list[Any]]]:
        if self._refs is None:
            self._load_verdicts()
        assert self._refs is not None
        return self._refs

    def digest(self, values: Iterable[str]) -> str:
        h = hashlib.sha256(self.salt.encode())
        for value in sorted(values):
            h.update(b"\0" + value.encode("utf-8", "surrogatepass"))
        return h.hexdigest()

    def trust(self, fingerprint: str) -> None:
        """Drop every secrets verdict made against other local secrets."""
        if fingerprint != self.fingerprint:
            self.fingerprint, self.last_state = fingerprint, ""
            self.clean.clear()
            self.dirty = self._rewrite = True

    def retain(self, hashes: set[str]) -> None:
        """Forget the verdicts of content no longer in the folder, so the file stays small."""
        if len(self.clean) > 2 * len(hashes) + 1000:
            self._clean = self.clean & hashes
            self._refs = {h: r for h, r in self.refs.items() if h in hashes}
            self.dirty = self._rewrite = True

    def save(self) -> None:
        if not self.dirty:
            return
        last = {
            "version": _VERSION,
            "salt": self.salt,
            "fingerprint": self.fingerprint,
            "last_state": self.last_state,
            "last_findings": self.last_findings,
        }
        # Not fsynced: each file is replaced whole, and one cut short by a power cut fails to
        # parse and is rebuilt by the next run, as a missing one is.
        with contextlib.suppress(OSError):
            ensure_cache_dir(self.path.parent)
            if self._clean is not None:  # loaded, so maybe changed: written first
                self._save_verdicts()
            if self.last_files is not None:  # before the state it belongs to
                shape, hashes = self.last_files
                write_atomic(
                    self._files_path,
                    "\n".join((self.last_state, shape, "\n".join(hashes))),
                    mode=0o600,
                    durable=False,
                )
                self.last_files = None
            write_atomic(
                self._last_path,
                json.dumps(last, separators=(",", ":")),
                mode=0o600,
                durable=False,
            )
        self.dirty = False

    def _save_verdicts(self) -> None:
        """A run's new verdicts are appended to the log (a one-file edit writes ~100 bytes, not
        the ~700 KB of a 10k site's verdicts); the file is written whole, and the log removed,
        when verdicts were dropped or the log has grown past `_LOG_LIMIT`."""
        entry = {"version": _VERSION, "salt": self.salt}
        if not self._rewrite and self._log_bytes < _LOG_LIMIT:
            if not self._new_clean and not self._new_refs:
                return
            # Led by a newline: a line an earlier run left cut short ends there, not in this one.
            added = {**entry, "clean": self._new_clean, "refs": self._new_refs}
            line = b"\n" + json.dumps(added, separators=(",", ":")).encode()
            fd = os.open(self._log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            try:
                os.write(fd, line)
            finally:
                os.close(fd)
            self._log_bytes += len(line)
        else:
            verdicts = {**entry, "clean": sorted(self.clean), "refs": self.refs}
            write_atomic(
                self.path, json.dumps(verdicts, separators=(",", ":")), mode=0o600, durable=False
            )
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._log_path)
            self._rewrite, self._log_bytes = False, 0
        self._new_clean, self._new_refs = [], {}


class Preflight:
    """The content checks of one project, with its cache; one per command run (or per watch)."""

    def __init__(
        self,
        cache_dir: Path,
        secrets: Secrets,
        *,
        allow_secret: Collection[str] = (),
        use_cache: bool = True,
    ) -> None:
        self.secrets = secrets
        self.allow_secret = frozenset(allow_secret)
        self._cache = _Cache.load(cache_dir / CACHE_NAME) if use_cache else _Cache(cache_dir)
        self._use_cache = use_cache
        self._searcher: leaks.Searcher | None = None

    def _search(self) -> leaks.Searcher:
        if self._searcher is None:
            self._searcher = leaks.Searcher([*self.secrets.local(), *self.secrets.remote()])
        return self._searcher

    def check(
        self,
        files: Sequence[LocalFile],
        skipped: Sequence[Skipped],
        rules: IgnoreRules,
        *,
        only: Collection[str] | None = None,
    ) -> Report:
        """Check `files` (the whole set a deploy publishes). With `only` (a watch's changed
        paths), secrets are searched in those files and references checked from them. The
        findings are those of a check of every file, whether or not the last run's are kept."""
        t0 = time.perf_counter()
        cache = self._cache
        cache.trust(cache.digest(s.value for s in self.secrets.local()))
        shape = state = ""
        hashes: list[str] = []
        chosen: Sequence[LocalFile] = files
        kept: list[Finding] = []  # the last run's findings about files this one does not read
        if only is not None:
            wanted = set(only)
            chosen = [f for f in files if f.path in wanted]
        else:
            hashes = [f.sha256 for f in files]
            shape, state = self._state(files, skipped, hashes)
            if state == cache.last_state:
                found = [Finding(**f) for f in cache.last_findings]
                return Report(found, 0, (time.perf_counter() - t0) * 1000, reused=True)
            before = cache.files_of_last_run()
            if before is not None and before[0] == shape and len(before[1]) == len(files):
                # The same paths, skipped paths and reviewed files as the last full run: what
                # it found about a file whose content is unchanged still holds (a reference
                # depends on the page and on which paths are published, not on their bytes).
                chosen = [f for f, sha in zip(files, before[1], strict=True) if f.sha256 != sha]
                changed = {f.path for f in chosen}
                kept = [Finding(**f) for f in cache.last_findings if f["file"] not in changed]

        found: list[Finding] = []
        refs_by_file: dict[str, list[Any]] = {}
        todo: list[tuple[LocalFile, bool, bool]] = []  # (file, searched, parsed): to read
        read = 0
        is_referencing = referencing()
        # Both rules go by type alone: each is asked once per extension, not once per file.
        by_type: dict[str, tuple[bool, bool]] = {}
        clean, known_refs = cache.clean, cache.refs
        for f, kind in zip(chosen, extensions([f.path for f in chosen]), strict=True):
            rules_say = by_type.get(kind)
            if rules_say is None:
                rules_say = by_type[kind] = (leaks.worth_reading(f.path), is_referencing(f.path))
            worth, referenced = rules_say
            # The common case first, in as few steps as it takes: a version judged before.
            searched = not worth or f.sha256 in clean
            if referenced:
                held = known_refs.get(f.sha256)
                if held is not None:
                    refs_by_file[f.path] = held
                    if searched:
                        continue
                parsed = held is not None
            elif searched:
                continue
            else:
                parsed = True
            todo.append((f, searched, parsed))
        if any(not searched for _, searched, _ in todo):
            self.secrets.prefetch()
        for f, searched, parsed in todo:
            read += 1
            try:
                found += self._read_one(f, searched=searched, parsed=parsed, refs=refs_by_file)
            except OSError as exc:
                found.append(
                    Finding(
                        SKIPPED, f.path, None, None,
                        f"not checked: cannot read it ({exc.strerror or exc})",
                        "check the file's permissions; the deploy will fail on it as well",
                        "warning",
                    )
                )  # fmt: skip
        found += self._references(refs_by_file, files, skipped, rules)
        found = ordered([*kept, *found])
        if state:
            if chosen is files:  # a full run: verdicts of content no longer here may go
                cache.retain(set(hashes))
            cache.last_state = state
            cache.last_findings = [f.to_json() for f in found]
            cache.last_files = (shape, hashes)
            cache.dirty = True
        if self._use_cache:
            cache.save()
        return Report(found, read, (time.perf_counter() - t0) * 1000)

    def secrets_in(self, source: Path, name: str) -> list[Finding]:
        """The secret findings of one file published by name (`storage put`): the same search
        as a deploy's, media and archives skipped alike."""
        if not leaks.worth_reading(name):
            return []
        with source.open("rb") as stream:
            hits = list(self._search().search(stream))
        return leaks.findings_for(name, source, hits, allowed=name in self.allow_secret)

    def _state(
        self, files: Sequence[LocalFile], skipped: Sequence[Skipped], hashes: Sequence[str]
    ) -> tuple[str, str]:
        """Digests of what a full run's findings depend on: the shape (the paths in order, the
        skipped paths and the reviewed files), and with the content `hashes` the whole state.
        Joined, not formatted per file: a no-op deploy computes them over the whole set. (No
        path or reason holds a NUL; the counts keep the parts apart.)"""
        shape = hashlib.sha256(self._cache.salt.encode())
        parts = (
            f"v{_VERSION}\x01{len(files)}\x01{len(skipped)}\x01{len(self.allow_secret)}",
            "\0".join(sorted(self.allow_secret)),
            "\0".join([f.path for f in files]),
            "\0".join([f"{s.path}\0{s.reason}" for s in skipped]),
        )
        shape.update("\x01".join(parts).encode("utf-8", "surrogatepass"))
        digest = shape.hexdigest()
        state = hashlib.sha256(f"{digest}\x01{chr(0).join(hashes)}".encode())
        return digest, state.hexdigest()

    def _read_one(
        self, f: LocalFile, *, searched: bool, parsed: bool, refs: dict[str, list[Any]]
    ) -> list[Finding]:
        cache = self._cache
        found: list[Finding] = []
        data: bytes | None = None
        if not parsed and f.size <= _max_parsed():
            data = f.read_bytes()
        if not parsed:  # first: the database's secrets may still be on their way
            extracted, problem = _extract(f, data)
            if problem is not None:
                found.append(problem)
            else:
                cache.add_refs(f.sha256, extracted)
            refs[f.path] = extracted
        if not searched:
            if data is not None:
                hits = list(self._search().hits(data))
            else:
                with open(f.location, "rb") as stream:  # by name: a Path costs more than a read
                    hits = list(self._search().search(stream))
            if hits:
                allowed = f.path in self.allow_secret
                found += leaks.findings_for(f.path, f.abs_path, hits, allowed=allowed)
            else:
                cache.add_clean(f.sha256)
        return found

    def _references(
        self,
        refs_by_file: Mapping[str, list[Any]],
        files: Sequence[LocalFile],
        skipped: Sequence[Skipped],
        rules: IgnoreRules,
    ) -> list[Finding]:
        from mosaicsync import references

        if not refs_by_file:
            return []
        published = [f.path for f in files]
        return references.check(
            {p: [references.Ref(*r) for r in refs] for p, refs in refs_by_file.items()},
            published,
            skipped,
            rules,
        )


def allowed_paths(static_root: Path, given: Iterable[str]) -> tuple[str, ...]:
    """`--allow-secret` paths as published paths: a path from the current folder or from the
    static root (as findings print them) both name the same file."""
    found = []
    for raw in given:
        path = Path(raw).expanduser()
        here = path.resolve() if path.is_absolute() or path.exists() else None
        if here is not None and here.is_relative_to(static_root.resolve()):
            found.append(here.relative_to(static_root.resolve()).as_posix())
        else:
            found.append(posixpath.normpath(raw.replace("\\", "/")).lstrip("/"))
    return tuple(found)


def _extract(f: LocalFile, data: bytes | None) -> tuple[list[list[Any]], Finding | None]:
    """The references of one HTML/CSS file (as cached), or why it was not parsed."""
    from mosaicsync import references

    text = references.decode(data, f.path) if data is not None else references.too_big(f.path)
    if isinstance(text, Finding):
        return [], text
    return [list(r) for r in references.extract(text, f.path)], None
