"""Deploy history: every deploy recorded in the project's database, and the bytes to restore any
retained one kept in the project's own storage, so every machine sees and restores the same past.

- A row of `mosaicsync.deploys` per deploy (and per `watch` run), with its exact file set: the
  manifest as it stood when the deploy finished, kept as spans (`mosaicsync.file_spans`): a row
  holds one version of a file from the deploy that published it to the one that replaced or
  deleted it, so a deploy writes only what it changed, not a copy of every row.
- Bytes are content-addressed (`mosaicsync.blobs`, by the sha256 of the bytes as published, so a
  rewritten page is kept as it was served) and each distinct one is stored once. The site files
  a deploy added go into one pack per deploy (`.mosaicsync/history/packs/<sha256>.pack`, read
  back with HTTP range requests); a storage-routed object is copied to
  `.mosaicsync/history/objects/<sha256>` only when a deploy is about to overwrite or delete it.
- `[history] keep` deploys are retained; at the end of a deploy, under its lease, rows, packs and
  objects that no retained deploy needs are deleted (objects first, then their rows, so a stop
  in between leaves rows that the next prune finishes).

Nothing here knows the terminal; `restore.py` reads what this module writes.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import itertools
import os
import shutil
import struct
import subprocess
import tempfile
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from mosaicsync.ahead import Ahead
from mosaicsync.api import MosaicClient
from mosaicsync.contract import TOOL_STORAGE_PREFIX
from mosaicsync.manifest import (
    ROW_COLUMNS,
    ManifestRow,
    rows_digest,
    rows_digest_sql,
    sql_literal,
)

PREFIX = TOOL_STORAGE_PREFIX + "history/"
PACKS = PREFIX + "packs/"
OBJECTS = PREFIX + "objects/"
BATCH = 500  # rows per INSERT statement
PACK_PAGE = 5000  # manifest rows read per request while packing
NEAR_PAGE = 5000  # spans a rollback reads from the live set before it reads the target's whole
_BLOB_ROW = struct.Struct("<32sQQ")  # a packed blob while its pack uploads: digest, size, offset

# Added to the deploys table the manifest creates; checked first, so a deploy pays for the DDL
# (and its table lock) once per project, not every time.
SCHEMA_SQL = """
DO $$ BEGIN
-- The catalog itself, not information_schema's view of it: ~2 ms less on every deploy.
IF NOT EXISTS (SELECT 1 FROM pg_attribute WHERE attrelid = 'mosaicsync.deploys'::regclass
               AND attname = 'restorable' AND NOT attisdropped) THEN
  ALTER TABLE mosaicsync.deploys ALTER COLUMN finished_at DROP NOT NULL;
  ALTER TABLE mosaicsync.deploys
    ADD COLUMN IF NOT EXISTS state text NOT NULL DEFAULT 'complete',
    ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'deploy',
    ADD COLUMN IF NOT EXISTS message text,
    ADD COLUMN IF NOT EXISTS git_commit text,
    ADD COLUMN IF NOT EXISTS git_branch text,
    ADD COLUMN IF NOT EXISTS git_dirty boolean,
    ADD COLUMN IF NOT EXISTS restores bigint,
    ADD COLUMN IF NOT EXISTS replaces bigint,
    ADD COLUMN IF NOT EXISTS restorable boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS run_id uuid;
  CREATE TABLE IF NOT EXISTS mosaicsync.packs (
    name text PRIMARY KEY,
    size bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
  );
  CREATE TABLE IF NOT EXISTS mosaicsync.blobs (
    sha256 text PRIMARY KEY,
    size bigint NOT NULL,
    pack text NOT NULL,
    "offset" bigint NOT NULL
  );
END IF;
END $$;
-- File sets as spans: deploy K's set is every row with first_id <= K < last_id (NULL: still
-- live). A project recorded with whole copies per deploy (`deploy_files`) is converted once: a
-- span per copied row, ending at the next recorded deploy.
DO $$ BEGIN
IF to_regclass('mosaicsync.file_spans') IS NULL THEN
  CREATE TABLE mosaicsync.file_spans (
    first_id bigint NOT NULL,
    last_id bigint,
    path text NOT NULL,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    target text NOT NULL,
    url text,
    uploaded_sha256 text,
    generated boolean NOT NULL DEFAULT false,
    PRIMARY KEY (first_id, path)
  );
  CREATE UNIQUE INDEX file_spans_live ON mosaicsync.file_spans (path) WHERE last_id IS NULL;
  CREATE INDEX file_spans_blob ON mosaicsync.file_spans ((coalesce(uploaded_sha256, sha256)));
  IF to_regclass('mosaicsync.deploy_files') IS NOT NULL THEN
    INSERT INTO mosaicsync.file_spans (first_id, last_id, path, sha256, size, target, url,
                                       uploaded_sha256, generated)
    SELECT f.deploy_id, n.next_id, f.path, f.sha256, f.size, f.target, f.url, f.uploaded_sha256,
           f.generated
    FROM mosaicsync.deploy_files f JOIN (
      SELECT deploy_id, lead(deploy_id) OVER (ORDER BY deploy_id) AS next_id
      FROM (SELECT DISTINCT deploy_id FROM mosaicsync.deploy_files) d) n USING (deploy_id);
    DROP TABLE mosaicsync.deploy_files;
  END IF;
