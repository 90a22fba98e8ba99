"""The adapter over watchfiles: registered when built, closed promptly, public API only."""

from __future__ import annotations

import ast
import queue
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import watchfiles
from watchfiles import Change

import mosaicsync
from mosaicsync.notify import Notifier

WAIT_S = 5.0  # generous: the machine is shared; a healthy notifier answers in tens of ms


def _notifier(paths: list[Path], out: queue.Queue, **overrides: Any) -> Notifier:
    options: dict[str, Any] = dict(
        recursive=True, force_polling=False, poll_delay_ms=20, step_ms=10, debounce_ms=1000
    )
    options.update(overrides)
    return Notifier([str(p) for p in paths], out, **options)


def _wait_for(out: queue.Queue, path: Path) -> set[tuple[Change, str]]:
    """Every change received until one names `path` (the batches are delivered in order)."""
    seen: set[tuple[Change, str]] = set()
    deadline = time.monotonic() + WAIT_S
    while not any(p == str(path) for _, p in seen):
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{path} was not reported within {WAIT_S} s; got {seen}")
        try:
            _, payload = out.get(timeout=left)
        except queue.Empty:
            continue
        assert not isinstance(payload, BaseException), payload
        seen |= payload
    return seen


def _notify_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "mosaicsync-watch"]


@pytest.fixture
def out() -> Iterator[queue.Queue]:
    yield queue.Queue()
    assert not _notify_threads(), "a notifier thread was left running"


def test_a_write_right_after_the_constructor_is_reported(tmp_path: Path, out: queue.Queue) -> None:
    notifier = _notifier([tmp_path], out)
    try:
        page = tmp_path / "page.html"
        page.write_text("hello")
        changes = _wait_for(out, page)
    finally:
        notifier.close()
    assert (Change.added, str(page)) in changes
    assert notifier.polling is False


def test_recursive_reports_a_nested_change(tmp_path: Path, out: queue.Queue) -> None:
    (tmp_path / "sub").mkdir()
    notifier = _notifier([tmp_path], out)
    try:
        nested = tmp_path / "sub" / "x.css"
        nested.write_text("a{}")
        _wait_for(out, nested)
    finally:
        notifier.close()


def test_non_recursive_does_not_report_a_nested_change(tmp_path: Path, out: queue.Queue) -> None:
    (tmp_path / "sub").mkdir()
    notifier = _notifier([tmp_path], out, recursive=False)
    try:
        (tmp_path / "sub" / "x.css").write_text("a{}")
        marker = tmp_path / "mosaic.toml"
        marker.write_text("")  # written after: reported after (or with) the nested one, if any
        changes = _wait_for(out, marker)
    finally:
        notifier.close()
    assert not [p for _, p in changes if p.startswith(str(tmp_path / "sub") + "/")], changes


def test_force_polling_reports_a_write(tmp_path: Path, out: queue.Queue) -> None:
    notifier = _notifier([tmp_path], out, force_polling=True)
    try:
        assert notifier.polling is True
        page = tmp_path / "page.html"
        page.write_text("hello")
        _wait_for(out, page)
    finally:
        notifier.close()


def test_close_is_prompt_and_joins_its_thread(tmp_path: Path, out: queue.Queue) -> None:
    notifier = _notifier([tmp_path], out, debounce_ms=10_000)
    assert notifier.thread.is_alive()
    (tmp_path / "busy").write_text("a batch in progress does not hold close() up")
    started = time.monotonic()
    notifier.close()
    assert time.monotonic() - started < 1.0
    assert not notifier.thread.is_alive()
    assert not _notify_threads()


def test_a_missing_path_raises_in_the_constructor(tmp_path: Path, out: queue.Queue) -> None:
    # Polling checks that its paths exist; the native notifier skips a failing path because
    # permission errors are ignored (an unreadable folder must not stop the whole watch).
    with pytest.raises(FileNotFoundError):
        _notifier([tmp_path / "missing"], out, force_polling=True).close()
    assert out.empty()


# -- the start-up handshake, with watchfiles' generator replaced -----------------------------------

REGISTERING_S = 0.05  # stands for registering a large tree; the GIL is free meanwhile


def test_the_constructor_returns_only_once_registered(
    monkeypatch: pytest.MonkeyPatch, out: queue.Queue
) -> None:
    registered = threading.Event()

    def slow_to_register(*paths: str, stop_event: threading.Event, **_: Any) -> Iterator:
        time.sleep(REGISTERING_S)
        registered.set()
        yield set()
        stop_event.wait()

    monkeypatch.setattr(watchfiles, "watch", slow_to_register)
    notifier = _notifier([Path("/site")], out)
    try:
        assert registered.is_set()
    finally:
        notifier.close()


def test_changes_from_the_first_batch_are_queued_before_the_constructor_returns(
    monkeypatch: pytest.MonkeyPatch, out: queue.Queue
) -> None:
    def first_batch_then_stop(*paths: str, stop_event: threading.Event, **_: Any) -> Iterator:
        time.sleep(REGISTERING_S)
        yield {(Change.added, "/site/early.html")}
        stop_event.wait()

    monkeypatch.setattr(watchfiles, "watch", first_batch_then_stop)
    notifier = _notifier([Path("/site")], out)
    try:
        _, changes = out.get_nowait()
        assert changes == {(Change.added, "/site/early.html")}
    finally:
        notifier.close()


def test_a_limit_error_while_registering_raises_in_the_constructor(
    monkeypatch: pytest.MonkeyPatch, out: queue.Queue
) -> None:
    def over_the_limit(*paths: str, **_: Any) -> Iterator:
        time.sleep(REGISTERING_S)
        raise OSError("OS file watch limit reached.")
        yield set()

    monkeypatch.setattr(watchfiles, "watch", over_the_limit)
    with pytest.raises(OSError, match="limit"):
        _notifier([Path("/site")], out)
    assert out.empty()


def test_an_error_after_start_up_is_queued(
    monkeypatch: pytest.MonkeyPatch, out: queue.Queue
) -> None:
    def ready_then_broken(*paths: str, **_: Any) -> Iterator:
        yield set()
        raise RuntimeError("error in underlying watcher")

    monkeypatch.setattr(watchfiles, "watch", ready_then_broken)
    notifier = _notifier([Path("/site")], out)
    try:
        _, payload = out.get(timeout=WAIT_S)
    finally:
        notifier.close()
    assert isinstance(payload, RuntimeError)


# -- the public API only ---------------------------------------------------------------------------


def _private_watchfiles_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for module in modules:
            parts = module.split(".")
            if parts[0] == "watchfiles" and any(part.startswith("_") for part in parts[1:]):
                found.append(module)
    return found


def test_the_private_import_check_catches_the_forms_it_must() -> None:
    assert _private_watchfiles_imports("from watchfiles._rust_notify import RustNotify")
    assert _private_watchfiles_imports("import watchfiles._rust_notify")
    assert _private_watchfiles_imports("from watchfiles import _rust_notify")
    assert not _private_watchfiles_imports("from watchfiles import Change, watch")


def test_no_module_imports_a_private_watchfiles_module() -> None:
    package = Path(mosaicsync.__file__).parent
    offenders = {
        str(path.relative_to(package)): found
        for path in sorted(package.rglob("*.py"))
        if (found := _private_watchfiles_imports(path.read_text(encoding="utf-8")))
    }
    assert not offenders
