"""Rendering for the terminal: human text or `--json`, progress on a TTY only, secrets redacted.

stdout carries the result (one JSON document under `--json`); stderr carries progress and logs.
"""

from __future__ import annotations

import functools
import json
import os
import re
import sys
import time
from typing import Any

from mosaicsync import events as ev
from mosaicsync.errors import MosaicError
from mosaicsync.events import RequestEvent

SCHEMA = "mosaicsync/1"


# What a terminal acts on instead of showing: C0 controls (ESC starts a sequence that sets the
# title, clears the screen or writes the clipboard; CR and LF fake lines), DEL, C1 controls
# (U+009B is a one-byte CSI) and the Unicode bidi controls that reorder what is shown.
_BIDI = r"\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069"


@functools.cache
def _control(lines: bool) -> re.Pattern[str]:
    """Compiled on first use: a --json run never shows text, and every command pays its import."""
    if lines:
        return re.compile(rf"[\x00-\x09\x0b-\x1f\x7f-\x9f{_BIDI}]")
    return re.compile(rf"[\x00-\x1f\x7f-\x9f{_BIDI}]")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, lines: bool = False) -> str:
    """`text` with every control character shown as an escape (`\\x1b`, `\\u202e`).

    With `lines`, newlines are kept: for a message whose lines are ours, after each value from
    the platform in it went through `printable` alone (so a newline in a name fakes no row).
    Human output only: `--json` prints values exactly.
    """
    return _control(lines).sub(_visible, text)


def human_size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


def human_age(seconds: float) -> str:
    """An age as people say it: the largest whole unit, down to seconds."""
    s = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if s >= size:
            return f"{s // size} {unit}"
    return f"{s} s"


