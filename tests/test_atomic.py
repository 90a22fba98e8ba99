"""write_atomic: all or nothing, no temp file left behind, the mode set from creation."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from mosaicsync import atomic
from mosaicsync.atomic import utf8_pieces, write_atomic


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_writes_a_new_file_and_replaces_an_old_one(tmp_path: Path) -> None:
    path = tmp_path / "state.toml"
    write_atomic(path, "caf\u00e9\n")
    assert path.read_bytes() == "caf\u00e9\n".encode()
    write_atomic(path, b"\x00\xff")
    assert path.read_bytes() == b"\x00\xff"
    assert os.listdir(tmp_path) == ["state.toml"]


@pytest.mark.parametrize("failure", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failure_mid_write_keeps_the_old_file_and_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, failure: BaseException
) -> None:
    path = tmp_path / "state.toml"
    path.write_text("old")
    seen: list[list[str]] = []

    def failing_fsync(fd: int) -> None:
        seen.append(sorted(os.listdir(tmp_path)))  # the temp file exists, beside the target
        raise failure

    monkeypatch.setattr(atomic.os, "fsync", failing_fsync)
    with pytest.raises(type(failure)):
        write_atomic(path, "new")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["state.toml"]
    [[temp, target]] = seen
    assert target == "state.toml" and temp.startswith(".state.toml.") and temp.endswith(".tmp")


def test_a_failed_rename_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "taken"
    (target / "inside").mkdir(parents=True)  # a non-empty directory cannot be replaced
    with pytest.raises(OSError):
        write_atomic(target, "x")
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_the_mode_is_set_when_the_temp_file_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "credentials.toml"
    path.write_text("old")
    path.chmod(0o644)
    at_creation: list[int] = []
    at_first_write: list[int] = []
    real_open, real_fdopen = os.open, os.fdopen

    def spy_open(name, flags, mode=0o777):  # type: ignore[no-untyped-def]
        fd = real_open(name, flags, mode)
        at_creation.append(stat.S_IMODE(os.fstat(fd).st_mode))
        return fd

    def spy_fdopen(fd, *args, **kwargs):  # type: ignore[no-untyped-def]
        f = real_fdopen(fd, *args, **kwargs)
        real_write = f.write

        def write(data: bytes) -> int:
            at_first_write.append(stat.S_IMODE(os.fstat(fd).st_mode))
            return real_write(data)

        f.write = write
        return f

    monkeypatch.setattr(atomic.os, "open", spy_open)
    monkeypatch.setattr(atomic.os, "fdopen", spy_fdopen)
    write_atomic(path, "mk_secret", mode=0o600)
    assert at_creation and at_creation[0] & ~0o600 == 0  # never wider than 0600, not even once
    assert at_first_write == [0o600]
    assert mode(path) == 0o600


def test_an_explicit_mode_is_exact(tmp_path: Path) -> None:
    path = tmp_path / "f"
    write_atomic(path, "x", mode=0o640)
    assert mode(path) == 0o640
    write_atomic(path, "y", mode=0o600)
    assert mode(path) == 0o600
    write_atomic(path, "z", mode=0o666)  # wider than the usual umask allows
    assert mode(path) == 0o666


def test_without_a_mode_the_old_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "mosaic.toml"
    path.write_text("old")
    path.chmod(0o640)
    write_atomic(path, "new")
    assert mode(path) == 0o640


def test_without_a_mode_a_new_file_gets_what_open_gives(tmp_path: Path) -> None:
    reference = tmp_path / "by-open"
    reference.write_text("x")
    write_atomic(tmp_path / "new", "x")
    assert mode(tmp_path / "new") == mode(reference)


def test_a_symlink_is_replaced_not_followed(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_text("old")
    link = tmp_path / "link"
    link.symlink_to(real)
    write_atomic(link, "new")
    assert not link.is_symlink() and link.read_text() == "new"
    assert real.read_text() == "old"


def test_temp_names_are_unique(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "f"
    tokens = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(atomic.secrets, "token_hex", lambda n: next(tokens))
    (tmp_path / ".f.aaaa.tmp").write_text("another writer's temp file")
    write_atomic(path, "x")
    assert path.read_text() == "x"
    assert (tmp_path / ".f.aaaa.tmp").read_text() == "another writer's temp file"


@settings(max_examples=200, deadline=None)
@given(items=st.lists(st.text(), max_size=50), sep=st.sampled_from(["\0", "\n", "\t"]))
@example(items=[f"é{i}" for i in range(9000)], sep="\0")  # across two piece boundaries
@example(items=["", ""] * 4096, sep="\n")
def test_pieces_join_to_the_whole_text(items: list[str], sep: str) -> None:
    encodable = [item.encode("utf-8", "replace").decode("utf-8") for item in items]
    assert b"".join(utf8_pieces(encodable, sep)) == sep.join(encodable).encode("utf-8")


def test_pieces_are_written_in_order_and_a_failing_one_keeps_the_old_file(
    tmp_path: Path,
) -> None:
    path = tmp_path / "index"
    write_atomic(path, [b"head\n", b"a", b"b"])
    assert path.read_bytes() == b"head\nab"

    def failing() -> Iterator[bytes]:
        yield b"new"
        raise UnicodeEncodeError("utf-8", "\udc80", 0, 1, "surrogates not allowed")

    with pytest.raises(UnicodeEncodeError):
        write_atomic(path, failing())
    assert path.read_bytes() == b"head\nab"
    assert os.listdir(tmp_path) == ["index"]
