"""`watch`: keep the project on Mosaic equal to the folder while it is being edited.

One full deploy, then filesystem events: filtered (ignore rules, editor temp files), coalesced over
a short quiet window, and synced by re-checking only the changed paths against an in-memory copy
of the deployed manifest. A failed sync keeps its paths and is retried with backoff, so the next
success catches up; new migrations are applied and a changed mosaic.toml is reloaded on the side.
"""

from __future__ import annotations

import contextlib
import os
import platform
import queue
import signal
import threading
import time
import unicodedata
import uuid
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

from watchfiles import Change

from mosaicsync.api import MosaicClient, RetryPolicy
from mosaicsync.config import Config, load_config
from mosaicsync.deploy import CACHE_DIR, Deployer, DeployOptions, DeployResult, project_rules
from mosaicsync.errors import (
    AuthError,
    ChecksFailed,
    ConfigError,
    LockTimeout,
    MosaicError,
    NotFoundError,
    ScanError,
    UnavailableError,
)
from mosaicsync.events import (
    ConfigReloaded,
    Deployed,
    LockWaiting,
    MigrationsApplied,
    Stopped,
    Synced,
    SyncFailed,
    Watching,
    WatchWarning,
)
from mosaicsync.hashcache import HashCache
from mosaicsync.history import History, Packer
from mosaicsync.ignore import IGNORE_FILE, IgnoreRules
from mosaicsync.manifest import MirroredManifest
from mosaicsync.notify import Notifier
from mosaicsync.plan import plan_sync
from mosaicsync.retry import Backoff
from mosaicsync.scan import LocalFile, Skipped, scan_paths
from mosaicsync.wire import TransportError

DEFAULT_DEBOUNCE_MS = 30
MAX_WAIT_MS = 1000  # a never-ending stream of changes still syncs this often
BURST_QUIET_S = 0.1  # the quiet window inside a burst
BURST_GAP_S = 0.15  # changes that start this soon after a sync belong to the same burst
BURST_SIZE = 50  # or this many paths at once
STEP_MS = 10  # watchfiles' tick: a lone save reaches Python 10 to 20 ms after it happened
BATCH_CAP_MS = 1000  # the longest one watchfiles batch may keep growing
POLL_DELAY_MS = 100  # when polling: the latency target cannot hold, but 100 ms keeps it usable
HOT_S = 2.0  # when polling: how long a synced path is also checked to the nanosecond
# A sync keeps the deploy's lease this long after it ends, so a burst of saves takes it once;
# a deploy started meanwhile waits at most this long after the last sync.
LEASE_LINGER_S = 1.0
MIGRATION_SETTLE_S = 0.3  # a new migration must be this still: applied once, it cannot be redone
EMPTY_SETTLE_NS = 50_000_000  # an empty file this young is probably being written
RETRY_BASE_S = 0.25
RETRY_CAP_S = 5.0
# The watch owns the backoff (and says so on screen), so each request gives up early.
WATCH_RETRY = RetryPolicy(attempts=3, base=0.1, cap=1.0)

FULL = ("full", "")
CONFIG = ("config", "")
MIGRATIONS = ("migrations", "")
Item = tuple[str, str]


# -- events -------------------------------------------------------------------------------------


# -- pure parts ---------------------------------------------------------------------------------


