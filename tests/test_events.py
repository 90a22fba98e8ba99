"""Every migration event reaches the renderer, wherever the event classes are defined."""

from __future__ import annotations

import pytest

from mosaicsync import migrate
from mosaicsync.events import (
    LockWaiting,
    MigrationApplied,
    MigrationWarning,
    NotAtomic,
    PreflightWarning,
)
from mosaicsync.output import Output


@pytest.mark.parametrize(
    ("event", "shown"),
    [
        (
            MigrationApplied(3, "add_todos", 12, atomic=True),
            "Applied migration 3_add_todos in 12 ms",
        ),
        (MigrationApplied(4, "index", 5, atomic=False), "(not atomic)"),
        (LockWaiting("ci-runner", 4242, None), "locked by ci-runner (pid 4242)"),
        (NotAtomic(4, "index", 2), "runs outside a transaction (2 statements)"),
        (PreflightWarning("0002_b.sql", 3, 8, "syntax error"), "0002_b.sql:3:8: syntax error"),
        (MigrationWarning(4, "not idempotent"), "Warning: migration 4: not idempotent"),
    ],
)
def test_migration_events_are_rendered(
    event: object, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    Output(json_mode=False).deploy_event(event)
    assert shown in capsys.readouterr().err


def test_the_migrate_package_hands_out_the_same_classes() -> None:
    # Code that imports events from mosaicsync.migrate renders exactly as before.
    assert migrate.MigrationApplied is MigrationApplied
    assert migrate.LockWaiting is LockWaiting
