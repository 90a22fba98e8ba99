"""`rollback`: make the site byte-identical to a recorded deploy, from the bytes its history kept.

Everything a restore needs is fetched and verified before anything changes (so a pack deleted by
hand stops it with the files named and the site untouched); then it publishes through the
deploy's own upload path (`Publisher.restore`), under the deploy's lease, with each file's row
written once it arrived: a stopped rollback finishes when run again. The schema is never rolled
back: migrations applied after the restored deploy are named instead.
"""

from __future__ import annotations

import contextlib
import hashlib
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mosaicsync.ahead import Ahead
from mosaicsync.errors import ConfigError, HistoryError, NotFoundError
from mosaicsync.findings import raise_for
from mosaicsync.history import PREFIX, Blob, Entry, History, live_entry
from mosaicsync.manifest import ManifestRow, save_copy
from mosaicsync.upload import Stored

if TYPE_CHECKING:
    from mosaicsync.deploy import Deployer
    from mosaicsync.migrate import Migrator

# Ranges of one pack closer than this are read in one request.
MERGE_GAP = 64 * 1024


@dataclass(frozen=True)
class RestorePlan:
    """What a restore sends and deletes to turn the `current` manifest into the `target` one."""

    puts: list[ManifestRow]
    prune: list[ManifestRow]
    unchanged: int


def _same(a: ManifestRow | None, b: ManifestRow) -> bool:
    return (
        a is not None
        and a.target == b.target
        and a.sha256 == b.sha256
        and a.size == b.size
        and a.uploaded_sha256 == b.uploaded_sha256
        and a.generated == b.generated
    )


def plan_restore(
    target: Mapping[str, ManifestRow], current: Mapping[str, ManifestRow]
) -> RestorePlan:
    """Pure: the files to put back (by path) and the deployed ones to delete (gone from the
    target, or left in the other target when the file moved between site and storage)."""
    puts = [row for path, row in sorted(target.items()) if not _same(current.get(path), row)]
    prune = [
        row
        for path, row in sorted(current.items())
        if path not in target or target[path].target != row.target
    ]
    return RestorePlan(puts, prune, len(target) - len(puts))


def blob_of(row: ManifestRow) -> str:
    """The sha256 of the bytes the row's file was published as."""
    return row.uploaded_sha256 or row.sha256


def merged_ranges(blobs: Sequence[Blob], gap: int = MERGE_GAP) -> list[tuple[int, int]]:
    """Pure: [start, end) byte ranges covering `blobs` (of one pack), neighbours merged."""
    spans = sorted((b.offset, b.offset + b.size) for b in blobs)
    out: list[tuple[int, int]] = []
    for start, end in spans:
        if out and start - out[-1][1] <= gap:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


@dataclass
class RollbackResult:
    project_id: str
    url: str
    target: Entry
    dry_run: bool = False
    deploy_id: int | None = None
    replaces: Entry | None = None
    restored: int = 0
    pruned: int = 0
    unchanged: int = 0
    bytes: int = 0
    fetched_bytes: int = 0
    duration_ms: int = 0
    plan: RestorePlan | None = None
    migrations_after: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        plan = self.plan
        return {
            "project_id": self.project_id,
            "url": self.url,
            "rollback_to": self.target.to_json(),
            "dry_run": self.dry_run,
            "deploy_id": self.deploy_id,
            "replaces": self.replaces.to_json() if self.replaces else None,
            "restored": self.restored,
            "pruned": self.pruned,
            "unchanged": self.unchanged,
            "bytes": self.bytes,
            "fetched_bytes": self.fetched_bytes,
            "duration_ms": self.duration_ms,
            "plan": None
            if plan is None
            else {
                "restore": [
                    {"path": r.path, "target": r.target, "size": r.size} for r in plan.puts
                ],
                "prune": [{"path": r.path, "target": r.target} for r in plan.prune],
                "unchanged": plan.unchanged,
            },
            "schema_rolled_back": False,
            "migrations_after": self.migrations_after,
        }


