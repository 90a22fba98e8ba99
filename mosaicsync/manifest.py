"""Deploy state in the project's own database (schema `mosaicsync`), via the SQL endpoint.

The platform, not a laptop, knows what is deployed, so any machine deploys incrementally. Every
statement here is idempotent, so a request whose response was lost can be sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

from mosaicsync.ahead import Ahead
from mosaicsync.api import MosaicClient, SqlError
from mosaicsync.atomic import utf8_pieces, write_atomic
from mosaicsync.hashcache import ensure_cache_dir
from mosaicsync.plan import RemoteEntry

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS mosaicsync;
CREATE TABLE IF NOT EXISTS mosaicsync.files (
    path text PRIMARY KEY,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    target text NOT NULL CHECK (target IN ('site', 'storage')),
    url text,
    uploaded_sha256 text,
    generated boolean NOT NULL DEFAULT false,
    deployed_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE IF NOT EXISTS mosaicsync.deploys (
    id bigserial PRIMARY KEY,
    started_at timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT now(),
    uploaded integer NOT NULL,
    pruned integer NOT NULL,
    bytes bigint NOT NULL,
    files integer NOT NULL,
    duration_ms integer NOT NULL,
    deployed_by text NOT NULL,
    tool_version text NOT NULL
);
"""

# The columns of a manifest row (`ManifestRow`'s fields), in this order wherever rows are read.
ROW_COLUMNS = "path, sha256, size, target, url, uploaded_sha256, generated"

# The same digest is computed locally (`local_digest`) and by the server: a no-op deploy then
# costs one tiny request instead of downloading the whole manifest.
_DIGEST_TEMPLATE = """
SELECT encode(sha256(convert_to(coalesce(string_agg(
    path || E'\\t' || sha256 || E'\\t' || target, E'\\n' ORDER BY path COLLATE "C"), ''),
    'UTF8')), 'hex') AS digest,
    count(*) AS files,
    (SELECT json_build_object('id', d.id, 'kind', coalesce(to_jsonb(d) ->> 'kind', 'deploy'),
        'rollback_of', (to_jsonb(d) ->> 'restores')::bigint, 'message', to_jsonb(d) ->> 'message')
     FROM mosaicsync.deploys d WHERE coalesce(to_jsonb(d) ->> 'state', 'complete') = 'complete'
     ORDER BY d.id DESC LIMIT 1) AS live{}
FROM mosaicsync.files WHERE NOT generated
"""
DIGEST_SQL = _DIGEST_TEMPLATE.format("")

# Every column of every row, as `rows_digest` computes it from a local copy: when the two agree,
# the copy is the manifest and a deploy plans against it instead of downloading every row.
_ROW_TEXT = (
    "path || E'\\t' || sha256 || E'\\t' || size || E'\\t' || target || E'\\t' || "
    "coalesce('=' || url, '-') || E'\\t' || coalesce('=' || uploaded_sha256, '-') || E'\\t' || "
    "CASE WHEN generated THEN '1' ELSE '0' END"
)


def rows_digest_sql(rows: str) -> str:
    """SQL: the `rows_digest` of `rows` (a table, with a WHERE clause if need be, whose columns
    are the manifest's), as one `digest` column."""
    return (
        f"SELECT encode(sha256(convert_to(coalesce(string_agg({_ROW_TEXT}, E'\\n' "
        f"ORDER BY path COLLATE \"C\"), ''), 'UTF8')), 'hex') AS digest FROM {rows}"
    )


FULL_DIGEST_SQL = rows_digest_sql("mosaicsync.files")

# `DIGEST_SQL` with, in the same snapshot, the digest of every row and the lease's fence while
# no one holds it: asked before a deploy takes the lease, it vouches for a local copy then if
# the take finds the fence moved by that take alone (`Manifest.fetch`). Every writer of the
# manifest holds the lease, and each take bumps the fence.
EARLY_DIGEST_SQL = _DIGEST_TEMPLATE.format(
    f",\n    ({FULL_DIGEST_SQL}) AS full_digest,\n"
    "    (SELECT fence FROM mosaicsync.lock WHERE id = 1 AND holder IS NULL) AS free_fence"
)