class Output:
    """One per command run; `secrets` are masked in everything it prints."""

    def __init__(self, *, json_mode: bool, verbose: bool = False, secrets: tuple[str, ...] = ()):
        self.json_mode = json_mode
        self.verbose = verbose
        self.secrets = tuple(s for s in secrets if s)
        self.progress = sys.stderr.isatty() and not json_mode
        self._last_progress = 0.0
        self._progress_shown = False

    def redact(self, text: str) -> str:
        from mosaicsync.credentials import redact

        return redact(text, *self.secrets)

    def info(self, message: str) -> None:
        """A log line for people: stderr, so stdout stays a clean result."""
        if not self.json_mode:
            self._clear_progress()
            print(self.shown(message), file=sys.stderr)

    def shown(self, text: str) -> str:
        """Human text as printed: secrets masked, control characters escaped (newlines kept)."""
        return printable(self.redact(text), lines=True)

    def text(self, human: str) -> None:
        """A human result that has no JSON form here (the caller prints JSON itself)."""
        self._clear_progress()
        print(self.shown(human))

    def result(self, data: dict[str, Any], human: str) -> None:
        self._clear_progress()
        if self.json_mode:
            # The envelope's keys must never be shadowed by a result's own (a project's status).
            assert not {"schema", "status"} & data.keys(), "nest the result under its own key"
            print(self.redact(json.dumps({"schema": SCHEMA, "status": "ok", **data})))
        else:
            print(self.shown(human))

    def error(self, exc: MosaicError) -> None:
        self._clear_progress()
        if self.json_mode:
            body = {"schema": SCHEMA, "status": "error", "error": exc.to_json()}
            print(self.redact(json.dumps(body)))
        else:
            print(self.shown(f"Error: {exc.message}"), file=sys.stderr)
            if exc.hint:
                print(self.shown(f"Hint: {exc.hint}"), file=sys.stderr)

    def findings(self, findings: list[Any]) -> None:
        """Each finding as `file:line:col: severity: message`, as compilers print, then its hint
        (once per distinct hint); logs on stderr, so stdout stays the result."""
        hints: set[str] = set()
        for finding in findings:
            self.info(finding.line_text())
            if finding.hint not in hints:
                hints.add(finding.hint)
                self.info(f"  hint: {finding.hint}")

    def request(self, event: RequestEvent) -> None:
        if self.verbose:
            status = event.status if event.status is not None else event.error
            retry = f" (attempt {event.attempt})" if event.attempt > 1 else ""
            self._clear_progress()
            print(
                self.shown(f"  {event.method} {event.path} -> {status} {event.ms:.0f} ms{retry}"),
                file=sys.stderr,
            )

    def deploy_event(self, event: ev.Event) -> None:
        if isinstance(event, ev.Scanned):
            cached = event.files - event.hashed
            self.info(
                f"Scanned {event.files} files in {event.ms:.0f} ms "
                f"({event.hashed} hashed, {cached} from cache)"
            )
            if event.skipped:
                shown = ", ".join(event.skipped[:8])
                more = f" and {len(event.skipped) - 8} more" if len(event.skipped) > 8 else ""
                self.info(f"Skipped (never uploaded): {shown}{more}")
        elif isinstance(event, ev.Checked):
            self.findings(event.findings)
        elif isinstance(event, ev.Planned):
            if event.noop:
                self.info("Nothing changed since the last deploy.")
            else:
                plan = event.plan
                self.info(
                    f"Plan: upload {len(plan.uploads)}, prune {len(plan.prune)}, "
                    f"unchanged {len(plan.unchanged)}"
                )
        elif isinstance(event, ev.MigrationEvent):
            self._migration_event(event)
        elif isinstance(event, ev.Transferred):
            if self.verbose and not self.json_mode:
                self.info(
                    f"  {event.action} {event.path} ({event.target}, {human_size(event.size)})"
                )
            elif self.progress and event.total:
                now = time.monotonic()
                if now - self._last_progress > 0.1 or event.done == event.total:
                    self._last_progress = now
                    self._progress_shown = True
                    sys.stderr.write(f"\r  {event.action} {event.done}/{event.total}\x1b[K")
                    sys.stderr.flush()

    def event_line(self, event: str, data: dict[str, Any], human: str | None, *, log: bool) -> None:
        """One JSON object per line under `--json`; else `human` on stdout, or stderr if `log`."""
        self._clear_progress()
        if self.json_mode:
            print(self.redact(json.dumps({"schema": SCHEMA, "event": event, **data})), flush=True)
        elif human is not None:
            print(self.shown(human), file=sys.stderr if log else sys.stdout, flush=True)

    def watch_event(self, event: ev.Event) -> None:
        """The watch's events: one line per sync; retries, warnings and reloads as logs."""
        from datetime import UTC, datetime

        def clock(at: float | None = None) -> str:
            return time.strftime("%H:%M:%S", time.localtime(at))

        if isinstance(event, ev.Synced):
            shown = ", ".join(event.paths[:3]) + (
                f" and {len(event.paths) - 3} more" if len(event.paths) > 3 else ""
            )
            iso = datetime.fromtimestamp(event.at, UTC).isoformat(timespec="milliseconds")
            self.event_line(
                "sync",
                {
                    "time": iso.replace("+00:00", "Z"),
                    "files": event.files,
                    "uploaded": event.uploaded,
                    "pruned": event.pruned,
                    "bytes": event.bytes,
                    "ms": round(event.ms, 1),
                    "paths": event.paths,
                },
                f"{clock(event.at)}  synced {event.files} file{'s' if event.files != 1 else ''} "
                f"({human_size(event.bytes)}) in {event.ms:.0f} ms: {shown}",
                log=False,
            )
        elif isinstance(event, ev.Deployed):
            r = event.result
            self.event_line(
                "deployed",
                r.to_json(),
                f"{clock()}  deployed {r.project_id}: uploaded {r.uploaded} "
                f"({human_size(r.bytes)}), unchanged {r.unchanged}, pruned {r.pruned} "
                f"in {r.duration_ms} ms",
                log=False,
            )
        elif isinstance(event, ev.Watching):
            self.event_line(
                "watching",
                {
                    "project_id": event.project_id,
                    "url": event.url,
                    "paths": event.paths,
                    "polling": event.polling,
                },
                f"Watching {', '.join(_shown_path(p) for p in event.paths)}"
                f"{' by polling' if event.polling else ''}; Ctrl-C to stop.",
                log=True,
            )
        elif isinstance(event, ev.SyncFailed):
            self.event_line(
                "retry",
                {
                    "error": event.message,
                    "pending": event.pending,
                    "retry_in": round(event.retry_in, 3),
                    "attempt": event.attempt,
                },
                f"{clock()}  platform unreachable ({event.message}); {event.pending} change"
                f"{'s' if event.pending != 1 else ''} pending; retry in {event.retry_in:.1f} s",
                log=True,
            )
        elif isinstance(event, ev.MigrationsApplied):
            names = ", ".join(f"{v} ({n}) in {ms} ms" for v, n, ms in event.applied)
            self.event_line(
                "migrations",
                {"applied": [{"version": v, "name": n, "ms": ms} for v, n, ms in event.applied]},
                f"{clock()}  applied migration{'s' if len(event.applied) > 1 else ''} {names}",
                log=False,
            )
        elif isinstance(event, ev.WatchWarning):
            hint = f"\nHint: {event.hint}" if event.hint else ""
            self.event_line(
                "warning",
                {"kind": event.kind, "message": event.message, "hint": event.hint},
                f"{clock()}  Warning: {event.message}{hint}",
                log=True,
            )
        elif isinstance(event, ev.Checked):
            for finding in event.findings:
                hint = f"\nHint: {finding.hint}"
                self.event_line(
                    "finding",
                    finding.to_json(),
                    f"{clock()}  {finding.severity.capitalize()}: {finding.line_text()}{hint}",
                    log=True,
                )
        elif isinstance(event, ev.ConfigReloaded):
            self.event_line(
                "config",
                {"message": event.message, "restart_required": event.restart_required},
                f"{clock()}  {event.message}",
                log=True,
            )
        elif isinstance(event, ev.LockWaiting):
            self.event_line(
                "waiting",
                {"host": event.host, "pid": event.pid, "until": event.until},
                f"{clock()}  waiting for the deploy lease held by {event.host} (pid {event.pid}): "
                "a deploy or watch of this project is running",
                log=True,
            )
        elif isinstance(event, ev.DevStarted):
            self.event_line(
                "dev",
                {
                    "project_id": event.project_id,
                    "url": event.url,
                    "url_by_path": event.url_by_path,
                    "api_url": event.api_url,
                    "data_dir": str(event.data_dir),
                },
                f"Local platform {event.base_url} (data in {event.data_dir})\n"
                f"Project {event.project_id} (recorded under [targets.local] in "
                f"{event.config_file})\n"
                f"Open {event.url}  (or {event.url_by_path})",
                log=False,
            )
        elif isinstance(event, ev.Seeded):
            names = ", ".join(f"{printable(n)} ({ms} ms)" for n, ms in event.applied)
            self.event_line(
                "seeded",
                {
                    "applied": [{"name": n, "ms": ms} for n, ms in event.applied],
                    "warnings": event.warnings,
                },
                f"{clock()}  seeded {names}" if names else f"{clock()}  seed data already applied",
                log=False,
            )
            for warning in event.warnings:
                self.info(f"Warning: {printable(warning)}")
        elif isinstance(event, ev.Stopped):
            lost = f" {event.pending} change(s) not synced." if event.pending else ""
            self.event_line("stopped", {"pending": event.pending}, "Stopped." + lost, log=True)
        else:
            self.deploy_event(event)

    def _migration_event(self, event: ev.MigrationEvent) -> None:
        if isinstance(event, ev.MigrationApplied):
            atomic = "" if event.atomic else " (not atomic)"
            self.info(f"Applied migration {event.version}_{event.name} in {event.ms} ms{atomic}")
        elif isinstance(event, ev.LockWaiting):
            self.info(
                f"Deploys of this project are locked by {event.host} (pid {event.pid}): a "
                "deploy, watch or migration is running there; waiting..."
            )
        elif isinstance(event, ev.NotAtomic):
            self.info(
                f"Migration {event.version}_{event.name} runs outside a transaction "
                f"({event.statements} statements): it is not atomic"
            )
        elif isinstance(event, ev.PreflightWarning):
            where = f"{event.filename}:{event.line}:{event.column}"
            self.info(f"Warning: {where}: {event.message}")
        elif isinstance(event, ev.MigrationWarning):
            self.info(f"Warning: migration {event.version}: {event.message}")

    def _clear_progress(self) -> None:
        if self._progress_shown:
            sys.stderr.write("\r\x1b[K")
            sys.stderr.flush()
            self._progress_shown = False


def _shown_path(path: str) -> str:
    """A path as the user would type it from here: relative when that is shorter."""
    try:
        relative = os.path.relpath(path)
    except ValueError:  # another drive on Windows
        return path
    return relative if len(relative) < len(path) else path


def render_table(rows: list[dict[str, Any]]) -> str:
    """Rows as an aligned text table, like psql's, for people at a terminal."""
    if not rows:
        return "(0 rows)"
    keys = list(rows[0])
    columns = [printable(str(c)) for c in keys]
    cells = [[_cell(row.get(c)) for c in keys] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = [" | ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True))]
    lines.append("-+-".join("-" * w for w in widths))
    lines += [" | ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)) for r in cells]
    lines.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(lines)


def _cell(value: Any) -> str:
    """One value on one line: a newline or an escape sequence in it would fake rows or worse."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return printable(json.dumps(value, ensure_ascii=False))
    return printable(str(value))
