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


def _emitted_classes() -> dict[str, list[str]]:
    """Class names constructed as the first argument of an emit/on_event call, with where."""
    import ast
    from pathlib import Path

    import mosaicsync

    found: dict[str, list[str]] = {}
    root = Path(mosaicsync.__file__).parent
    for path in root.rglob("*.py"):
        if "local" in path.relative_to(root).parts:
            continue  # the local platform's own log events are not the library's
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            arg = node.args[0]
            if name in {"emit", "_emit", "on_event", "_on_event"} and isinstance(arg, ast.Call):
                built = arg.func.id if isinstance(arg.func, ast.Name) else ast.unparse(arg.func)
                found.setdefault(built, []).append(f"{path.name}:{node.lineno}")
    return found


def test_every_emitted_event_is_a_member_of_the_one_union() -> None:
    import typing

    from mosaicsync import events

    members = {cls.__name__ for cls in typing.get_args(events.Event)}
    emitted = _emitted_classes()
    assert len(emitted) >= 15  # the walk found the library's events, not nothing
    strays = {name: where for name, where in emitted.items() if name not in members}
    assert not strays, f"events defined or built outside mosaicsync/events.py: {strays}"
    for name in emitted:
        assert getattr(events, name).__module__ == "mosaicsync.events"