END IF;
END $$;
"""

_ENTRY_COLUMNS = (
    "id, kind, state, message, git_commit, git_branch, git_dirty, deployed_by, tool_version, "
    "uploaded, pruned, bytes, files, duration_ms, restores, replaces, restorable, "
    "to_char(started_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS started_at, "
    "to_char(finished_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') AS finished_at, "
    "extract(epoch FROM finished_at) AS finished_epoch"
)

# Every column of the live spans, as the manifest's digest has its rows.
_LIVE_SPANS_DIGEST_SQL = rows_digest_sql("mosaicsync.file_spans WHERE last_id IS NULL")

# The live deploy: the newest complete one.
_LIVE_ID = "(SELECT id FROM mosaicsync.deploys WHERE state = 'complete' ORDER BY id DESC LIMIT 1)"
_LIVE_SQL = f"SELECT {_ENTRY_COLUMNS} FROM mosaicsync.deploys WHERE id = {_LIVE_ID}"

# The blob a manifest row's published bytes are kept as.
_BLOB_OF = "coalesce(f.uploaded_sha256, f.sha256)"


def _in_set(deploy_id: str) -> str:
    """SQL: span `f` is part of the file set of deploy `deploy_id` (an SQL expression)."""
    return f"f.first_id <= {deploy_id} AND (f.last_id IS NULL OR f.last_id > {deploy_id})"


class GitState(NamedTuple):
    """Where the deployed folder stood in git: commit, branch (None when detached), dirty."""

    commit: str
    branch: str | None
    dirty: bool


def git_state(folder: Path) -> GitState | None:
    """Read with `git` itself, in one `git status`; None outside a work tree, before the first
    commit or without git."""
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run(
            [git, "-C", str(folder), "status", "--porcelain=v2", "--branch",
             "--untracked-files=normal"],
            capture_output=True,
            encoding="utf-8",
            errors="replace",
            timeout=10,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"},
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    commit = branch = None
    dirty = False
    for line in done.stdout.splitlines():
        if line.startswith("# branch.oid "):
            commit = line.removeprefix("# branch.oid ")
        elif line.startswith("# branch.head "):
            branch = line.removeprefix("# branch.head ")
        elif line and not line.startswith("#"):
            dirty = True
    if not commit or commit == "(initial)":
        return None
    return GitState(commit, None if branch == "(detached)" else branch, dirty)


class Entry(NamedTuple):
    """One recorded deploy."""

    id: int
    kind: str  # deploy, rollback, watch, promote
    state: str  # running, complete, failed, interrupted
    message: str | None
    git_commit: str | None
    git_branch: str | None
    git_dirty: bool | None
    who: str
    tool_version: str
    uploaded: int
    pruned: int
    bytes: int
    files: int
    duration_ms: int
    restores: int | None  # a rollback: the deploy it restored
    replaces: int | None  # the deploy that was live when it started
    restorable: bool
    started_at: str
    finished_at: str | None
    finished_epoch: float | None

    @classmethod
    def from_row(cls, r: dict[str, Any]) -> Entry:
        def opt_int(v: Any) -> int | None:
            return None if v is None else int(v)

        return cls(
            int(r["id"]), r["kind"], r["state"], r["message"], r["git_commit"],
            r["git_branch"], r["git_dirty"], r["deployed_by"], r["tool_version"],
            int(r["uploaded"]), int(r["pruned"]), int(r["bytes"]), int(r["files"]),
            int(r["duration_ms"]), opt_int(r["restores"]), opt_int(r["replaces"]),
            bool(r["restorable"]), r["started_at"], r["finished_at"],
            None if r["finished_epoch"] is None else float(r["finished_epoch"]),
        )  # fmt: skip

    def describe(self) -> str:
        """`#7`, `#7 (rollback to #5)`: how output names it."""
        if self.kind == "rollback" and self.restores is not None:
            return f"#{self.id} (rollback to #{self.restores})"
        if self.kind in ("watch", "promote"):
            return f"#{self.id} ({self.message or self.kind})"
        return f"#{self.id}"

    def to_json(self, live: int | None = None) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "state": self.state,
            "live": self.id == live,
            "message": self.message,
            "git": None
            if self.git_commit is None
            else {"commit": self.git_commit, "branch": self.git_branch, "dirty": self.git_dirty},
            "who": self.who,
            "tool_version": self.tool_version,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
            "uploaded": self.uploaded,
            "pruned": self.pruned,
            "bytes": self.bytes,
            "files": self.files,
            "duration_ms": self.duration_ms,
            "rollback_of": self.restores,
            "replaces": self.replaces,
            "restorable": self.restorable,
        }


def live_entry(entries: Sequence[Entry]) -> Entry | None:
    """The deploy the site shows: the newest that finished (a running or failed one left it
    mixed, which `deploys` says next to it)."""
    done = [e for e in entries if e.state == "complete"]
    return max(done, key=lambda e: e.id) if done else None


class Blob(NamedTuple):
    sha256: str
    size: int
    pack: str
    offset: int


class Packer:
    """Collects the bytes of the site files a deploy publishes in a temporary file (a 100k-file
    deploy never holds them in memory). Thread-safe.

    Its index is one flat bytearray of 48-byte records (digest, offset, size), not objects per
    file: among the upload threads' short-lived objects those would pin their memory, and a
    dict of 100k digests costs 15 MB where the records take 4.8. `find` sorts the records by
    digest once and then bisects them. Equal contents are kept once there, not here.
    """

    _ENTRY = struct.Struct("<32sQQ")

    def __init__(self) -> None:
        self._file = tempfile.TemporaryFile(prefix="mosaicsync-pack-")  # noqa: SIM115
        self._entries = bytearray()
        self._sorted = True
        self._lock = threading.Lock()
        self._end = 0

    def add(self, data: bytes, sha: bytes) -> None:
        """Keep `data`, whose sha256 digest the caller has computed already."""
        with self._lock:  # its place is taken under the lock, written outside it
            offset = self._end
            self._end += len(data)
        _write_at(self._file.fileno(), data, offset)
        with self._lock:
            self._entries += self._ENTRY.pack(sha, offset, len(data))
            self._sorted = False

    @property
    def count(self) -> int:
        """How many contents were kept (no `__len__`: callers test a packer for None by truth)."""
        return len(self._entries) // self._ENTRY.size

    def find(self, digest: bytes) -> int | None:
        """The number (from 0 to count - 1, valid until the next `add`) of the bytes kept with
        this sha256 digest, or None."""
        with self._lock:
            width = self._ENTRY.size
            if not self._sorted:
                entries = self._entries
                with memoryview(entries) as view:
                    records = [bytes(view[at : at + width]) for at in range(0, len(view), width)]
                records.sort()
                for number, record in enumerate(records):  # in place: no second buffer
                    entries[number * width : (number + 1) * width] = record
                del records
                self._sorted = True
            count = len(self._entries) // width
            number = bisect.bisect_left(_Digests(self._entries, width), digest, 0, count)
            if number < count and _Digests(self._entries, width)[number] == digest:
                return number
            return None

    def read(self, number: int) -> bytes:
        with self._lock:
            _, offset, size = self._ENTRY.unpack_from(self._entries, number * self._ENTRY.size)
        parts = []
        while size:  # a regular file gives all of it at once, but nothing promises that
            part = os.pread(self._file.fileno(), size, offset)
            if not part:
                raise OSError(f"the pack's temporary file ended {size} bytes early")
            parts.append(part)
            offset += len(part)
            size -= len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def close(self) -> None:
        self._file.close()


def _write_at(fd: int, data: bytes, offset: int) -> None:
    """All of `data` at `offset` (positional: threads writing their own places share no file
    position, so no seek under a lock)."""
    with memoryview(data) as view:
        done = 0
        while done < len(view):
            done += os.pwrite(fd, view[done:], offset + done)


class _Digests:
    """The digests of sorted packer records, as a sequence `bisect` can search."""

    __slots__ = ("entries", "width")

    def __init__(self, entries: bytearray, width: int) -> None:
        self.entries = entries
        self.width = width

    def __getitem__(self, number: int) -> bytearray:
        at = number * self.width
        return self.entries[at : at + 32]


class Finished(NamedTuple):
    """What `History.finish` did: the pack it added, what prune removed, storage history uses."""

    packed_files: int
    packed_bytes: int
    missing: tuple[str, ...]  # paths whose bytes could not be kept (changed since they went out)
    pruned_deploys: int
    used_bytes: int


def _tables_sql() -> str:
    """The manifest's tables and the history's, created where missing (one request's worth)."""
    from mosaicsync.manifest import SCHEMA_SQL as MANIFEST_SQL

    return MANIFEST_SQL + SCHEMA_SQL


# Past this many changed paths, the spans are compared whole (`_spans_sql`): one pass over both
# sets then costs less than a list of paths that long.
CHANGED_PATHS_MAX = 1000


def _spans_sql(deploy_id: int, changed: Sequence[str] | None = None) -> str:
    """SQL making deploy `deploy_id`'s file set the manifest as it stands: the live spans that no
    longer match it end here, then a span starts for each row that none matches.

    With `changed`, the live spans are known to have been the manifest before this deploy and
    these are the paths it wrote or removed: only theirs are looked at (an edit of one file in
    100k then costs index probes, not two passes over both sets). Run again for the same deploy
    (a watch run's entry is finished after every sync), a span that started at this deploy and
    ended at it again held nothing: it is dropped.
    """
    n = int(deploy_id)
    if changed is not None:
        if not changed:
            return ""
        paths = ", ".join(sql_literal(p) for p in changed)
        ended = f"({paths})"
        started = f"m.path IN ({paths}) AND "
    else:
        # The live spans no row equals, every column alike (NULLs too): found by one EXCEPT
        # over both sets (hashed) rather than a probe of the manifest per live span (15 -> 9
        # ms of PostgreSQL at 10k files). A path is unique among live spans and among rows.
        ended = (
            f"(SELECT path FROM (SELECT {ROW_COLUMNS} FROM mosaicsync.file_spans WHERE last_id "
            f"IS NULL EXCEPT SELECT {ROW_COLUMNS} FROM mosaicsync.files) AS ended)"
        )
        started = ""
    return (
        f"UPDATE mosaicsync.file_spans f SET last_id = {n} WHERE f.last_id IS NULL AND f.path IN "
        f"{ended};\n"
        f"DELETE FROM mosaicsync.file_spans WHERE first_id = {n} AND last_id = {n};\n"
        f"INSERT INTO mosaicsync.file_spans (first_id, last_id, {ROW_COLUMNS}) SELECT {n}, "
        "NULL, "
        + ", ".join(f"m.{c}" for c in ROW_COLUMNS.split(", "))
        + f" FROM mosaicsync.files m WHERE {started}NOT EXISTS (SELECT 1 FROM "
        "mosaicsync.file_spans f WHERE f.last_id IS NULL AND f.path = m.path);\n"
    )


def _changed_paths(settled: Settled, written: list[str]) -> list[str] | None:
    """The paths whose row a deploy wrote (`written`) or removed, or None when there are too
    many for a list."""
    after = settled.after
    changed = written + [p for p in settled.before if p not in after]
    return changed if len(changed) <= CHANGED_PATHS_MAX else None


class Settled(NamedTuple):
    """What a deploy knows of its manifest without reading it again after its uploads: the rows
    before it, the rows after it (the manifest's view), and the paths whose published bytes no
    blob held before it (`History.unpacked`, read beside the uploads)."""

    before: Mapping[str, ManifestRow]
    after: Mapping[str, ManifestRow]
    unpacked: frozenset[str]

    def written(self) -> list[str]:
        """The paths whose row the deploy wrote: new, or different in any column. (Asked once
        per finish: both the pack and the spans go by it.)"""
        before = self.before
        return [p for p, row in self.after.items() if before.get(p) != row]


class History:
    """The history of one project, read and written through its SQL endpoint and storage."""

    def __init__(self, client: MosaicClient, project_id: str, keep: int) -> None:
        self.client = client
        self.project_id = project_id
        self.keep = keep
        self._kept: set[str] = set()  # blobs known to exist, for before_replace
        self._lock = threading.Lock()
        # `begin` found the entry before its own complete and restorable: the live spans were
        # then the manifest, and every writer of it since would have an entry of its own. Not
        # after a watch: it publishes a sync before it finishes its entry again, so a sync
        # whose history was not updated leaves rows that no span holds.
        self.spans_current = False

    @property
    def enabled(self) -> bool:
        return self.keep > 0

    def _sql(self, query: str) -> list[dict[str, Any]]:
        return self.client.sql(self.project_id, query, idempotent=True)

    def ensure(self) -> None:
        """Create the manifest's tables and the history's, in one request."""
        self._sql(_tables_sql() + "SELECT 1 AS ok")

    # -- reading -----------------------------------------------------------------------------

    def exists(self) -> bool:
        rows = self._sql(
            "SELECT to_regclass('mosaicsync.file_spans') IS NOT NULL AS yes, "
            "to_regclass('mosaicsync.deploy_files') IS NOT NULL AS copies"
        )
        if rows[0]["copies"] and not rows[0]["yes"]:
            self.ensure()  # recorded as whole copies: converted to spans once
            return True
        return bool(rows[0]["yes"])

    def entries(self, limit: int | None = None) -> list[Entry]:
        """Newest first."""
        if not self.exists():
            return []
        tail = f" LIMIT {int(limit)}" if limit else ""
        rows = self._sql(f"SELECT {_ENTRY_COLUMNS} FROM mosaicsync.deploys ORDER BY id DESC{tail}")
        return [Entry.from_row(r) for r in rows]

    def entry(self, deploy_id: int) -> Entry | None:
        if not self.exists():
            return None
        rows = self._sql(
            f"SELECT {_ENTRY_COLUMNS} FROM mosaicsync.deploys WHERE id = {int(deploy_id)}"
        )
        return Entry.from_row(rows[0]) if rows else None

    def live(self) -> Entry | None:
        if not self.exists():
            return None
        rows = self._sql(_LIVE_SQL)
        return Entry.from_row(rows[0]) if rows else None

    def files(
        self, deploy_id: int, live: Mapping[str, ManifestRow] | None = None
    ) -> dict[str, ManifestRow]:
        """The exact file set of a deploy, read in pages (the endpoint caps a response).

        Given `live`, the manifest's rows as they stand: while the live spans hold exactly those
        rows (their digest says so), only the spans that differ between the deploy and now are
        read, so a rollback of a few changes reads a few rows, not the whole site.
        """
        if live is not None:
            near = self._files_near(int(deploy_id), live)
            if near is not None:
                return near
        out: dict[str, ManifestRow] = {}
        after = ""
        while True:
            page = self._sql(
                f"SELECT {ROW_COLUMNS} FROM mosaicsync.file_spans f WHERE "
                f"{_in_set(str(int(deploy_id)))} {after}ORDER BY path LIMIT 5000"
            )
            for r in page:
                out[r["path"]] = ManifestRow(
                    r["path"], r["sha256"], int(r["size"]), r["target"], r["url"],
                    r["uploaded_sha256"], bool(r["generated"]),
                )  # fmt: skip
            if len(page) < 5000:
                return out
            after = f"AND path > {sql_literal(page[-1]['path'])} "

    def _files_near(self, n: int, live: Mapping[str, ManifestRow]) -> dict[str, ManifestRow] | None:
        """Deploy `n`'s set from `live`: without the live spans that started after it, with the
        spans that held it and have ended since. None when the live spans are not `live` (a
        deploy that stopped midway wrote rows its spans never got) or the two sets differ by
        more than a page: then the set is read whole."""
        agreed = Ahead(lambda: self._sql(_LIVE_SPANS_DIGEST_SQL)[0]["digest"])
        page = self._sql(
            f"SELECT {ROW_COLUMNS}, f.last_id IS NULL AS live FROM mosaicsync.file_spans f "
            f"WHERE (f.last_id IS NULL AND f.first_id > {n}) OR "
            f"(f.first_id <= {n} AND f.last_id > {n}) LIMIT {NEAR_PAGE + 1}"
        )
        if agreed.get() != rows_digest(live.values()) or len(page) > NEAR_PAGE:
            return None
        out = dict(live)
        for r in page:
            # The digests agree, so every live span is a row of `live`; one that is not was
            # written between the two reads (a dry run holds no lease): read the set whole.
            if r["live"] and out.pop(r["path"], None) is None:
                return None
        for r in page:
            if not r["live"]:
                if r["path"] in out:
                    return None  # two spans of one path held deploy n: not a set to trust
                out[r["path"]] = ManifestRow(
                    r["path"], r["sha256"], int(r["size"]), r["target"], r["url"],
                    r["uploaded_sha256"], bool(r["generated"]),
                )  # fmt: skip
        return out

    def blobs(self, shas: Iterable[str]) -> dict[str, Blob]:
        wanted = sorted(set(shas))
        found: dict[str, Blob] = {}
        for start in range(0, len(wanted), 2000):
            batch = wanted[start : start + 2000]
            rows = self._sql(
                'SELECT sha256, size, pack, "offset" FROM mosaicsync.blobs WHERE sha256 IN ('
                + ", ".join(sql_literal(s) for s in batch)
                + ")"
            )
            for r in rows:
                found[r["sha256"]] = Blob(r["sha256"], int(r["size"]), r["pack"], int(r["offset"]))
        return found

    def used_bytes(self) -> int:
        if not self.exists():
            return 0
        rows = self._sql("SELECT coalesce(sum(size), 0) AS used FROM mosaicsync.packs")
        return int(rows[0]["used"])

    def migrations_since(self, entry: Entry) -> list[dict[str, Any]]:
        """Migrations applied after `entry` finished: what a rollback to it leaves in place."""
        if entry.finished_epoch is None:
            return []
        rows = self._sql("SELECT to_regclass('mosaicsync.migrations') IS NOT NULL AS yes")
        if not rows[0]["yes"]:
            return []
        return self._sql(
            "SELECT version::text AS version, name, to_char(applied_at AT TIME ZONE 'UTC', "
            '\'YYYY-MM-DD"T"HH24:MI:SS"Z"\') AS applied_at '
            "FROM mosaicsync.migrations WHERE state <> 'baseline' AND applied_at > "
            f"to_timestamp({entry.finished_epoch!r}) ORDER BY version"
        )

    # -- writing -----------------------------------------------------------------------------

    def begin(
        self,
        *,
        kind: str,
        who: str,
        tool_version: str,
        message: str | None = None,
        git: GitState | None = None,
        restores: int | None = None,
        run_id: str | None = None,
    ) -> tuple[int, Entry | None]:
        """Record a deploy as running, under the lease; (its id, the deploy it replaces).

        A deploy still `running` here was stopped without a word (killed): it is marked
        interrupted, since the lease says nobody is running it now. Keyed by `run_id`, so a
        request sent again after a lost answer records it once.
        """
        run = sql_literal(run_id or str(uuid.uuid4()))
        values = ", ".join(
            sql_literal(v)
            for v in (
                kind, who, tool_version, message,
                git.commit if git else None, git.branch if git else None,
                git.dirty if git else None, restores,
            )
        )  # fmt: skip
        # One request: the tables, the entry (replacing the live deploy), the entry it replaces.
        rows = self._sql(
            _tables_sql()
            + "UPDATE mosaicsync.deploys SET state = 'interrupted' WHERE state = 'running' "
            f"AND run_id IS DISTINCT FROM {run}::uuid;\n"
            "INSERT INTO mosaicsync.deploys (started_at, finished_at, uploaded, pruned, bytes, "
            "files, duration_ms, state, kind, deployed_by, tool_version, message, git_commit, "
            "git_branch, git_dirty, restores, replaces, run_id) "
            f"SELECT now(), NULL, 0, 0, 0, 0, 0, 'running', {values}, {_LIVE_ID}, {run}::uuid "
            f"WHERE NOT EXISTS (SELECT 1 FROM mosaicsync.deploys WHERE run_id = {run}::uuid);\n"
            "SELECT n.id AS new_id, (SELECT p.state = 'complete' AND p.restorable AND p.kind <> "
            "'watch' FROM mosaicsync.deploys p WHERE p.id < n.id ORDER BY p.id DESC LIMIT 1) "
            "AS spans_current, "
            "r.* FROM mosaicsync.deploys n LEFT JOIN LATERAL (SELECT "
            f"{_ENTRY_COLUMNS} FROM mosaicsync.deploys WHERE id = n.replaces) r ON true "
            f"WHERE n.run_id = {run}::uuid"
        )
        self.spans_current = rows[0]["spans_current"] is True
        replaced = Entry.from_row(rows[0]) if rows[0]["id"] is not None else None
        return int(rows[0]["new_id"]), replaced

    def end(self, deploy_id: int, state: str) -> None:
        """A deploy that stopped (failed, interrupted): said so, best effort."""
        self._sql(
            f"UPDATE mosaicsync.deploys SET state = {sql_literal(state)}, finished_at = now() "
            f"WHERE id = {int(deploy_id)} AND state = 'running'"
        )

    def before_replace(self, row: ManifestRow) -> None:
        """Keep a deployed storage object's bytes before a deploy overwrites or deletes it: a
        retained deploy refers to them (the live one, at least)."""
        if not self.enabled:
            return
        with self._lock:
            if row.sha256 in self._kept:
                return
        if self.blobs([row.sha256]):
            with self._lock:
                self._kept.add(row.sha256)
            return
        url = row.url or self._storage_url(row.path)
        if url is None:
            return self._lost(row.sha256)  # deleted by hand: nothing to keep
        with tempfile.TemporaryDirectory(prefix="mosaicsync-keep-") as tmp:
            dest = Path(tmp) / "object"
            size, sha = self.client.download_object(url, dest)
            if sha != row.sha256:
                # Replaced by hand: these are not the deployed bytes.
                return self._lost(row.sha256)
            name = OBJECTS + sha
            signed = self.client.upload_url(self.project_id, name, size)
            self.client.put_presigned(signed["upload_url"], dest, size, name=row.path)
        self._sql(
            f"INSERT INTO mosaicsync.packs (name, size) VALUES ({sql_literal(name)}, {size}) "
            "ON CONFLICT (name) DO NOTHING;\n"
            'INSERT INTO mosaicsync.blobs (sha256, size, pack, "offset") VALUES '
            f"({sql_literal(sha)}, {size}, {sql_literal(name)}, 0) ON CONFLICT DO NOTHING"
        )
        with self._lock:
            self._kept.add(sha)

    def _lost(self, blob: str) -> None:
        """The deployed bytes `blob` are gone from storage and were never kept: the deploys
        that served them can no longer be restored exactly, and `deploys` says so."""
        self._sql(
            "UPDATE mosaicsync.deploys d SET restorable = false WHERE d.restorable AND EXISTS "
            f"(SELECT 1 FROM mosaicsync.file_spans f WHERE {_BLOB_OF} = {sql_literal(blob)} "
            f"AND {_in_set('d.id')})"
        )

    def _storage_url(self, path: str) -> str | None:
        listing = self.client.list_storage(self.project_id)
        for obj in listing.get("files", []):
            if obj.get("filename") == path:
                return obj.get("url")
        return None

    def unpacked(self) -> frozenset[str]:
        """The live site files whose published bytes no blob holds: none, but after a deploy
        that stopped midway or with history newly turned on. Read beside a deploy's uploads,
        so that its pack needs no read of the manifest after them (see `Settled`)."""
        return frozenset(row.path for row, _ in self._unpacked_rows())

    def finish(
        self,
        deploy_id: int,
        *,
        packer: Packer | None,
        reproduce: Callable[[ManifestRow, str], bytes | None],
        uploaded: int,
        pruned: int,
        bytes_sent: int,
        files: int,
        duration_ms: int,
        settled: Settled | None = None,
    ) -> Finished:
        """Close a deploy that published everything: keep the bytes of the live site files that
        no pack holds yet (one pack), record the exact file set, then prune past `keep`.
        With `settled`, what to pack is known without reading the manifest again."""
        packed, packed_bytes, missing, rows_sql = 0, 0, (), []
        written = settled.written() if settled is not None and self.enabled else None
        if self.enabled:
            candidates = (
                self._to_pack(settled, written)
                if settled is not None and written is not None
                else self._unpacked_rows()
            )
            packed, packed_bytes, missing, rows_sql = self._pack(packer, reproduce, candidates)
        restorable = "true" if self.enabled and not missing else "false"
        changed = (
            _changed_paths(settled, written)
            if settled is not None and written is not None and self.spans_current
            else None
        )
        spans = _spans_sql(int(deploy_id), changed) if self.enabled else ""
        # One request (one transaction): the pack's last rows, the file set, the entry marked
        # complete and the prune with what it left to delete; each was a round trip of its own.
        rows = self._sql(
            ";\n".join(
                [
                    *rows_sql,
                    spans + "UPDATE mosaicsync.deploys SET state = 'complete', finished_at = "
                    f"now(), uploaded = {int(uploaded)}, pruned = {int(pruned)}, bytes = "
                    f"{int(bytes_sent)}, files = {int(files)}, duration_ms = {int(duration_ms)}, "
                    f"restorable = {restorable} WHERE id = {int(deploy_id)}",
                    self._prune_sql(),
                ]
            )
        )
        pruned_deploys, used = self._prune_objects(rows)
        return Finished(packed, packed_bytes, missing, pruned_deploys, used)

    def _unpacked_rows(self) -> Iterator[tuple[ManifestRow, str]]:
        """Every live site file whose published bytes no blob holds, with that blob's digest:
        read from the manifest a page at a time (a 100k-file deploy holds one page of rows)."""
        after = ""
        while True:
            page = self._sql(
                "SELECT f.path, f.sha256, f.size, f.target, f.url, f.uploaded_sha256, "
                f"f.generated, {_BLOB_OF} AS blob FROM mosaicsync.files f WHERE "
                f"f.target = 'site' {after}AND NOT EXISTS (SELECT 1 FROM "
                f"mosaicsync.blobs b WHERE b.sha256 = {_BLOB_OF}) ORDER BY f.path "
                f"LIMIT {PACK_PAGE}"
            )
            for r in page:
                row = ManifestRow(
                    r["path"], r["sha256"], int(r["size"]), r["target"], r["url"],
                    r["uploaded_sha256"], bool(r["generated"]),
                )  # fmt: skip
                yield row, r["blob"]
            if len(page) < PACK_PAGE:
                return
            after = f"AND f.path > {sql_literal(page[-1]['path'])} "
            del page

    @staticmethod
    def _to_pack(settled: Settled, written: list[str]) -> Iterator[tuple[ManifestRow, str]]:
        """The same files as `_unpacked_rows`, from what a deploy knows: a row it did not change
        lacks a blob only if it lacked one before; every row it wrote is a candidate. (Bytes an
        older pack holds, as after a revert, are then packed again; their blob row keeps
        naming the older pack.)"""
        after = settled.after
        lacking = sorted(settled.unpacked.difference(written))
        for path in itertools.chain(written, lacking):
            row = after.get(path)
            if row is not None and row.target == "site":
                yield row, row.uploaded_sha256 or row.sha256

    def _pack(
        self,
        packer: Packer | None,
        reproduce: Callable[[ManifestRow, str], bytes | None],
        candidates: Iterable[tuple[ManifestRow, str]],
    ) -> tuple[int, int, tuple[str, ...], list[str]]:
        """Pack the published bytes of the `candidates` (live site files and their blobs' digests)
        that this pack does not hold already; (blobs packed, bytes, paths whose bytes are gone,
        the last statements listing the pack, for the caller to send with its own).

        What is kept per blob until the pack has arrived is one 48-byte record of its index,
        and a blob the packer holds is marked packed by one byte.
        """
        missing: list[str] = []
        index = bytearray()  # (digest, size, offset) per blob, for the rows written after
        packed_from = bytearray(packer.count if packer else 0)  # 1: that record is in the pack
        seen: set[bytes] = set()  # the digests of blobs rebuilt from the folder
        with tempfile.TemporaryDirectory(prefix="mosaicsync-pack-") as tmp:
            pack_path = Path(tmp) / "pack"
            digest = hashlib.sha256()
            offset = 0
            with open(pack_path, "wb") as out:
                for row, blob in candidates:
                    key = bytes.fromhex(blob)
                    number = packer.find(key) if packer else None
                    if packed_from[number] if number is not None else key in seen:
                        continue
                    if packer is not None and number is not None:
                        data: bytes | None = packer.read(number)
                    else:
                        data = reproduce(row, blob)
                    if data is None or hashlib.sha256(data).hexdigest() != blob:
                        missing.append(row.path)
                        continue
                    if number is not None:
                        packed_from[number] = 1
                    else:
                        seen.add(key)
                    out.write(data)
                    digest.update(data)
                    index += _BLOB_ROW.pack(key, len(data), offset)
                    offset += len(data)
            if not index:
                return 0, 0, tuple(missing), []
            name = f"{PACKS}{digest.hexdigest()}.pack"
            signed = self.client.upload_url(self.project_id, name, offset)
            self.client.put_presigned(signed["upload_url"], pack_path, offset, name=name)
        # The pack is there; now its rows (a stop in between leaves an unlisted pack behind).
        statements = [
            f"INSERT INTO mosaicsync.packs (name, size) VALUES ({sql_literal(name)}, {offset}) "
            "ON CONFLICT (name) DO NOTHING"
        ]
        packed = len(index) // _BLOB_ROW.size
        rows = _BLOB_ROW.iter_unpack(index)
        for _ in range(0, packed, BATCH):
            values = (
                f"('{key.hex()}', {size}, {at})" for key, size, at in itertools.islice(rows, BATCH)
            )
            statements.append(
                'INSERT INTO mosaicsync.blobs (sha256, size, pack, "offset") SELECT v.sha256, '
                f"v.size, {sql_literal(name)}, v.off FROM (VALUES "
                + ", ".join(values)
                + ") AS v (sha256, size, off) ON CONFLICT (sha256) DO NOTHING"
            )
            if len(statements) == 8:
                self._sql(";\n".join(statements))
                statements = []
        return packed, offset, tuple(missing), statements

    def _prune_sql(self) -> str:
        """SQL deleting the deploys past `keep` (all file sets when history is off), then naming
        the packs holding a blob no retained deploy needs, or none at all: one row each with
        both counts, and always at least one row, carrying the deploys pruned (`n`) and the
        history bytes in storage (`used`). `_prune_objects` finishes the prune from its rows.

        `keep` counts complete deploys, and failed or interrupted ones separately (up to as
        many again): a run of failures never pushes the live deploy, or the ones before it,
        out of the history. The blobs are looked at every time, not only when a span went: a
        prune stopped after deleting objects leaves rows that this one finishes.
        """
        count = "SELECT set_config('mosaicsync.pruned', (SELECT count(*) FROM gone)::text, true)"
        if self.enabled:
            k = int(self.keep)
            # One statement: the spans see the deploys as they were, so the gone ones are named.
            gone = (
                "WITH gone AS (DELETE FROM mosaicsync.deploys WHERE id NOT IN (SELECT id FROM "
                f"mosaicsync.deploys WHERE state = 'complete' ORDER BY id DESC LIMIT {k}) "
                "AND id NOT IN (SELECT id FROM mosaicsync.deploys WHERE state <> 'complete' "
                f"ORDER BY id DESC LIMIT {k}) RETURNING id), "
                "spans AS (DELETE FROM mosaicsync.file_spans f WHERE f.last_id IS NOT NULL AND "
                "NOT EXISTS (SELECT 1 FROM mosaicsync.deploys d WHERE d.state = 'complete' AND "
                f"{_in_set('d.id')} AND d.id NOT IN (SELECT id FROM gone))) {count}"
            )
        else:
            gone = (
                "WITH gone AS (UPDATE mosaicsync.deploys SET restorable = false WHERE restorable "
                f"RETURNING id), spans AS (DELETE FROM mosaicsync.file_spans) {count}"
            )
        # The count goes to the next statement through a setting local to the request's
        # transaction: that statement must see the spans deleted, which a CTE beside the
        # deletes would not. Dead and held blobs are counted per pack in one pass over the
        # blobs (a subquery per pack read every blob once per pack: 30 ms a deploy at 10k files
        # and 20 packs, growing with both).
        return (
            gone
            + ";\n"
            + "WITH dead AS (SELECT b.pack, count(*) AS n FROM mosaicsync.blobs b WHERE NOT EXISTS "
            f"(SELECT 1 FROM mosaicsync.file_spans f WHERE {_BLOB_OF} = b.sha256) "
            "GROUP BY b.pack), "
            "held AS (SELECT pack, count(*) AS n FROM mosaicsync.blobs GROUP BY pack), "
            "packs AS (SELECT p.name, coalesce(dead.n, 0) AS dead, coalesce(held.n, 0) AS total "
            "FROM mosaicsync.packs p LEFT JOIN dead ON dead.pack = p.name "
            "LEFT JOIN held ON held.pack = p.name "
            "WHERE dead.pack IS NOT NULL OR held.pack IS NULL) "
            "SELECT current_setting('mosaicsync.pruned')::bigint AS n, "
            "(SELECT coalesce(sum(size), 0) FROM mosaicsync.packs) AS used, "
            "x.name, x.dead, x.total FROM (SELECT 1) AS one LEFT JOIN packs x ON true"
        )

    def _prune_objects(self, rows: list[dict[str, Any]]) -> tuple[int, int]:
        """Finish a prune from the rows of `_prune_sql`: the packs left with no live blob are
        deleted from storage, then the dead blobs' rows and those packs' rows (objects first,
        then rows). (Deploys pruned, history bytes left in storage.)"""
        pruned = int(rows[0]["n"])
        dead = [r for r in rows if r["name"] is not None]
        if not dead:
            return pruned, int(rows[0]["used"])
        from mosaicsync.errors import NotFoundError

        empty = [r["name"] for r in dead if int(r["dead"]) == int(r["total"])]
        for name in empty:
            with contextlib.suppress(NotFoundError):
                self.client.delete_object(self.project_id, name)
        used = "(SELECT coalesce(sum(size), 0) FROM mosaicsync.packs) AS used"
        left = self._sql(
            f"DELETE FROM mosaicsync.blobs b WHERE NOT EXISTS (SELECT 1 FROM "
            f"mosaicsync.file_spans f WHERE {_BLOB_OF} = b.sha256);\n"
            + (
                "DELETE FROM mosaicsync.packs WHERE name IN ("
                + ", ".join(sql_literal(n) for n in empty)
                + ");\n"
                if empty
                else ""
            )
            + f"SELECT {used}"
        )
        with self._lock:
            self._kept.clear()
        return pruned, int(left[0]["used"])