class Coalescer:
    """Decides when pending changes are synced: once they have been quiet for `quiet` seconds,
    and never later than `max_wait` after the first one, so an endless stream still syncs.

    Changes that start right after a sync, or come by the hundred, are a burst (a checkout, a
    build): they wait for a longer quiet window, so a burst is a few syncs and not dozens.
    """

    def __init__(
        self,
        quiet: float,
        max_wait: float,
        *,
        burst_quiet: float = BURST_QUIET_S,
        burst_gap: float = BURST_GAP_S,
        burst_size: int = BURST_SIZE,
    ) -> None:
        self.quiet = quiet
        self.max_wait = max_wait
        self.burst_quiet = max(quiet, burst_quiet)
        self.burst_gap = burst_gap
        self.burst_size = burst_size
        self._pending: dict[Hashable, None] = {}
        self._first_at = 0.0
        self._last_at = 0.0
        self._flushed_at = float("-inf")
        self._burst = False

    def __len__(self) -> int:
        return len(self._pending)

    def add(self, at: float, items: Iterable[Hashable]) -> None:
        """Changes seen at `at` (monotonic seconds); a path seen twice is kept once."""
        items = list(items)
        if not items:
            return
        if not self._pending:
            self._first_at = at
            self._last_at = at
            self._burst = at - self._flushed_at < self.burst_gap
        self._last_at = max(self._last_at, at)
        self._pending.update(dict.fromkeys(items))
        self._burst = self._burst or len(self._pending) > self.burst_size

    def due_at(self) -> float | None:
        """When the pending changes should be synced, or None if there are none."""
        if not self._pending:
            return None
        quiet = self.burst_quiet if self._burst else self.quiet
        return min(self._last_at + quiet, self._first_at + self.max_wait)

    def take(self) -> list[Any]:
        """Everything pending, in the order first seen; the coalescer is then empty."""
        items = list(self._pending)
        self._pending.clear()
        return items

    def flushed(self, at: float) -> None:
        """A sync ended at `at`: changes that start soon after it are a burst."""
        self._flushed_at = at


def polling_wanted(flag: bool) -> bool:
    """`--poll`, else WATCHFILES_FORCE_POLLING read as watchfiles reads it, else on WSL (whose
    Windows drives deliver no events), as watchfiles does."""
    if flag:
        return True
    env = os.environ.get("WATCHFILES_FORCE_POLLING")
    if env is not None:
        return env.strip().lower() not in ("false", "disable", "disabled")
    return "microsoft-standard" in platform.uname().release.lower()


def _real(path: Path) -> str:
    return os.path.realpath(path)


def _inside(path: str, root: str) -> str | None:
    """`path` relative to `root` in POSIX form ("" for the root itself), or None if outside."""
    if path == root:
        return ""
    prefix = root if root.endswith(os.sep) else root + os.sep
    if not path.startswith(prefix):
        return None
    return path[len(prefix) :].replace(os.sep, "/")


class ChangeSorter:
    """Turns raw (change, absolute path) pairs into what must be synced, dropping the noise."""

    def __init__(self, config: Config, rules: IgnoreRules) -> None:
        self.rules = rules
        self.static_root = _real(config.static_root)
        self.migrations_dir = _real(config.migrations_dir)
        self.config_path = _real(config.path)
        self.project_dir = _real(config.project_dir)

    def sort(self, change: int, path: str) -> list[Item]:
        # Editor temp files are in the default ignore layer, so the rules drop them below, as a
        # deploy's scan does.
        name = os.path.basename(path)
        items: list[Item] = []
        if path == self.config_path or (
            name == IGNORE_FILE and os.path.dirname(path) in (self.static_root, self.project_dir)
        ):
            items.append(CONFIG)
        if path == self.migrations_dir or (
            os.path.dirname(path) == self.migrations_dir
            and name.lower().endswith(".sql")
            and not name.startswith(".")
        ):
            items.append(MIGRATIONS)
        rel = _inside(path, self.static_root)
        if rel:
            is_dir = os.path.isdir(path)
            # A directory's own `modified` says only that its listing changed: the entries that
            # changed come with their own events (and polling would otherwise loop on it).
            if not (is_dir and change == Change.modified):
                rel = unicodedata.normalize("NFC", rel)
                if self.rules.match_with_parents(rel, is_dir) is None:
                    items.append(("file", rel))
        return items


def _affected(paths: Iterable[str], dirty: set[str], dir_like: set[str]) -> set[str]:
    """The paths that are dirty themselves or lie under a dirty path that may be a directory."""
    if not dir_like:
        return {p for p in paths if p in dirty}
    hit = set()
    for p in paths:
        if p in dirty:
            hit.add(p)
            continue
        cut = p.find("/")
        while cut != -1:
            if p[:cut] in dir_like:
                hit.add(p)
                break
            cut = p.find("/", cut + 1)
    return hit


