"""Execute a deploy plan: publish in the safe order, record each file once it has arrived.

Order matters because the platform has no atomic switch: storage objects, then the storage URL
map and site assets (CSS rewritten), then HTML, then prune. Each file enters the manifest only
after it has arrived, so an interrupted run resumes where it stopped. `deploy` and `watch` both
publish through `Publisher.publish`: one upload path, whatever the command.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import sys
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, TypeVar

from mosaicsync.api import MosaicClient, auto_concurrency, changed_while_uploaded
from mosaicsync.contract import TEXT_EXTENSIONS, extension
from mosaicsync.errors import NotFoundError
from mosaicsync.events import Transferred
from mosaicsync.manifest import Manifest, ManifestRow
from mosaicsync.plan import Plan, RemoteEntry, Upload, route, routes
from mosaicsync.publishable import ASSETS_FILE
from mosaicsync.scan import LocalFile
from mosaicsync.sitepaths import is_page

if TYPE_CHECKING:
    from concurrent.futures import Future

_T = TypeVar("_T")

FLUSH_EVERY = 200


@dataclass
class Published:
    """What one `publish` sent: files that arrived, files pruned, bytes on the wire."""

    uploaded: int = 0
    pruned: int = 0
    bytes: int = 0
    storage: list[str] = field(default_factory=list)  # storage-routed paths of the site


class _ManifestWriter:
    """Buffers manifest rows of files that arrived and writes them in batches."""

    def __init__(self, manifest: Manifest) -> None:
        self.manifest = manifest
        self.rows: list[ManifestRow] = []
        self.lock = threading.Lock()

    def add(self, row: ManifestRow) -> None:
        with self.lock:
            self.rows.append(row)
            full = len(self.rows) >= FLUSH_EVERY
        if full:
            self.flush()

    def flush(self) -> None:
        with self.lock:
            rows, self.rows = self.rows, []
        if not rows:
            return
        try:
            self.manifest.upsert(rows)
        except BaseException:
            # Not recorded yet (a network error, Ctrl-C): the next flush sends them again.
            with self.lock:
                self.rows[:0] = rows
            raise


class Publisher:
    """Sends a plan to one project: bounded concurrency, HTML/CSS rewritten for storage URLs."""

    def __init__(
        self,
        client: MosaicClient,
        project_id: str,
        manifest: Manifest,
        *,
        concurrency: int | None = None,
        rewrite: bool = True,
        prune: bool = True,
        on_event: Callable[[object], None] | None = None,
        keep: Callable[[bytes, bytes], None] | None = None,
        before_replace: Callable[[ManifestRow], None] | None = None,
    ) -> None:
        self.client = client
        # Deploy history's two hooks (history.py): `keep` is handed the bytes of every site file
        # as published, with their sha256 digest (computed here already), `before_replace` each
        # deployed storage object about to be overwritten or deleted, so that its bytes stay
        # restorable.
        self.keep = keep
        self.before_replace = before_replace
        self.project_id = project_id
        self.manifest = manifest
        self.concurrency = concurrency
        self.rewrite = rewrite
        self.prune = prune
        self._on_event = on_event
        self._event_lock = threading.Lock()

    def emit(self, event: object) -> None:
        if self._on_event:
            with self._event_lock:
                self._on_event(event)

    def publish(
        self,
        plan: Plan,
        files: Sequence[LocalFile],
        rows: dict[str, ManifestRow],
        targets: Mapping[str, str] | None = None,
    ) -> Published:
        """Publish `plan` in the safe order and record what arrived.

        `files` is every local file (the storage map and the rewrite need them all), `rows` the
        deployed manifest; a watch's plan covers only the paths that changed. `targets` is
        `route` of every file in `files`, when the caller has it already.
        """
        if targets is None:
            targets = routes(files)
        result = Published(storage=sorted(p for p, t in targets.items() if t == "storage"))
        writer = _ManifestWriter(self.manifest)
        counter = _Counter(len(plan.uploads))
        try:
            self._publish(plan, files, targets, rows, writer, counter, result)
        finally:
            # Whatever arrived is recorded, even when the run stops half way.
            writer.flush()
        return result

    def _publish(
        self,
        plan: Plan,
        files: Sequence[LocalFile],
        targets: Mapping[str, str],
        rows: dict[str, ManifestRow],
        writer: _ManifestWriter,
        counter: _Counter,
        result: Published,
    ) -> None:
        # 1. Storage objects. (Their rows, like every row, go out in batches as they fill and
        # the rest at the end, not at each phase's end: that flush stopped the uploads for a
        # round trip.)
        storage_uploads = plan.storage_uploads
        self._parallel(
            storage_uploads, lambda u: self._put_storage(u, rows, writer, counter, result)
        )

        # 2. The storage URL map, then site assets (CSS rewritten), then HTML.
        storage_urls = self._storage_urls(files, targets, rows, storage_uploads, writer)
        site_uploads = plan.site_uploads
        assets_row = _assets_row(storage_urls)
        previous = rows.get(ASSETS_FILE)
        # The assets row is recorded only after the pages went out, so an equal map means every
        # unchanged page already points at these URLs: no need to read them all again.
        same_map = bool(
            assets_row and previous and previous.generated and previous.sha256 == assets_row.sha256
        )
        was_rewritten = any(r.uploaded_sha256 for r in rows.values())
        if self.rewrite and (storage_urls or was_rewritten) and not same_map:
            site_uploads = self._add_rewrite_changes(site_uploads, plan, rows, storage_urls)
            counter.total = len(storage_uploads) + len(site_uploads)
        urls_for_rewrite = storage_urls if self.rewrite else {}
        assets = [u for u in site_uploads if not u.file.path.lower().endswith(".html")]
        pages = [u for u in site_uploads if u.file.path.lower().endswith(".html")]
        if assets_row and not same_map:
            self._publish_assets_file(storage_urls, result)
        self._parallel(
            assets, lambda u: self._put_site(u, urls_for_rewrite, writer, counter, result)
        )
        self._parallel(
            pages, lambda u: self._put_site(u, urls_for_rewrite, writer, counter, result)
        )
        if assets_row and not same_map:
            writer.add(assets_row)
        writer.flush()

        # 3. Prune only after everything else arrived, and only what we deployed.
        prune = list(plan.prune)
        old_assets = rows.get(ASSETS_FILE)
        if old_assets and old_assets.generated and not storage_urls and self.prune:
            prune.append(RemoteEntry(ASSETS_FILE, old_assets.sha256, old_assets.size, "site"))
        self._prune(prune, {f.path for f in files}, rows, result)

    def restore(
        self, puts: Sequence[Stored], prune: Sequence[ManifestRow], rows: dict[str, ManifestRow]
    ) -> Published:
        """Publish stored bytes exactly as they were (a rollback), in the order and with the
        manifest rule of `publish`: storage objects, the assets map and site assets, pages, then
        prune; each row recorded once its file arrived, so a stopped restore resumes."""
        result = Published()
        writer = _ManifestWriter(self.manifest)
        counter = _Counter(len(puts))
        storage = [p for p in puts if p.row.target == "storage"]
        generated = [p for p in puts if p.row.target == "site" and p.row.generated]
        site = [p for p in puts if p.row.target == "site" and not p.row.generated]
        assets = [p for p in site if not p.row.path.lower().endswith(".html")]
        pages = [p for p in site if p.row.path.lower().endswith(".html")]
        try:
            self._parallel(
                storage, lambda p: self._restore_storage(p, rows, writer, counter, result)
            )
            for p in generated:  # its row comes after the pages, as in `publish`
                self._restore_site(p, None, counter, result)
            self._parallel(assets, lambda p: self._restore_site(p, writer, counter, result))
            self._parallel(pages, lambda p: self._restore_site(p, writer, counter, result))
            for p in generated:
                writer.add(p.row)
            writer.flush()
            self._prune(
                [RemoteEntry(r.path, r.sha256, r.size, r.target, r.url) for r in prune],  # type: ignore[arg-type]
                {p.row.path for p in puts} | (set(rows) - {r.path for r in prune}),
                rows,
                result,
            )
        finally:
            writer.flush()
        return result

    def _restore_storage(
        self,
        p: Stored,
        rows: dict[str, ManifestRow],
        writer: _ManifestWriter,
        counter: _Counter,
        result: Published,
    ) -> None:
        assert p.path is not None
        row = p.row
        old = rows.get(row.path)
        if self.before_replace and old and old.target == "storage" and old.sha256 != row.sha256:
            self.before_replace(old)
        signed = self.client.upload_url(self.project_id, row.path, row.size)
        self.client.put_presigned(
            signed["upload_url"], p.path, row.size, name=row.path, command="rollback"
        )
        writer.add(row)
        self._restored(row, row.size, counter, result)

    def _restore_site(
        self, p: Stored, writer: _ManifestWriter | None, counter: _Counter, result: Published
    ) -> None:
        assert p.data is not None
        self._send_site_bytes(p.row.path, p.data)
        if writer:
            writer.add(p.row)
        self._restored(p.row, len(p.data), counter, result)

    def _restored(self, row: ManifestRow, size: int, counter: _Counter, result: Published) -> None:
        done = counter.next()
        with self._event_lock:
            result.uploaded += 1
            result.bytes += size
        self.emit(Transferred(row.path, row.target, size, done, counter.total))

    # -- execution -------------------------------------------------------------------------------

    def _parallel(self, items: Iterable[_T], work: Callable[[_T], None]) -> None:
        """Run `work` on every item with bounded concurrency; stop at the first failure.

        At most twice as many items as workers are in flight or queued at any moment: a
        100k-file plan never holds a future (and its lock and condition) per file. One item
        (the common edit) is sent from this thread: no pool, no thread, no import of them.
        """
        if isinstance(items, Sequence) and len(items) <= 1:
            for item in items:
                work(item)
            return
        from concurrent.futures import ThreadPoolExecutor

        workers = max(1, self.concurrency or auto_concurrency(self.client.min_rtt_ms))
        slots = threading.BoundedSemaphore(workers * 2)
        failed: list[BaseException] = []

        def run(item: _T) -> None:
            if not failed:  # queued behind a failure: dropped, as if cancelled
                work(item)

        def finished(future: Future[None]) -> None:
            if not future.cancelled() and (exc := future.exception()) is not None:
                failed.append(exc)
            slots.release()

        pool: ThreadPoolExecutor | None = None
        submitted = False
        try:
            for item in items:
                slots.acquire()
                if failed:
                    slots.release()
                    break
                if pool is None:
                    _fewer_malloc_arenas()
                    pool = ThreadPoolExecutor(max_workers=workers)
                pool.submit(run, item).add_done_callback(finished)
            submitted = True
        finally:
            # On Ctrl-C, queued items are dropped: only those already in flight finish.
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=not submitted)
        if failed:
            raise failed[0]

    def _put_storage(
        self,
        upload: Upload,
        rows: dict[str, ManifestRow],
        writer: _ManifestWriter,
        counter: _Counter,
        result: Published,
    ) -> None:
        f = upload.file
        old = rows.get(f.path)
        if self.before_replace and old and old.target == "storage" and old.sha256 != f.sha256:
            self.before_replace(old)
        signed = self.client.upload_url(self.project_id, f.path, f.size)
        # A file that changes size meanwhile stops the run and gets no manifest row.
        self.client.put_presigned(
            signed["upload_url"], f.abs_path, f.size, name=f.path, command="deploy"
        )
        writer.add(ManifestRow(f.path, f.sha256, f.size, "storage"))
        self._arrived(f, "storage", f.size, counter, result)

    def _put_site(
        self,
        upload: Upload,
        storage_urls: dict[str, str],
        writer: _ManifestWriter,
        counter: _Counter,
        result: Published,
    ) -> None:
        f = upload.file
        source = f.read_bytes()
        # Only the bytes the scan hashed were checked (a key pasted in since is not known):
        # other bytes are not published. The manifest records the source's hash and size,
        # never those of a rewritten copy, which the planner would see as a change every time.
        if hashlib.sha256(source).hexdigest() != f.sha256:
            raise changed_while_uploaded(f.path, "its content is not the one checked")
        source_sha = f.sha256
        data = sent_bytes(f.path, source, storage_urls)
        uploaded_sha = hashlib.sha256(data).hexdigest() if data is not source else None
        self._send_site_bytes(f.path, data)
        if self.keep:
            self.keep(data, bytes.fromhex(uploaded_sha or source_sha))
        writer.add(ManifestRow(f.path, source_sha, len(source), "site", None, uploaded_sha))
        self._arrived(f, "site", len(data), counter, result)

    def _send_site_bytes(self, path: str, data: bytes) -> None:
        if extension(path) in TEXT_EXTENSIONS:
            try:
                self.client.upload_file(self.project_id, path, data.decode("utf-8"))
                return
            except UnicodeDecodeError:
                pass
        self.client.upload_file(
            self.project_id, path, base64.b64encode(data).decode("ascii"), base64=True
        )

    def _arrived(
        self, f: LocalFile, target: str, size: int, counter: _Counter, result: Published
    ) -> None:
        done = counter.next()
        with self._event_lock:
            result.uploaded += 1
            result.bytes += size
        self.emit(Transferred(f.path, target, size, done, counter.total))

    def _storage_urls(
        self,
        files: Sequence[LocalFile],
        targets: Mapping[str, str],
        rows: dict[str, ManifestRow],
        storage_uploads: Sequence[Upload],
        writer: _ManifestWriter,
    ) -> dict[str, str]:
        """path -> public URL for every storage-routed file of the site."""
        wanted = {f.path for f in files if targets[f.path] == "storage"}
        if not wanted:
            return {}
        urls = {p: rows[p].url for p in wanted if p in rows and rows[p].url}
        missing = wanted - set(urls)
        if missing:
            listing = self.client.list_storage(self.project_id)
            by_name = {o["filename"]: o.get("url") for o in listing.get("files", [])}
            fresh = []
            for u in storage_uploads:
                url = by_name.get(u.file.path)
                if url:
                    fresh.append(
                        ManifestRow(u.file.path, u.file.sha256, u.file.size, "storage", url)
                    )
            for p in missing:
                if by_name.get(p):
                    urls[p] = by_name[p]  # type: ignore[assignment]
            if fresh:
                for row in fresh:
                    writer.add(row)
                writer.flush()
        return dict(sorted((p, u) for p, u in urls.items() if u))

    def _add_rewrite_changes(
        self,
        site_uploads: list[Upload],
        plan: Plan,
        rows: dict[str, ManifestRow],
        storage_urls: dict[str, str],
    ) -> list[Upload]:
        """Unchanged HTML/CSS whose rewritten copy would differ from what was sent go again."""
        from mosaicsync.rewrite import rewrite

        queued = {u.file.path for u in site_uploads}
        extra = []
        for f in plan.unchanged:
            if f.path in queued or not is_page(f.path) or route(f.path, f.size) != "site":
                continue
            try:
                text = f.abs_path.read_bytes().decode("utf-8")
            except (OSError, UnicodeDecodeError):
                continue
            out = rewrite(text, f.path, storage_urls)
            sent = rows.get(f.path)
            expected = hashlib.sha256(out.text.encode()).hexdigest() if out.references else None
            if sent is None or sent.uploaded_sha256 != expected:
                extra.append(Upload(f, "site", "changed"))
        return site_uploads + extra

    def _publish_assets_file(self, storage_urls: dict[str, str], result: Published) -> None:
        """Upload mosaic-assets.json before the pages that may read it (its row comes later)."""
        data = _assets_json(storage_urls)
        self.client.upload_file(self.project_id, ASSETS_FILE, data.decode())
        if self.keep:
            self.keep(data, hashlib.sha256(data).digest())
        with self._event_lock:
            result.uploaded += 1
            result.bytes += len(data)
        self.emit(Transferred(ASSETS_FILE, "site", len(data), 0, 0))

    def _prune(
        self,
        prune: Iterable[RemoteEntry],
        local_paths: set[str],
        rows: dict[str, ManifestRow],
        result: Published,
    ) -> None:
        """Delete what we deployed and the new state no longer has (`local_paths` stay in the
        manifest: their copy in the other target was already replaced)."""
        targets = list(prune)
        gone: list[str] = []
        for entry in targets:
            try:
                if entry.target == "storage":
                    row = rows.get(entry.path)
                    if self.before_replace and row and row.target == "storage":
                        self.before_replace(row)
                    self.client.delete_object(self.project_id, entry.path)
                else:
                    self.client.delete_file(self.project_id, entry.path)
            except NotFoundError:
                pass  # already gone: the manifest catches up below
            if entry.path not in local_paths:
                gone.append(entry.path)
            result.pruned += 1
            self.emit(
                Transferred(entry.path, entry.target, 0, result.pruned, len(targets), "prune")
            )
        if gone:
            self.manifest.remove(gone)


class Stored(NamedTuple):
    """One file of a restore: its manifest row as it was, and its bytes as they were published
    (in memory for a site file, a temporary file for a storage object)."""

    row: ManifestRow
    data: bytes | None = None
    path: Path | None = None


def sent_bytes(path: str, source: bytes, storage_urls: dict[str, str]) -> bytes:
    """The bytes a site file is published as: HTML and CSS pointing at storage-routed files get
    their public URLs (see rewrite.py); anything else, `source` itself (the same object)."""
    if not storage_urls or not is_page(path):
        return source
    # The HTML and CSS parsers load only when a page may point at storage files.
    from mosaicsync.rewrite import rewrite

    try:
        text = source.decode("utf-8")
    except UnicodeDecodeError:  # not text: sent as it is
        return source
    out = rewrite(text, path, storage_urls)
    return out.text.encode("utf-8") if out.references else source


def assets_json(storage_urls: dict[str, str]) -> bytes:
    """mosaic-assets.json for this storage map."""
    return _assets_json(storage_urls)


def _assets_json(storage_urls: dict[str, str]) -> bytes:
    return (json.dumps(storage_urls, indent=2, sort_keys=True) + "\n").encode()


def _assets_row(storage_urls: dict[str, str]) -> ManifestRow | None:
    """The manifest row of mosaic-assets.json for this storage map, or None without storage."""
    if not storage_urls:
        return None
    data = _assets_json(storage_urls)
    return ManifestRow(
        ASSETS_FILE, hashlib.sha256(data).hexdigest(), len(data), "site", None, None, True
    )


@functools.cache
def _fewer_malloc_arenas() -> None:
    """Cap glibc's malloc at two arenas before the upload threads start, and keep big buffers
    out of them.

    glibc gives each new thread an arena of its own (up to eight per core), and each upload
    thread's arena then keeps the request and file buffers it freed: with two, the cold deploy
    of 30k files peaked at 99 MB instead of 122 MB, for the same CPU time. A fixed mmap
    threshold stops glibc from raising it after each big buffer freed (up to 32 MB), which
    put the bodies of big files in the arenas, where they stayed: 100k files, 155 -> 138 MB.
    Elsewhere (macOS, musl) there is nothing to do.
    """
    if not sys.platform.startswith("linux"):
        return
    import contextlib
    import ctypes

    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None)
        libc.mallopt(-8, 2)  # M_ARENA_MAX
        libc.mallopt(-3, 128 * 1024)  # M_MMAP_THRESHOLD


class _Counter:
    def __init__(self, total: int) -> None:
        self.total = total
        self.value = 0
        self.lock = threading.Lock()

    def next(self) -> int:
        with self.lock:
            self.value += 1
            return self.value
