"""`deploy`: make the site on Mosaic equal to the folder on disk, uploading only what changed.

Orchestration only: scan, then under the lease migrations (schema first, so new pages never
meet an old schema), plan, publish through `upload.Publisher` (the one upload path, shared with
`watch`), and record the deploy.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from mosaicsync import __version__
from mosaicsync.ahead import Ahead
from mosaicsync.api import MosaicClient
from mosaicsync.config import Config
from mosaicsync.errors import ConfigError
from mosaicsync.events import Checked, Planned, Scanned
from mosaicsync.findings import BROKEN_REFERENCE, Finding, ordered, raise_for, strictened
from mosaicsync.hashcache import HashCache
from mosaicsync.ignore import IgnoreRules, load_ignore_rules
from mosaicsync.manifest import (
    Manifest,
    ManifestRow,
    local_digest,
    remember_digest,
    remembered_digest,
    save_copy,
)
from mosaicsync.plan import Plan, Target, plan_deploy, routes, routes_key
from mosaicsync.preflight import Preflight, Report, Secrets
from mosaicsync.scan import LocalFile, ScanResult, Skipped, scan
from mosaicsync.selection import user_at_host

if TYPE_CHECKING:
    from pathlib import Path

    from mosaicsync.history import Entry, Finished, GitState, History, Packer, Settled
    from mosaicsync.migrate import Migrator
    from mosaicsync.upload import Publisher

CACHE_DIR = ".mosaicsync"
MANIFEST_COPY = "manifest"  # the last deployed manifest, used while the platform's digest agrees
DIGEST_MEMO = "digest"  # the local digest of the last file set seen, by its key


@contextlib.contextmanager
def ended_on_error(history: History, deploy_id: int | None) -> Iterator[None]:
    """A run that stops leaves its history entry failed (an error) or interrupted (Ctrl-C,
    SIGTERM); a SIGKILL leaves it running, and the next run under the lease marks it."""
    try:
        yield
    except BaseException as exc:
        end_stopped(history, deploy_id, exc)
        raise


def end_stopped(history: History, deploy_id: int | None, exc: BaseException) -> None:
    """Mark the entry of a run that `exc` stopped, best effort: failed, or interrupted."""
    if deploy_id is not None:
        with contextlib.suppress(Exception):
            history.end(deploy_id, "failed" if isinstance(exc, Exception) else "interrupted")


class DeployOptions(NamedTuple):
    concurrency: int | None = None  # None: chosen from the round trip (api.auto_concurrency)
    prune: bool = True
    dry_run: bool = False
    rewrite: bool = True
    allow_secrets: bool = False
    allow_secret: tuple[str, ...] = ()  # files whose secret findings were reviewed (not the key)
    strict: bool = False  # broken references stop the deploy
    migrate: bool = True
    allow_changed: bool = False
    allow_out_of_order: bool = False
    allow_destructive: bool = False  # apply migrations that drop data (see migrate/lint.py)
    lock_timeout: float = 30.0
    message: str | None = None  # recorded in the deploy history (`deploy -m`)


@dataclass
class DeployResult:
    project_id: str
    url: str
    uploaded: int = 0
    unchanged: int = 0
    pruned: int = 0
    bytes: int = 0
    storage: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    migrations_applied: int = 0
    migrations_pending: list[str] = field(default_factory=list)
    duration_ms: int = 0
    dry_run: bool = False
    plan: dict[str, Any] | None = None
    findings: list[Finding] = field(default_factory=list)  # the preflight checks' warnings
    live: dict[str, Any] | None = None  # the live deploy before this run (id, kind, ...)
    deploy_id: int | None = None  # its entry in the deploy history (None: nothing recorded)
    replaces: Entry | None = None  # the deploy that was live before this one
    history: Finished | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id,
            "live": self.live,
            "deploy_id": self.deploy_id,
            "replaces": self.replaces.to_json() if self.replaces else None,
            "history": None
            if self.history is None
            else {
                "packed_files": self.history.packed_files,
                "packed_bytes": self.history.packed_bytes,
                "not_kept": list(self.history.missing),
                "pruned_deploys": self.history.pruned_deploys,
                "used_bytes": self.history.used_bytes,
            },
            "url": self.url,
            "uploaded": self.uploaded,
            "unchanged": self.unchanged,
            "pruned": self.pruned,
            "bytes": self.bytes,
            "storage": self.storage,
            "skipped": self.skipped,
            "migrations_applied": self.migrations_applied,
            "migrations_pending": self.migrations_pending,
            "duration_ms": self.duration_ms,
            "dry_run": self.dry_run,
            "findings": [f.to_json() for f in ordered(self.findings)],
            **({"plan": self.plan} if self.plan is not None else {}),
        }


def project_rules(config: Config, *, allow_secrets: bool = False) -> IgnoreRules:
    """The ignore rules every command applies to this project's static root."""
    return load_ignore_rules(
        config.static_root, config.project_dir, config.static_ignore, allow_secrets=allow_secrets
    )