def _signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino)


# -- the filesystem side ------------------------------------------------------------------------


class _Stopping(Exception):
    """A retry wait was cut short because the watch is stopping."""


# Failures that say "not now" rather than "not this": the changes are kept and retried.
# A deploy holding the lease longer than --lock-timeout is one of them.
_RETRIED: tuple[type[Exception], ...] = (UnavailableError, TransportError, LockTimeout)


# -- the watch ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class WatchOptions:
    debounce_ms: int = DEFAULT_DEBOUNCE_MS
    max_wait_ms: int = MAX_WAIT_MS
    deploy: DeployOptions = field(default_factory=DeployOptions)
    force_polling: bool = False
    migration_settle: float = MIGRATION_SETTLE_S
    lease_linger: float = LEASE_LINGER_S
    target: str | None = None  # the mosaic.toml target, to notice its project id changing


def make_migrator(client: MosaicClient, project_id: str, directory: Path, **kwargs: Any) -> Any:
    """The migration runner for new migration files (one place, so tests and callers agree)."""
    from mosaicsync.migrate import Migrator

    return Migrator(client, project_id, directory, **kwargs)


def _configured_project(config: Config, target: str | None) -> str | None:
    try:
        return config.target(target).project_id
    except ConfigError:
        return None


class Watcher:
    """Deploys once, then keeps the project in sync with the folder until stopped.

    It owns the retry policy of `client` (short request retries, its own visible backoff).
    """

    def __init__(
        self,
        config: Config,
        client: MosaicClient,
        project_id: str,
        options: WatchOptions | None = None,
        on_event: Callable[[object], None] | None = None,
    ) -> None:
        self.config = config
        # Short request retries: the watch owns the backoff (and says so on screen), and its
        # waits end when it stops. The caller's client is left as it was.
        self.client = client.with_retry(WATCH_RETRY, self._sleep)
        self.project_id = project_id
        self.options = options or WatchOptions()
        self._on_event = on_event
        self._stop = threading.Event()
        self.manifest = MirroredManifest(self.client, project_id)
        self.rules = self._rules(config)
        self.sorter = ChangeSorter(config, self.rules)
        self.cache = HashCache.load(config.project_dir / CACHE_DIR / "hashes")
        self.local: dict[str, LocalFile] = {}
        self.skipped: list[Skipped] = []  # what the last full scan left out, for the checks
        self._checker: Deployer | None = None  # its content checks and their cache, kept
        self.url = ""
        self.coalescer = Coalescer(self.options.debounce_ms / 1000, self.options.max_wait_ms / 1000)
        self.backoff = Backoff(RETRY_BASE_S, RETRY_CAP_S, jitter=0.2)
        self._queue: queue.Queue = queue.Queue()
        self._watches: list[Notifier] = []
        self._watching_migrations = False
        self._retry_at = 0.0
        self._migrations_at: float | None = None
        self._warned_edits: dict[str, str] = {}
        self._started = False
        self._polling = polling_wanted(self.options.force_polling)
        self._hot: dict[str, tuple[tuple[int, int, int] | None, float]] = {}
        self._hot_check_at = 0.0
        self._mirror_digest: str | None = None  # the manifest's digest when the mirror was current
        self._held_lease: contextlib.ExitStack | None = None  # while a burst of syncs holds it
        self._lease_run_id = str(uuid.uuid4())  # one holder id for every take by this watch
        self._lease_until = 0.0  # monotonic time at which an idle held lease is given back
        # This watch run's entry in the deploy history and its totals (see _record_sync).
        self._entry: int | None = None
        self._totals = [0, 0, 0]  # uploaded, pruned, bytes

    # -- plumbing ---------------------------------------------------------------------------

    def emit(self, event: object) -> None:
        if self._on_event is not None:
            self._on_event(event)

    def stop(self) -> None:
        """Ask `run` to return; safe from any thread."""
        self._stop.set()
        self._queue.put((time.monotonic(), None))

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopping

    def _rules(self, config: Config) -> IgnoreRules:
        return project_rules(config, allow_secrets=self.options.deploy.allow_secrets)

    def _check(self, found: dict[str, LocalFile]) -> set[str]:
        """The deploy's content checks on the changed files, before they are sent: reports what
        they find, and returns the paths that must not be synced (an error in them)."""
        if self._checker is None:
            self._checker = self._deployer()
            self._checker.rules = self.rules
        published = list({**self.local, **found}.values())
        findings = self._checker.check(published, self.skipped, only=list(found), stop=False)
        return {f.file for f in findings if f.severity == "error"}

    def _deployer(self) -> Deployer:
        options = self.options.deploy._replace(migrate=False, dry_run=False)
        return Deployer(
            self.config, self.client, self.project_id, options, self.emit, manifest=self.manifest
        )

    # -- running ----------------------------------------------------------------------------

    def run(self) -> None:
        """Deploy, then sync every change until `stop()`, Ctrl-C or SIGTERM."""
        previous = self._catch_signals()
        try:
            self._start_watching()
            # Anything that changes from here on is in the queue: now the full deploy.
            self.coalescer.add(time.monotonic() - 1, [MIGRATIONS, FULL])
            self._loop()
        except (KeyboardInterrupt, _Stopping):
            pass
        finally:
            self._stop.set()
            self._release_lease()
            self._stop_watching()
            self.cache.save()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.emit(Stopped(len(self.coalescer)))

    def _catch_signals(self) -> dict[int, Any]:
        """In the main thread, Ctrl-C and SIGTERM also cut retry waits short: exit within 1 s."""
        if threading.current_thread() is not threading.main_thread():
            return {}

        def interrupt(signum: int, frame: FrameType | None) -> None:
            self._stop.set()
            raise KeyboardInterrupt

        return {sig: signal.signal(sig, interrupt) for sig in (signal.SIGINT, signal.SIGTERM)}

    def _loop(self) -> None:
        while not self._stop.is_set():
            now = time.monotonic()
            hot = self._hot_check_at if self._hot else None
            linger = self._lease_until if self._held_lease is not None else None
            wake = [
                t for t in (self._next_flush(), self._migrations_at, hot, linger) if t is not None
            ]
            timeout = min(max(0.0, min(wake) - now), 0.5) if wake else 0.5
            self._receive(timeout)
            now = time.monotonic()
            if self._hot and now >= self._hot_check_at:
                self._check_hot(now)
            if self._migrations_at is not None and now >= self._migrations_at:
                self._migrations_at = None
                self.coalescer.add(now - self.coalescer.quiet, [MIGRATIONS])
            due = self._next_flush()
            if due is not None and now >= due and not self._stop.is_set():
                self._flush(self.coalescer.take())
                self.coalescer.flushed(time.monotonic())
            elif self._held_lease is not None and not self.coalescer and now >= self._lease_until:
                self._release_lease()

    def _next_flush(self) -> float | None:
        due = self.coalescer.due_at()
        return None if due is None else max(due, self._retry_at)

    def _receive(self, timeout: float) -> None:
        try:
            item = self._queue.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            self._take(*item)
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return

    def _take(self, at: float, payload: Any) -> None:
        if payload is None:
            return
        if isinstance(payload, BaseException):
            raise MosaicError(
                f"the file watcher stopped: {payload}",
                hint="run `mosaicsync watch` again; on a network or container filesystem set "
                "WATCHFILES_FORCE_POLLING=1",
            ) from payload
        items: list[Item] = []
        for change, path in payload:
            items += self.sorter.sort(change, path)
        self.coalescer.add(at, items)

    # -- the watches ------------------------------------------------------------------------

    def _start_watching(self) -> None:
        static = _real(self.config.static_root)
        migrations = _real(self.config.migrations_dir)
        project = _real(self.config.project_dir)
        recursive = [static]
        self._watching_migrations = os.path.isdir(migrations)
        if self._watching_migrations and _inside(migrations, static) is None:
            recursive.append(migrations)
        self._watches.append(self._open_watch(recursive, recursive=True))
        if _inside(project, static) is None:
            # mosaic.toml, .mosaicignore, and a migrations folder created later. A folder, never
            # the file itself: editors replace files on save, and a watch on a file dies with it.
            self._watches.append(self._open_watch([project], recursive=False))

    def _open_watch(self, paths: list[str], *, recursive: bool) -> Notifier:
        try:
            return self._notifier(paths, recursive, self._polling)
        except OSError as exc:
            if self._polling or "limit" not in str(exc).lower():
                raise
            self.emit(
                WatchWarning(
                    "watcher",
                    f"the system's limit on file watches is reached ({exc}); polling every "
                    f"{POLL_DELAY_MS} ms instead, which is slower",
                    hint="raise it: sudo sysctl fs.inotify.max_user_watches=524288",
                )
            )
            return self._notifier(paths, recursive, True)

    def _notifier(self, paths: list[str], recursive: bool, polling: bool) -> Notifier:
        # Registered when it returns: no write made after start-up can slip past, and a
        # watch-limit error surfaces here, where `_open_watch` falls back to polling.
        return Notifier(
            paths,
            self._queue,
            recursive=recursive,
            force_polling=polling,
            poll_delay_ms=POLL_DELAY_MS,
            step_ms=STEP_MS,
            debounce_ms=BATCH_CAP_MS,
        )

    def _stop_watching(self) -> None:
        watches, self._watches = self._watches, []
        for watch in watches:
            watch.close()

    def _restart_watching(self) -> None:
        self._stop_watching()
        self._start_watching()

    # -- one flush --------------------------------------------------------------------------

    def _flush(self, items: list[Item]) -> None:
        remaining = list(items)
        try:
            if CONFIG in remaining:
                if self._reload_config() and FULL not in remaining:
                    remaining.append(FULL)
                remaining.remove(CONFIG)
            if MIGRATIONS in remaining or FULL in remaining:
                # Both take the lease themselves: give back the one a burst of syncs holds.
                self._release_lease()
            if MIGRATIONS in remaining:
                self._migrate()
                remaining.remove(MIGRATIONS)
            if FULL in remaining:
                self._full_sync()
                remaining.remove(FULL)
            files = [rel for kind, rel in remaining if kind == "file"]
            if files:
                self._sync_files(files)
        except _RETRIED as exc:
            # Keep everything not done yet; the next success catches up, under a lease taken anew.
            self._release_lease(settled=False)
            self.coalescer.add(time.monotonic(), remaining)
            delay = self.backoff.next_delay()
            self._retry_at = time.monotonic() + delay
            message = exc.message if isinstance(exc, MosaicError) else str(exc)
            self.emit(SyncFailed(message, len(self.coalescer), delay, self.backoff.attempt))
            return
        except (KeyboardInterrupt, _Stopping):
            self.coalescer.add(time.monotonic(), remaining)  # counted as not synced
            raise
        self.backoff.reset()
        self._retry_at = 0.0

    def _full_sync(self) -> None:
        deployer = self._deployer()
        try:
            result = deployer.run()
        except (*_RETRIED, AuthError, NotFoundError):
            raise
        except MosaicError as exc:
            if not self._started:
                raise
            # A bad edit (a symlink that leaves the root, a reserved name): the rest goes on.
            self.emit(WatchWarning("skipped", exc.message, exc.hint))
            return
        self.url = result.url
        self.manifest.load()
        self._mirror_digest = None  # checked against the platform's at the next sync
        # The deploy's own scan is the state from here on: no second walk of the whole root.
        self.cache = HashCache.load(self.config.project_dir / CACHE_DIR / "hashes")
        scanned = deployer.scanned
        assert scanned is not None
        self.local = {f.path: f for f in scanned.files}
        self.skipped = scanned.skipped
        if self._polling:
            # Files written in the last moments share their mtime's second with a save to come;
            # None makes the first check look at them again (a no-op when they did not change).
            recent_ns = time.time_ns() - int(HOT_S * 1e9)
            until = time.monotonic() + HOT_S
            for f in scanned.files:
                seen = _signature(f.abs_path)
                if seen is not None and seen[1] > recent_ns:
                    self._hot[f.path] = (None, until)
        self.emit(Deployed(result))
        if not self._started:
            self._started = True
            watched = [self.config.static_root, self.config.migrations_dir, self.config.path]
            paths = [str(path) for path in watched if path.exists()]
            polling = any(watch.polling for watch in self._watches)
            self.emit(Watching(self.project_id, self.url, paths, polling))

    def _sync_files(self, rels: list[str]) -> None:
        started = time.time()
        t0 = time.perf_counter()
        files, _, unstable = self._scan_dirty(rels)
        if unstable:
            # Still being written: look again once it has been quiet.
            self.coalescer.add(time.monotonic(), [("file", rel) for rel in unstable])
        found = {f.path: f for f in files}
        dirty = set(rels) - unstable
        if not dirty:
            return
        # A file that fails a check stays as it was on the site until it is fixed and saved.
        for path in self._check(found):
            found.pop(path, None)
            dirty.discard(path)
        files = list(found.values())
        if not dirty:
            return
        # A dirty path that is not a file now may be a directory (renamed, moved, deleted):
        # what was under it is checked too.
        dir_like = {rel for rel in dirty if rel not in found}
        for path in _affected(list(self.local), dirty, dir_like) - found.keys():
            del self.local[path]
        self.local.update(found)

        refused: MosaicError | None = None
        # Under the deploy's lease: a `deploy` of the same project waits for this sync (and this
        # sync for it), so the two never interleave on the site or in the manifest.
        self._hold_lease()
        remote = self.manifest.entries()
        affected = {p: remote[p] for p in _affected(remote, dirty, dir_like)}
        others = [f for p, f in self.local.items() if p not in found]
        plan = plan_sync(files, affected, others, prune=self.options.deploy.prune)
        if plan.is_noop:
            return
        deployer = self._deployer()
        history = deployer.history()
        packer = Packer() if history.enabled else None
        try:
            published = deployer.publisher(history, packer).publish(
                plan, list(self.local.values()), self.manifest.snapshot()
            )
        except (*_RETRIED, AuthError, _Stopping):
            if packer:
                packer.close()
            raise
        except MosaicError as exc:
            refused = exc
        if refused is not None:
            if len(dirty) > 1:
                # One file the platform refuses must not hold back the others.
                for rel in sorted(dirty):
                    self._sync_files([rel])
                return
            self.emit(WatchWarning("skipped", f"{rels[0]}: {refused.message}", refused.hint))
            return
        paths = sorted({u.file.path for u in plan.uploads} | {e.path for e in plan.prune})
        ms = (time.perf_counter() - t0) * 1000
        self.emit(Synced(started, published.uploaded, published.pruned, published.bytes, ms, paths))
        try:
            self._record_sync(deployer, history, packer, published)
        finally:
            if packer:
                packer.close()

    def _record_sync(
        self, deployer: Deployer, history: History, packer: Packer | None, published: Any
    ) -> None:
        """One history entry per watch run, finished again after each sync (so it always holds
        the site as the last sync left it); a new one when another deploy came in between.
        After the sync is reported: the history costs the next save, not this one."""
        try:
            if self._entry is None or (live := history.live()) is None or live.id != self._entry:
                result = DeployResult(self.project_id, self.url)
                deployer.record("watch", result)
                self._entry, self._totals = result.deploy_id, [0, 0, 0]
            self._totals = [
                self._totals[0] + published.uploaded,
                self._totals[1] + published.pruned,
                self._totals[2] + published.bytes,
            ]
            history.finish(
                self._entry,  # type: ignore[arg-type]
                packer=packer,
                reproduce=deployer.reproducer(),
                uploaded=self._totals[0],
                pruned=self._totals[1],
                bytes_sent=self._totals[2],
                files=len(self.local),
                duration_ms=0,
            )
        except MosaicError as exc:
            self.emit(
                WatchWarning(
                    "history", f"the deploy history was not updated: {exc.message}", exc.hint
                )
            )

    def _hold_lease(self) -> None:
        """Hold the lease `deploy` holds from its migrations to its last prune, until the syncs
        have been idle for `lease_linger` seconds; on taking it, catch up with any deploy since."""
        self._lease_until = time.monotonic() + self.options.lease_linger
        if self._held_lease is not None:
            return
        migrator = make_migrator(
            self.client,
            self.project_id,
            self.config.migrations_dir,
            lock_timeout=self.options.deploy.lock_timeout,
            sleep=self._sleep,
            on_event=self._on_lease_event,
        )
        held = contextlib.ExitStack()
        held.enter_context(migrator.lease(self._lease_run_id))
        self._held_lease = held
        # A deploy from another folder may have changed the manifest since this watch last held
        # the lease: planning against a stale copy would skip a file that deploy replaced.
        digest, _ = self.manifest.ensure()
        if digest != self._mirror_digest:
            self.manifest.load()
            self._mirror_digest = digest
        self._lease_until = time.monotonic() + self.options.lease_linger

    def _release_lease(self, *, settled: bool = True) -> None:
        """Give the lease back, noting the manifest's digest to compare with at the next take."""
        lease, self._held_lease = self._held_lease, None
        if lease is None:
            return
        self._mirror_digest = None  # unknown unless read below: the next take reloads
        unreachable = (MosaicError, TransportError, _Stopping)
        if settled and not self._stop.is_set():
            with contextlib.suppress(*unreachable):
                self._mirror_digest = self.manifest.ensure()[0]
        # Lost or unreachable, it expires by itself; the next take reloads the mirror.
        with contextlib.suppress(*unreachable):
            lease.close()

    def _on_lease_event(self, event: object) -> None:
        # Taking and giving back the lease is routine; waiting for it is news.
        if isinstance(event, LockWaiting):
            self.emit(event)

    def _scan_dirty(self, rels: list[str]) -> tuple[list[LocalFile], list[str], set[str]]:
        """(files, gone, unstable): a stat before and after the hash proves a file held still."""
        root = self.config.static_root
        before = {rel: _signature(root / rel) for rel in rels}
        try:
            files, gone = scan_paths(root, rels, self.rules, self.cache)
        except ScanError as exc:
            if len(rels) == 1:
                self.emit(WatchWarning("skipped", exc.message, exc.hint))
                return [], [], set()
            files: list[LocalFile] = []
            gone: list[str] = []
            unstable: set[str] = set()
            for rel in rels:  # find the bad path; the others go on
                one, one_gone, one_unstable = self._scan_dirty([rel])
                files += one
                gone += one_gone
                unstable |= one_unstable
            return files, gone, unstable
        unstable = set()
        now_ns = time.time_ns()
        hot_until = time.monotonic() + HOT_S
        for f in files:
            first = before.get(f.path)
            after = _signature(f.abs_path)
            # A path found under a directory that moved in was complete by then.
            if first is not None:
                moved = after is None or after != first or after[0] != f.size
                young = f.size == 0 and after is not None and now_ns - after[1] < EMPTY_SETTLE_NS
                if moved or young:
                    unstable.add(f.path)
                    continue
            if self._polling:
                self._hot[f.path] = (after, hot_until)
        return [f for f in files if f.path not in unstable], gone, unstable

    def _check_hot(self, now: float) -> None:
        """Polling compares modification times in whole seconds, so a second save within the
        same second goes unseen: recently synced paths are compared here to the nanosecond."""
        self._hot_check_at = now + POLL_DELAY_MS / 1000
        root = self.config.static_root
        changed = []
        for rel, (seen, until) in list(self._hot.items()):
            if until < now:
                del self._hot[rel]
                continue
            current = _signature(root / rel)
            if current != seen:
                self._hot[rel] = (current, until)
                changed.append(("file", rel))
        self.coalescer.add(now, changed)

    # -- migrations -------------------------------------------------------------------------

    def _migrate(self) -> None:
        directory = self.config.migrations_dir
        if not self.options.deploy.migrate or not directory.is_dir():
            return
        if not self._watching_migrations:
            self._restart_watching()  # the folder was created after the watch started
        mtimes = []
        for path in directory.glob("*.sql"):
            try:
                mtimes.append(path.stat().st_mtime)
            except OSError:
                continue
        if not mtimes:
            return
        age = time.time() - max(mtimes)
        if age < self.options.migration_settle:
            self._migrations_at = time.monotonic() + self.options.migration_settle - age
            return
        migrator = make_migrator(
            self.client,
            self.project_id,
            directory,
            lock_timeout=self.options.deploy.lock_timeout,
            sleep=self._sleep,
        )
        try:
            status = migrator.status()
        except (*_RETRIED, AuthError):
            raise
        except MosaicError as exc:
            self.emit(
                WatchWarning(
                    "migration-failed",
                    f"migrations paused: {exc.message}",
                    "fix the file; files keep syncing meanwhile",
                )
            )
            return
        self._warn_edited(status.changed)
        if not status.pending:
            return
        try:
            up = migrator.up(
                allow_changed=True,
                allow_out_of_order=self.options.deploy.allow_out_of_order,
                allow_destructive=self.options.deploy.allow_destructive,
            )
        except (*_RETRIED, AuthError):
            raise
        except ChecksFailed as exc:
            # Never a prompt here: the watch goes on syncing files, migrations wait.
            self.emit(
                WatchWarning(
                    "migration-destructive",
                    f"migrations paused: {exc.message}",
                    f"{exc.hint}; the watch tries again when a migration file changes, and "
                    "applies it if the watch was started with --allow-destructive",
                )
            )
            return
        except MosaicError as exc:
            self.emit(
                WatchWarning(
                    "migration-failed",
                    f"migration failed, so migrations are paused until a migration file changes "
                    f"(files keep syncing): {exc.message}",
                    exc.hint,
                )
            )
            return
        if up.applied:
            self.emit(MigrationsApplied([(a.version, a.name, a.ms) for a in up.applied]))

    def _warn_edited(self, changed: Sequence[Any]) -> None:
        current = {c.filename: c.file_checksum for c in changed}
        for c in changed:
            if self._warned_edits.get(c.filename) == c.file_checksum:
                continue
            self.emit(
                WatchWarning(
                    "migration-edited",
                    f"{c.filename} WAS EDITED AFTER IT WAS APPLIED: the edit is NOT applied, "
                    "and never will be",
                    "revert the file and put the change in a new migration "
                    "(`mosaicsync migrate new NAME`)",
                )
            )
        self._warned_edits = current

    # -- mosaic.toml ------------------------------------------------------------------------

    def _reload_config(self) -> bool:
        """Reload mosaic.toml and the ignore files; True when a full sync must follow."""
        try:
            new = load_config(self.config.path)
            rules = self._rules(new)
        except ConfigError as exc:
            self.emit(
                WatchWarning(
                    "config",
                    f"{exc.message} (still using the settings from before the edit)",
                    exc.hint,
                )
            )
            return False
        old = self.config
        target = self.options.target
        moved = _configured_project(old, target) != _configured_project(new, target)
        roots = (_real(new.static_root), _real(new.migrations_dir))
        roots_changed = roots != (_real(old.static_root), _real(old.migrations_dir))
        self.config = new
        self.rules = rules
        self._checker = None  # made again with the new rules and config
        self.sorter = ChangeSorter(new, rules)
        if roots_changed:
            self._restart_watching()
        if moved:
            self.emit(
                ConfigReloaded(
                    f"the project id in {new.path.name} changed; still syncing to "
                    f"{self.project_id}: restart `mosaicsync watch` to use the new one",
                    restart_required=True,
                )
            )
        else:
            self.emit(ConfigReloaded(f"reloaded {new.path.name} and the ignore rules"))
        return True