_COPY_MAGIC = b"mosaicsync-manifest"
_COPY_VERSION = 1

UPSERT_BATCH = 500
FETCH_PAGE = 5000  # rows per manifest read, well under the endpoint's row and byte caps


class ManifestRow(NamedTuple):
    """One deployed file: written only after the file has arrived. (A named tuple: a deploy
    builds one per deployed file from its local copy, at a quarter of a dataclass's cost.)"""

    path: str
    sha256: str
    size: int
    target: str
    url: str | None = None
    # The sha256 of the bytes sent, when they differ from the source (rewritten HTML/CSS).
    uploaded_sha256: str | None = None
    # Made by the deploy (mosaic-assets.json), not a file on disk: left out of the digest.
    generated: bool = False


def sql_literal(value: object) -> str:
    """A PostgreSQL literal (standard_conforming_strings, the default since 9.1)."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    text = str(value)
    if "\0" in text:
        raise ValueError("NUL cannot be stored in a PostgreSQL text value")
    return "'" + text.replace("'", "''") + "'"


def local_digest(entries: Iterable[tuple[str, str, str]]) -> str:
    """sha256 over `path\\tsha256\\ttarget` lines in byte order, as `DIGEST_SQL` computes it."""
    # Code point order is UTF-8 byte order, and paths are unique: the tuples sort by path.
    return _sha256_of(utf8_pieces(map("\t".join, sorted(entries)), "\n"))


def remembered_digest(path: Path, key: str) -> tuple[str, list[str]] | None:
    """The local digest and the storage paths last computed for the file set of `key`
    (`plan.routes_key`), or None. Both are functions of the key alone: whatever became of
    the deploy that computed them, they are still right."""
    try:
        found, digest, check, storage = path.read_text("utf-8").split("\n", 3)
    except (OSError, ValueError):
        return None
    if found != key or len(digest) != 64 or check != _check_of(storage):
        return None  # another file set's, or cut short
    return digest, storage.split("\0") if storage else []


def _check_of(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def remember_digest(path: Path, key: str, digest: str, storage: Sequence[str]) -> None:
    """Keep what `remembered_digest` reads (no fsync: a file cut short is not read back)."""
    with contextlib.suppress(OSError, ValueError):
        ensure_cache_dir(path.parent)
        listed = "\0".join(storage)
        write_atomic(path, f"{key}\n{digest}\n{_check_of(listed)}\n{listed}", durable=False)


def _sha256_of(pieces: Iterable[bytes]) -> str:
    digest = hashlib.sha256()
    for piece in pieces:
        digest.update(piece)
    return digest.hexdigest()


def _row_fields(r: ManifestRow) -> tuple[str, str, str, str, str, str, str]:
    return (
        r.path, r.sha256, str(r.size), r.target,
        "-" if r.url is None else "=" + r.url,
        "-" if r.uploaded_sha256 is None else "=" + r.uploaded_sha256,
        "1" if r.generated else "0",
    )  # fmt: skip


def rows_digest(rows: Iterable[ManifestRow]) -> str:
    """sha256 over every column of `rows` in byte order of path, as `FULL_DIGEST_SQL` does."""
    ordered = sorted(rows, key=_path)  # code point order is UTF-8 byte order
    return _sha256_of(utf8_pieces(("\t".join(_row_fields(r)) for r in ordered), "\n"))


def _path(row: ManifestRow) -> str:
    return row.path


def save_copy(path: Path, rows: dict[str, ManifestRow]) -> None:
    """Write the local copy of the manifest with its digest (atomically, no fsync: a copy cut
    short fails its digest and is read from the platform again). Unwritable: no error."""
    try:
        digest = rows_digest(rows.values())
        header = b"%s %d %s\n" % (_COPY_MAGIC, _COPY_VERSION, digest.encode("ascii"))
        fields = (f for r in rows.values() for f in _row_fields(r))
        ensure_cache_dir(path.parent)
        write_atomic(path, itertools.chain((header,), utf8_pieces(fields, "\0")), durable=False)
    except (OSError, ValueError):  # unwritable, or a name UTF-8 cannot encode: no copy
        return


def load_copy(path: Path) -> tuple[str, dict[str, ManifestRow]] | None:
    """(digest, rows) of the local copy, or None when there is none or it is not readable."""
    try:
        data = path.read_bytes()
        header, _, payload = data.partition(b"\n")
        magic, version, digest = header.split(b" ")
        if magic != _COPY_MAGIC or int(version) != _COPY_VERSION:
            return None
        parts = payload.decode("utf-8").split("\0") if payload else []
    except (OSError, ValueError):
        return None
    if len(parts) % 7:
        return None
    fields = iter(parts)
    try:
        rows = {
            path_: ManifestRow(
                path_, sha, int(size), target,
                None if url == "-" else url[1:],
                None if sent == "-" else sent[1:],
                generated == "1",
            )
            for path_, sha, size, target, url, sent, generated in zip(*[fields] * 7, strict=True)
        }  # fmt: skip
    except ValueError:
        return None
    return digest.decode("ascii"), rows


class Manifest:
    def __init__(self, client: MosaicClient, project_id: str) -> None:
        self.client = client
        self.project_id = project_id
        # The rows as this object last read and then wrote them (None before a `fetch`): what a
        # deploy leaves in its local copy.
        self.view: dict[str, ManifestRow] | None = None
        self._view_lock = threading.Lock()
        # The live deploy of the history as `ensure` last read it (id, kind, rollback_of,
        # message), in the same request: `status` and a no-op deploy say what is live for free.
        self.live: dict | None = None
        # (digest of every row, the free lease's fence) as `ensure(early=True)` read them.
        self.early: tuple[str, int] | None = None

    def _sql(self, query: str) -> list[dict]:
        return self.client.sql(self.project_id, query, idempotent=True)

    def ensure(self, *, early: bool = False) -> tuple[str, int]:
        """Create the schema if needed and return (digest, file count) in the same request;
        `early`: also read what `fetch` needs to trust a local copy without asking again."""
        self.early = None
        if early:
            try:
                rows = self._sql(SCHEMA_SQL + EARLY_DIGEST_SQL)
            except SqlError as exc:
                from mosaicsync.migrate.requests import MISSING_SCHEMA

                if exc.code not in MISSING_SCHEMA:  # no lease taken here yet: no lease table
                    raise
                return self.ensure()
            if rows[0]["free_fence"] is not None:
                self.early = rows[0]["full_digest"], int(rows[0]["free_fence"])
        else:
            rows = self._sql(SCHEMA_SQL + DIGEST_SQL)
        self.live = rows[0].get("live")
        return rows[0]["digest"], int(rows[0]["files"])

    def fetch(
        self, copy: Path | None = None, *, fence: int | None = None
    ) -> tuple[dict[str, RemoteEntry], dict[str, ManifestRow]]:
        """The deployed files: (entries for the planner, full rows by path).

        From the local `copy` when the platform's digest of every row equals the copy's (one
        small request instead of every row: the platform stays the truth); else read in pages
        in path order: the SQL endpoint caps a response's rows and bytes, and a big site's
        manifest in one response would pass both. `fence`: the one the caller's take of the
        lease got; if it is the next after the free one `ensure(early=True)` saw, nobody wrote
        in between and the digest read then is still the platform's.
        """
        if copy is not None and copy.is_file():
            early = self.early
            if early is not None and fence is not None and fence == early[1] + 1:
                held = load_copy(copy)
                digest = early[0]
            else:
                # The platform computes its digest while the copy is read.
                asked = Ahead(lambda: self._sql(FULL_DIGEST_SQL)[0]["digest"])
                held = load_copy(copy)
                digest = asked.get()
            if held is not None and held[0] == digest:
                return self._fetched(held[1])
        rows: list[dict] = []
        after = ""
        while True:
            page = self._sql(
                f"SELECT {ROW_COLUMNS} FROM mosaicsync.files {after}ORDER BY path "
                f"LIMIT {FETCH_PAGE}"
            )
            rows += page
            if len(page) < FETCH_PAGE:
                break
            after = f"WHERE path > {sql_literal(page[-1]['path'])} "
        full = {
            r["path"]: ManifestRow(
                r["path"], r["sha256"], int(r["size"]), r["target"], r["url"],
                r["uploaded_sha256"], bool(r["generated"]),
            )
            for r in rows
        }  # fmt: skip
        return self._fetched(full)

    def _fetched(
        self, full: dict[str, ManifestRow]
    ) -> tuple[dict[str, RemoteEntry], dict[str, ManifestRow]]:
        with self._view_lock:
            self.view = dict(full)
        entries = {
            p: RemoteEntry(p, r.sha256, r.size, r.target, r.url)  # type: ignore[arg-type]
            for p, r in full.items()
            if not r.generated
        }
        return entries, full

    def upsert(self, rows: Sequence[ManifestRow]) -> None:
        """Write `rows`; a path given twice (a storage object's row, then the same with its URL
        once the listing gave it) is written once, as last given: PostgreSQL refuses an upsert
        that touches one row twice."""
        if len({r.path for r in rows}) < len(rows):
            rows = list({r.path: r for r in rows}.values())
        for start in range(0, len(rows), UPSERT_BATCH):
            batch = rows[start : start + UPSERT_BATCH]
            values = ",\n".join(
                "("
                + ", ".join(
                    sql_literal(v)
                    for v in (
                        r.path,
                        r.sha256,
                        r.size,
                        r.target,
                        r.url,
                        r.uploaded_sha256,
                        r.generated,
                    )
                )
                + ", now())"
                for r in batch
            )
            self._sql(
                "INSERT INTO mosaicsync.files (path, sha256, size, target, url, "
                "uploaded_sha256, generated, deployed_at) VALUES\n"
                + values
                + "\nON CONFLICT (path) DO UPDATE SET sha256 = EXCLUDED.sha256, "
                "size = EXCLUDED.size, target = EXCLUDED.target, url = EXCLUDED.url, "
                "uploaded_sha256 = EXCLUDED.uploaded_sha256, generated = EXCLUDED.generated, "
                "deployed_at = EXCLUDED.deployed_at"
            )
            with self._view_lock:
                if self.view is not None:
                    for r in batch:
                        self.view[r.path] = r

    def remove(self, paths: Sequence[str]) -> None:
        for start in range(0, len(paths), UPSERT_BATCH):
            batch = paths[start : start + UPSERT_BATCH]
            self._sql(
                "DELETE FROM mosaicsync.files WHERE path IN ("
                + ", ".join(sql_literal(p) for p in batch)
                + ")"
            )
            with self._view_lock:
                if self.view is not None:
                    for p in batch:
                        self.view.pop(p, None)


class MirroredManifest(Manifest):
    """The deployed manifest read once, then kept current in memory by every successful write
    (the `view` every Manifest keeps), so a sync plans against memory instead of downloading
    the manifest again."""

    def load(self) -> None:
        self.fetch()

    def snapshot(self) -> dict[str, ManifestRow]:
        with self._view_lock:
            return dict(self.view or {})

    def entries(self) -> dict[str, RemoteEntry]:
        """The rows the planner compares with (the generated assets map is left out)."""
        with self._view_lock:
            return {
                p: RemoteEntry(p, r.sha256, r.size, r.target, r.url)  # type: ignore[arg-type]
                for p, r in (self.view or {}).items()
                if not r.generated
            }