def choose_target(entries: Sequence[Entry], wanted: int | None) -> Entry:
    """The deploy to restore: `wanted`, else the newest restorable one before the live one.
    Raises HistoryError listing what can be restored."""
    restorable = [e for e in entries if e.restorable]
    ids = ", ".join(f"#{e.id}" for e in restorable) or "none"
    if wanted is not None:
        for e in entries:
            if e.id == wanted:
                if e.restorable:
                    return e
                why = (
                    "its history was not kept (a deploy before history, with [history] keep = "
                    "0, one that stopped before it finished, or one whose storage object was "
                    "changed or deleted by hand before a later deploy replaced it)"
                )
                raise HistoryError(
                    f"deploy #{wanted} cannot be restored: {why}; restorable: {ids}",
                    hint="`mosaicsync deploys` lists the retained deploys",
                )
        raise HistoryError(
            f"no deploy #{wanted} in this project's history (unknown, or pruned past "
            f"[history] keep); restorable: {ids}",
            hint="`mosaicsync deploys` lists the retained deploys",
        )
    live = live_entry(entries)
    before = [e for e in restorable if e.state == "complete" and (live is None or e.id < live.id)]
    if not before:
        raise HistoryError(
            "there is no deploy before the live one to roll back to"
            + (f" (live: {live.describe()})" if live else "")
            + f"; restorable: {ids}",
            hint="name one with `mosaicsync rollback ID`; `mosaicsync deploys` lists them",
        )
    return max(before, key=lambda e: e.id)


