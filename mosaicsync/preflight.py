"""The content checks on what a deploy is about to publish: secrets, then broken references.

Run by `deploy`, `status`, `watch`, `dev` and `check` on the scanner's file set, before anything
is sent. What they found about a file's content is kept by content hash in `.mosaicsync/checks`,
so a file is read at most once per version, and a run whose file set, ignore rules and secrets
are those of the last fully checked run reads no file at all (a no-op deploy).

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

    def local(self) -> list[leaks.Secret]:
        found = [
            leaks.Secret(k, "a Mosaic API key from the credentials file") for k in self.stored_keys
        ]
        if self.key_in_use:
            found.append(leaks.Secret(self.key_in_use, "the API key in use", allowable=False))
        return found

    def remote(self) -> list[leaks.Secret]:
        if self._fetched is None:
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
        return self._fetched


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

    @property
    def _last_path(self) -> Path:
        return self.path.with_name(self.path.name + "-last")

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
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            data = json.loads(self.path.read_bytes())
            # Verdicts made under another salt belong to another state file: not trusted.
            if data["version"] == _VERSION and data["salt"] == self.salt:
                clean, refs = set(data["clean"]), dict(data["refs"])
        self._clean, self._refs = clean, refs

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
            self.dirty = True

    def retain(self, hashes: set[str]) -> None:
        """Forget the verdicts of content no longer in the folder, so the file stays small."""
        if len(self.clean) > 2 * len(hashes) + 1000:
            self._clean = self.clean & hashes
            self._refs = {h: r for h, r in self.refs.items() if h in hashes}
            self.dirty = True

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
                verdicts = {
                    "version": _VERSION,
                    "salt": self.salt,
                    "clean": sorted(self._clean),
                    "refs": self._refs,
                }
                write_atomic(
                    self.path,
                    json.dumps(verdicts, separators=(",", ":")),
                    mode=0o600,
                    durable=False,
                )
            write_atomic(
                self._last_path,
                json.dumps(last, separators=(",", ":")),
                mode=0o600,
                durable=False,
            )
        self.dirty = False


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
        paths), secrets are searched in those files and references checked from them."""
        t0 = time.perf_counter()
        cache = self._cache
        cache.trust(cache.digest(s.value for s in self.secrets.local()))
        state = self._state(files, skipped) if only is None else ""
        if state and state == cache.last_state:
            found = [Finding(**f) for f in cache.last_findings]
            return Report(found, 0, (time.perf_counter() - t0) * 1000, reused=True)

        wanted = set(only) if only is not None else None
        found: list[Finding] = []
        refs_by_file: dict[str, list[Any]] = {}
        read = 0
        is_referencing = referencing()
        # Both rules go by type alone: each is asked once per extension, not once per file.
        by_type: dict[str, tuple[bool, bool]] = {}
        chosen = files if wanted is None else [f for f in files if f.path in wanted]
        for f, kind in zip(chosen, extensions([f.path for f in chosen]), strict=True):
            rules_say = by_type.get(kind)
            if rules_say is None:
                rules_say = by_type[kind] = (leaks.worth_reading(f.path), is_referencing(f.path))
            searched = f.sha256 in cache.clean or not rules_say[0]
            referenced = rules_say[1]
            parsed = not referenced or f.sha256 in cache.refs
            if searched and parsed:
                if referenced:
                    refs_by_file[f.path] = cache.refs[f.sha256]
                continue
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
        found = ordered(found)
        if state:
            cache.last_state = state
            cache.last_findings = [f.to_json() for f in found]
            cache.dirty = True
            cache.retain({f.sha256 for f in files})
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

    def _state(self, files: Sequence[LocalFile], skipped: Sequence[Skipped]) -> str:
        """A digest of everything a full run's findings depend on."""
        parts = [f"v{_VERSION}", *(f"a\t{p}" for p in self.allow_secret)]
        parts += (f"f\t{f.path}\t{f.sha256}" for f in files)
        parts += (f"s\t{s.path}\t{s.reason}" for s in skipped)
        return self._cache.digest(parts)

    def _read_one(
        self, f: LocalFile, *, searched: bool, parsed: bool, refs: dict[str, list[Any]]
    ) -> list[Finding]:
        cache = self._cache
        found: list[Finding] = []
        data: bytes | None = None
        if not parsed and f.size <= _max_parsed():
            data = f.read_bytes()
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
                cache.clean.add(f.sha256)
                cache.dirty = True
        if not parsed:
            extracted, problem = _extract(f, data)
            if problem is not None:
                found.append(problem)
            else:
                cache.refs[f.sha256] = extracted
                cache.dirty = True
            refs[f.path] = extracted
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
