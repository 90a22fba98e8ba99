"""Replace a file all at once, so readers and crashes see the old content or the new, never half.

The temp file gets a unique name beside the target (a rename is atomic only within one
filesystem, and two writers must not share a temp file), gets its mode when it is created (a
secret is never readable by others, not even for a moment), and is removed again when anything
fails before the rename.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import secrets
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

_TEMP_TRIES = 100
_PIECE_ITEMS = 4096  # items encoded at a time by `utf8_pieces`


def utf8_pieces(items: Iterable[str], sep: str) -> Iterator[bytes]:
    """`sep.join(items)` encoded as UTF-8, a few thousand items at a time: a 100k-file index
    is then never held whole, nor as text and bytes at once (three copies of ~20 MB)."""
    it = iter(items)
    lead = ""
    while chunk := list(itertools.islice(it, _PIECE_ITEMS)):
        yield (lead + sep.join(chunk)).encode("utf-8")
        lead = sep


def write_atomic(
    path: Path,
    data: bytes | str | Iterable[bytes],
    *,
    mode: int | None = None,
    durable: bool = True,
) -> None:
    """Replace `path` (not what a symlink there points to) with `data`; text is written as UTF-8,
    an iterable of bytes piece by piece (an error it raises leaves `path` as it was).

    `mode` None keeps the mode of the file being replaced, and gives a new file what `open()`
    would (0666 less the umask). `durable` fsyncs before the rename, so a power cut cannot leave
    an empty file under the name; a cache that is only an optimisation may skip it.
    """
    path = Path(path)
    pieces: Iterable[bytes]
    if isinstance(data, str):
        pieces = (data.encode("utf-8"),)
    elif isinstance(data, (bytes, bytearray, memoryview)):
        pieces = (data,)
    else:
        pieces = data
    if mode is None:
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(path.stat().st_mode)
    fd, temp = _create_temp(path, 0o666 if mode is None else mode)
    try:
        with os.fdopen(fd, "wb") as f:
            if mode is not None and stat.S_IMODE(os.fstat(f.fileno()).st_mode) != mode:
                # The umask narrowed the mode it was created with; make it exactly `mode`.
                os.fchmod(f.fileno(), mode)
            for piece in pieces:
                f.write(piece)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.replace(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise


def _create_temp(path: Path, mode: int) -> tuple[int, Path]:
    """A new file `.NAME.RANDOM.tmp` beside `path`, opened for writing and created with `mode`."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
    for _ in range(_TEMP_TRIES):
        temp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(temp, flags, mode), temp
        except FileExistsError:
            continue
    raise FileExistsError(f"no unused temporary name beside {path}")