@dataclass
class CheckReport:
    """What `check` found: every finding of the content checks and of the pending migrations."""

    findings: list[Finding]
    files: int
    files_read: int
    migrations: int


def scan_project(
    config: Config, *, allow_secrets: bool = False, rules: IgnoreRules | None = None
) -> ScanResult:
    """Scan the static root with the project's ignore rules and its hash cache."""
    rules = rules or project_rules(config, allow_secrets=allow_secrets)
    cache = HashCache.load(config.project_dir / CACHE_DIR / "hashes")
    result = scan(config.static_root, rules, cache)
    cache.save()
    return result


def plan_summary(plan: Plan) -> dict[str, Any]:
    return {
        "upload": [
            {"path": u.file.path, "target": u.target, "size": u.file.size, "reason": u.reason}
            for u in plan.uploads
        ],
        "prune": [{"path": p.path, "target": p.target} for p in plan.prune],
        "unchanged": len(plan.unchanged),
    }


class Deployer:
    def __init__(
        self,
        config: Config,
        client: MosaicClient,
        project_id: str,
        options: DeployOptions,
        on_event: Callable[[object], None] | None = None,
        manifest: Manifest | None = None,
        confirm: Callable[[list[Finding]], bool] | None = None,
    ) -> None:
        self.config = config
        self.confirm = confirm  # asked before a destructive migration; None: never asks
        self.client = client
        self.project_id = project_id
        self.options = options
        self._on_event = on_event
        self._event_lock = threading.Lock()
        self.manifest = manifest or Manifest(client, project_id)
        self.scanned: ScanResult | None = None  # what `run` scanned, for a watch to go on from
        self.rules: IgnoreRules | None = None
        self._preflight: Preflight | None = None
        self.checked: Report | None = None  # the last run of the content checks
        self._git: Ahead[GitState | None] | None = None  # read while a deploy goes on

    def emit(self, event: object) -> None:
        if self._on_event:
            with self._event_lock:
                self._on_event(event)

    def publisher(self, history: History | None = None, packer: Packer | None = None) -> Publisher:
        """The upload path this deploy publishes through (a watch's syncs and a rollback use the
        same one), keeping what the history needs when it is given."""
        from mosaicsync.upload import Publisher  # here: a no-op deploy never publishes

        return Publisher(
            self.client,
            self.project_id,
            self.manifest,
            concurrency=self.options.concurrency,
            rewrite=self.options.rewrite,
            prune=self.options.prune,
            on_event=self.emit,
            keep=packer.add if packer else None,
            before_replace=history.before_replace if history and history.enabled else None,
        )

    @property
    def manifest_copy(self) -> Path:
        """The local copy of the last manifest this folder published, read instead of every
        row while the platform's digest agrees (`Manifest.fetch`)."""
        return self.config.project_dir / CACHE_DIR / MANIFEST_COPY

    @property
    def _digest_memo(self) -> Path:
        """The local digest of the last file set seen (`manifest.remembered_digest`)."""
        return self.config.project_dir / CACHE_DIR / DIGEST_MEMO

    def history(self) -> History:
        from mosaicsync.history import History  # here: a no-op deploy records nothing

        return History(self.client, self.project_id, self.config.history_keep)

    def reproducer(self) -> Callable[[ManifestRow, str], bytes | None]:
        """Rebuilds the bytes a manifest row was published as, from the folder (for a deploy
        that resumes one stopped before its history was written); None when the folder no
        longer has them. The storage URL map is read once, at the first rewritten file."""
        from mosaicsync.upload import assets_json, sent_bytes

        urls: dict[str, str] | None = None

        def storage_urls() -> dict[str, str]:
            nonlocal urls
            if urls is None:
                _, rows = self.manifest.fetch()
                urls = dict(
                    sorted((p, r.url) for p, r in rows.items() if r.target == "storage" and r.url)
                )
            return urls

        def reproduce(row: ManifestRow, blob: str) -> bytes | None:
            if row.generated:
                return assets_json(storage_urls())
            try:
                source = (self.config.static_root / row.path).read_bytes()
            except OSError:
                return None
            if hashlib.sha256(source).hexdigest() == blob:
                return source
            return sent_bytes(row.path, source, storage_urls())

        return reproduce

    def record(
        self,
        kind: str,
        result: DeployResult,
        *,
        restores: int | None = None,
        message: str | None = None,
    ) -> History:
        """Open this run's history entry (under the lease)."""
        from mosaicsync.history import git_state

        history = self.history()
        message = message or self.options.message
        if kind == "rollback" and message is None:
            message = f"rollback to #{restores}"
        # A rollback or a promote publishes stored bytes, not the folder: no git state.
        git = None
        if self._git is not None:
            git, self._git = self._git.get(), None
        elif kind not in ("rollback", "promote"):
            git = git_state(self.config.project_dir)
        result.deploy_id, result.replaces = history.begin(
            kind=kind,
            who=user_at_host(),
            tool_version=__version__,
            message=message,
            git=git,
            restores=restores,
        )
        return history

    def preflight(self) -> Preflight:
        """The content checks of this project, with the secrets of this client and project."""
        if self._preflight is None:
            from mosaicsync.credentials import all_stored_keys

            secrets = Secrets(
                key_in_use=self.client.api_key_for_checks(),
                stored_keys=all_stored_keys(),
                database=lambda: self.client.database(self.project_id),
            )
            self._preflight = Preflight(
                self.config.project_dir / CACHE_DIR, secrets, allow_secret=self.options.allow_secret
            )
        return self._preflight

    def check(
        self,
        files: Sequence[LocalFile],
        skipped: Sequence[Skipped],
        *,
        only: Sequence[str] | None = None,
        stop: bool = True,
        strict: bool | None = None,
    ) -> list[Finding]:
        """The content checks on what is about to be published (`files`; with `only`, a watch's
        changed paths among them), reported as one `Checked` event; with `stop`, an error
        finding raises ChecksFailed. The one place deploy, status, watch, dev and check call."""
        assert self.rules is not None
        report = self.checked = self.preflight().check(files, skipped, self.rules, only=only)
        found = report.findings
        if self.options.strict if strict is None else strict:
            found = strictened(found, [BROKEN_REFERENCE])
        self.emit(Checked(found, report.files_read, report.ms))
        if stop:
            raise_for(found, outcome="this deploy was stopped before anything was sent")
        return found

    def check_all(self) -> CheckReport:
        """The checks alone, on what a deploy would publish and apply now; changes nothing.
        Broken references count as errors here: `check` is the gate a CI runs."""
        self.rules = project_rules(self.config, allow_secrets=self.options.allow_secrets)
        scanned = self.scanned = scan_project(self.config, rules=self.rules)
        found = self.check(scanned.files, scanned.skipped, stop=False, strict=True)
        migrations = 0
        if self._has_migrations():
            from mosaicsync.migrate import Migrator

            migrator = Migrator(self.client, self.project_id, self.config.migrations_dir)
            linted = migrator.lint()
            found += linted.findings
            migrations = linted.pending
        assert self.checked is not None
        return CheckReport(found, len(scanned.files), self.checked.files_read, migrations)

    def run(self) -> DeployResult:
        try:
            return self._run()
        finally:
            if self._git is not None:  # a run stopped before recording: no git left running
                with contextlib.suppress(Exception):
                    self._git.get()
                self._git = None

    def _read_git_state(self) -> None:
        """Start reading the folder's git state (a `git status` of the whole tree: ~40 ms at
        10k files) once a run expects to record a deploy, to overlap its checks and requests.
        (A run that then finds nothing to deploy waits for it before it returns.)"""
        if self._git is None and not self.options.dry_run:
            from mosaicsync.history import git_state

            folder = self.config.project_dir
            self._git = Ahead(lambda: git_state(folder))

    def _run(self) -> DeployResult:
        t0 = time.perf_counter()
        # With nothing to migrate, the deployed files' digest decides whether anything changed:
        # it is asked for (and the project looked up) while the folder is walked and checked.
        quick = not self.options.dry_run and not self._has_migrations()
        ahead = Ahead(lambda: self._look_up(quick))
        try:
            self.rules = project_rules(self.config, allow_secrets=self.options.allow_secrets)
            scanned = self.scanned = scan_project(self.config, rules=self.rules)
            skipped = [s.path for s in scanned.skipped]
            self.emit(
                Scanned(
                    len(scanned.files), scanned.hashed, scanned.bytes_hashed, skipped,
                    (time.perf_counter() - t0) * 1000,
                )
            )  # fmt: skip
            if scanned.hashed:
                # Content was read again, so a change is likely: the entry's git state (a `git
                # status` of the tree) is read on another core while the checks run, and the
                # database's secrets they search new content for are asked for meanwhile.
                self._read_git_state()
                self.preflight().secrets.prefetch()
            # Before anything is sent: a page holding the key is never published, not even in
            # part. (A dry run reports what would stop the deploy instead.)
            findings = self.check(scanned.files, scanned.skipped, stop=not self.options.dry_run)
            # Its verdicts are saved: not held through the uploads (11 MB at 100k files).
            self._preflight = None
        except Exception:
            ahead.get()  # the project's own error (not found, a bad key) comes first, as before
            raise
        project, deployed_digest = ahead.get()
        result = DeployResult(self.project_id, project.get("url", ""), dry_run=self.options.dry_run)
        result.skipped, result.findings = skipped, findings
        files = scanned.files
        # What this file set is routed to and its digest: remembered from the last run that
        # saw the same files (a no-op deploy, most often), computed otherwise.
        key = routes_key(files)
        remembered = remembered_digest(self._digest_memo, key)
        targets: dict[str, Target] | None = None
        if remembered is not None:
            mine, storage = remembered
        else:
            targets = routes(files)
            mine = local_digest((f.path, f.sha256, targets[f.path]) for f in files)
            storage = sorted(p for p, t in targets.items() if t == "storage")
            remember_digest(self._digest_memo, key, mine, storage)
        if not files and self.options.prune and not self.options.dry_run:
            # An empty root is most often a build that produced nothing: pruning the live site
            # down to it would take the whole site offline.
            _, deployed = deployed_digest or self.manifest.ensure()
            if deployed:
                raise ConfigError(
                    f"the static root {self.config.static_root} has no files to publish, so "
                    f"this deploy would delete all {deployed} deployed files",
                    hint="build the site first, or check [static] root and the ignore rules; "
                    "`--no-prune` deploys without deleting anything",
                )
        checked = False
        if deployed_digest is not None:
            # Nothing to migrate and nothing changed: done, without taking the lease.
            if deployed_digest[0] == mine:
                return self._noop(result, files, storage, t0)
            checked = True
            self._read_git_state()
        # Imported here: the migration runner and its SQL parser cost a no-op deploy ~50 ms.
        from mosaicsync.migrate import Migrator

        migrator = Migrator(
            self.client,
            self.project_id,
            self.config.migrations_dir,
            lock_timeout=self.options.lock_timeout,
            on_event=self.emit,
        )
        # One deploy of a project at a time: another one waits for this lease (or times out),
        # so two folders deployed at once never end up mixed on the site.
        with contextlib.nullcontext() if self.options.dry_run else migrator.lease() as fence:
            # Schema first, so new pages never meet an old schema; a failed migration stops here.
            self._migrate(result, migrator)
            if not checked and self.manifest.ensure()[0] == mine:
                return self._noop(result, files, storage, t0)
            self._read_git_state()

            result.live = self.manifest.live
            copy = self.manifest_copy
            # The history entry is opened while the manifest is read: a round trip less.
            recording = (
                None if self.options.dry_run else Ahead(lambda: self.record("deploy", result))
            )
            if targets is None:
                targets = routes(files)
            try:
                remote, rows = self.manifest.fetch(copy, fence=fence)
                plan = plan_deploy(files, remote, prune=self.options.prune, targets=targets)
            except BaseException as exc:
                if recording is not None:
                    self._abandon(recording, result, exc)
                raise
            self.emit(Planned(plan, noop=False))
            result.unchanged = len(plan.unchanged)
            result.storage = storage
            if recording is None:
                result.plan = plan_summary(plan)
                result.uploaded = len(plan.uploads)
                result.pruned = len(plan.prune)
                result.bytes = sum(u.file.size for u in plan.uploads)
                result.duration_ms = int((time.perf_counter() - t0) * 1000)
                return result

            history = recording.get()
            from mosaicsync.history import Packer

            packer = Packer() if history.enabled else None
            # The files whose bytes no blob held before are read beside the uploads: with the
            # rows before and after, the pack is then known without reading the manifest again.
            unpacked = Ahead(history.unpacked) if packer else None
            try:
                with ended_on_error(history, result.deploy_id):
                    published = self.publisher(history, packer).publish(plan, files, rows, targets)
                    # The copy is written while the history's requests are on the wire (the
                    # view is no longer changed: a later fetch replaces it, never edits it).
                    view = self.manifest.view
                    saving = Ahead(lambda: save_copy(copy, view)) if view is not None else None
                    result.uploaded, result.pruned = published.uploaded, published.pruned
                    result.bytes = published.bytes
                    result.duration_ms = int((time.perf_counter() - t0) * 1000)
                    try:
                        result.history = history.finish(
                            result.deploy_id,  # type: ignore[arg-type]
                            packer=packer,
                            reproduce=self.reproducer(),
                            uploaded=result.uploaded,
                            pruned=result.pruned,
                            bytes_sent=result.bytes,
                            files=len(files),
                            duration_ms=result.duration_ms,
                            settled=self._settled(rows, view, unpacked),
                        )
                    finally:
                        if saving is not None:
                            saving.get()
            finally:
                if unpacked is not None:
                    with contextlib.suppress(Exception):
                        unpacked.get()
                if packer:
                    packer.close()
        return result

    @staticmethod
    def _abandon(recording: Ahead[History], result: DeployResult, exc: BaseException) -> None:
        """A run stopped by `exc` while its history entry was being opened beside it: the entry,
        once open, is ended (the run's own error is the one raised, never the entry's)."""
        try:
            history = recording.get()
        except Exception:
            return
        end_stopped(history, result.deploy_id, exc)

    @staticmethod
    def _settled(
        before: dict[str, ManifestRow],
        after: dict[str, ManifestRow] | None,
        unpacked: Ahead[frozenset[str]] | None,
    ) -> Settled | None:
        """What the history needs to pack without reading the manifest; None (it reads it) when
        a part is missing or the read beside the uploads failed."""
        if after is None or unpacked is None:
            return None
        try:
            paths = unpacked.get()
        except Exception:
            return None
        from mosaicsync.history import Settled

        return Settled(before, after, paths)

    def _noop(
        self, result: DeployResult, files: Sequence[LocalFile], storage: list[str], t0: float
    ) -> DeployResult:
        result.live = self.manifest.live
        plan = Plan(uploads=[], prune=[], unchanged=list(files))
        self.emit(Planned(plan, noop=True))
        result.unchanged = len(files)
        result.storage = storage
        if self.options.dry_run:
            result.plan = plan_summary(plan)
        result.duration_ms = int((time.perf_counter() - t0) * 1000)
        return result

    def _look_up(self, quick: bool) -> tuple[dict[str, Any], tuple[str, int] | None]:
        """The project (once running) and, for a deploy with nothing to migrate, the deployed
        files' digest and count."""
        project = self.client.get_project(self.project_id)
        if project.get("status") != "running":
            project = self.client.wait_until_running(self.project_id)
        if not quick:
            return project, None
        # With a local copy, what vouches for it is read now too (see `Manifest.fetch`): an
        # edit then needs no request of its own for it once the lease is taken.
        return project, self.manifest.ensure(early=self.manifest_copy.is_file())

    def _has_migrations(self) -> bool:
        directory = self.config.migrations_dir
        return self.options.migrate and directory.is_dir() and any(directory.glob("*.sql"))

    def _migrate(self, result: DeployResult, migrator: Migrator) -> None:
        if not self._has_migrations():
            return
        up = migrator.up(
            dry_run=self.options.dry_run,
            allow_changed=self.options.allow_changed,
            allow_out_of_order=self.options.allow_out_of_order,
            allow_destructive=self.options.allow_destructive,
            confirm=self.confirm,
        )
        result.findings.extend(up.findings)
        result.migrations_applied = len(up.applied)
        result.migrations_pending = [m.filename for m in up.planned] if up.dry_run else []