class Restorer:
    """A rollback of one project, run with the `Deployer` whose lease and upload path it uses."""

    def __init__(self, deployer: Deployer) -> None:
        self.deployer = deployer
        self.client = deployer.client
        self.project_id = deployer.project_id

    def run(
        self,
        wanted: int | None,
        *,
        dry_run: bool = False,
        source: History | None = None,
        message: str | None = None,
        before_publish: Callable[[Migrator], None] | None = None,
    ) -> RollbackResult:
        """Restore deploy `wanted` (None: the one before the live one) of this project's history,
        or, given `source` (another project's history: a preview's), of that one: a promote,
        recorded with `message`. `before_publish` runs once every byte is fetched, verified and
        searched for secrets, under the same lease (a promote's migrations): a restore that
        cannot run changes nothing, not even the schema."""
        t0 = time.perf_counter()
        d = self.deployer
        project = self.client.get_project(self.project_id)
        if project.get("status") != "running":
            project = self.client.wait_until_running(self.project_id)
        history = d.history()
        if source is None and not history.enabled:
            raise ConfigError(
                "deploy history is off ([history] keep = 0 in mosaic.toml), so there is "
                "nothing to roll back to",
                hint="set [history] keep = 20 (the default); deploys from then on can be restored",
            )
        source = source or history
        target = choose_target(source.entries(), wanted)
        result = RollbackResult(self.project_id, project.get("url", ""), target, dry_run=dry_run)
        from mosaicsync.migrate import Migrator

        migrator = Migrator(
            self.client,
            self.project_id,
            d.config.migrations_dir,
            lock_timeout=d.options.lock_timeout,
            on_event=d.emit,
        )
        with (
            contextlib.nullcontext() if dry_run else migrator.lease(),
            tempfile.TemporaryDirectory(prefix="mosaicsync-restore-") as tmp,
        ):
            # The live file set comes from the local copy (when the platform's digest agrees),
            # as a deploy reads it. This project's target is read as its difference from that
            # set (a few rows after a few changes); another project's, meanwhile and whole.
            asked = None if source is history else Ahead(lambda: source.files(target.id))
            _, current = d.manifest.fetch(d.manifest_copy)
            rows = asked.get() if asked else history.files(target.id, live=current)
            plan = result.plan = plan_restore(rows, current)
            result.unchanged = plan.unchanged
            stored = self._fetch(source, plan, Path(tmp), result)
            # The deploy's secret search holds for restored bytes too: a key may have been
            # rotated into an old page, or a preview may hold what production must not serve.
            raise_for(
                self._secrets(stored, Path(tmp)),
                outcome="nothing was restored",
                hint="fix it with a new deploy; a reviewed file passes with --allow-secret PATH",
            )
            if before_publish is not None:
                before_publish(migrator)
            if source is history:
                result.migrations_after = history.migrations_since(target)
            live = history.live()
            already = (
                source is history
                and live is not None
                and (
                    live.id == target.id or (live.kind == "rollback" and live.restores == target.id)
                )
            )
            if dry_run or (already and not (plan.puts or plan.prune)):
                # A rollback run again after it finished: already live, so no new entry.
                result.restored = len(plan.puts)
                result.pruned = len(plan.prune)
                result.bytes = sum(r.size for r in plan.puts)
                result.duration_ms = int((time.perf_counter() - t0) * 1000)
                return result
            from mosaicsync.deploy import DeployResult, ended_on_error

            recorded = DeployResult(self.project_id, result.url)
            if source is history:
                history = d.record("rollback", recorded, restores=target.id)
            else:
                history = d.record("promote", recorded, message=message)
            # What this restore fetched is what the history keeps for it here (a promote's
            # bytes come from another project's storage).
            fetched = {blob_of(p.row): p.data for p in stored if p.data is not None}
            result.deploy_id, result.replaces = recorded.deploy_id, recorded.replaces
            with ended_on_error(history, result.deploy_id):
                published = d.publisher(history).restore(stored, plan.prune, current)
                if (view := d.manifest.view) is not None:
                    save_copy(d.manifest_copy, view)  # the next deploy plans against it
                result.restored, result.pruned = published.uploaded, published.pruned
                result.bytes = published.bytes
                result.duration_ms = int((time.perf_counter() - t0) * 1000)
                history.finish(
                    result.deploy_id,  # type: ignore[arg-type]
                    packer=None,
                    reproduce=lambda row, blob: fetched.get(blob),
                    uploaded=result.restored,
                    pruned=result.pruned,
                    bytes_sent=result.bytes,
                    files=sum(1 for r in rows.values() if not r.generated),
                    duration_ms=result.duration_ms,
                )
        return result

    def _fetch(
        self, history: History, plan: RestorePlan, tmp: Path, result: RollbackResult
    ) -> list[Stored]:
        """Every byte the restore sends, read back and verified before anything changes."""
        wanted = {blob_of(r) for r in plan.puts}
        blobs = history.blobs(wanted)
        listing = {
            o["filename"]: o
            for o in history.client.list_storage(history.project_id).get("files", [])
            if str(o.get("filename", "")).startswith(PREFIX)
        }
        missing: list[str] = []
        for row in plan.puts:
            blob = blobs.get(blob_of(row))
            pack = listing.get(blob.pack) if blob else None
            if blob is None or pack is None or int(pack.get("size", -1)) < blob.offset + blob.size:
                missing.append(row.path)
        if missing:
            self._missing(missing)
        data: dict[str, bytes] = {}
        by_pack: dict[str, list[Blob]] = {}
        for row in plan.puts:
            if row.target == "site":
                blob = blobs[blob_of(row)]
                by_pack.setdefault(blob.pack, []).append(blob)
        for name, members in sorted(by_pack.items()):
            spans = merged_ranges(members)
            try:
                chunks = history.client.read_ranges(listing[name]["url"], spans)
            except NotFoundError:
                self._missing([r.path for r in plan.puts if r.target == "site"])
            for (start, end), chunk in zip(spans, chunks, strict=True):
                result.fetched_bytes += len(chunk)
                for b in members:
                    if start <= b.offset and b.offset + b.size <= end:
                        data[b.sha256] = chunk[b.offset - start : b.offset - start + b.size]
        out: list[Stored] = []
        bad: list[str] = []
        for i, row in enumerate(plan.puts):
            sha = blob_of(row)
            if row.target == "site":
                got = data.get(sha)
                if got is None or hashlib.sha256(got).hexdigest() != sha:
                    bad.append(row.path)
                    continue
                out.append(Stored(row, data=got))
                continue
            blob = blobs[sha]
            dest = tmp / f"object-{i}"
            try:
                size, digest = history.client.download_object(listing[blob.pack]["url"], dest)
            except NotFoundError:
                size, digest = -1, ""
            result.fetched_bytes += max(size, 0)
            if digest != sha:
                bad.append(row.path)
                continue
            out.append(Stored(row, path=dest))
        if bad:
            raise HistoryError(
                f"the stored copies of {_names(bad)} do not match what was deployed (changed "
                "in storage by hand?); nothing was changed",
                hint="restore another deploy (`mosaicsync deploys`), or deploy the folder",
            )
        return out

    def _secrets(self, stored: Sequence[Stored], tmp: Path) -> list[Any]:
        """The secret findings of what a restore would publish (preflight.secrets_in)."""
        preflight = self.deployer.preflight()
        found: list[Any] = []
        for i, p in enumerate(stored):
            path = p.path
            if path is None:
                path = tmp / f"check-{i}"
                path.write_bytes(p.data or b"")
            found += preflight.secrets_in(path, p.row.path)
        return found

    def _missing(self, paths: Sequence[str]) -> None:
        raise HistoryError(
            f"the bytes of {_names(paths)} are no longer in this project's storage (a history "
            f"pack under {PREFIX} was deleted?); nothing was changed",
            hint="restore another deploy (`mosaicsync deploys`), or deploy the folder",
        )


def _names(paths: Sequence[str], shown: int = 10) -> str:
    head = ", ".join(paths[:shown])
    more = f" and {len(paths) - shown} more" if len(paths) > shown else ""
    return f"{len(paths)} file{'s' if len(paths) != 1 else ''} ({head}{more})"
