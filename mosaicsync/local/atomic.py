"""Replace a file all at once: readers and crashes see the old content or the new, never half.

The temp file gets a unique name beside the target (a rename is atomic only within one
filesystem, and two writers must not share a temp file), is created 0600 so a secret is never
readable by others, and is removed again when anything fails before the rename.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


@contextmanager
def atomic_file(
    target: Path,
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
) -> Iterator[BinaryIO]:
    """Yield a binary file; when the block ends without error, it replaces `target`.

    `durable` fsyncs before the rename, so a power cut cannot leave an empty file under the
    name; bulk content that the next deploy rewrites anyway may skip it. `owner` (uid, gid) is
    applied before the rename, so the file never appears with the wrong owner.
    """
    # The temp name adds 14 bytes to the target's; past 241 bytes it would not fit in a name.
    prefix = f".{target.name}." if len(os.fsencode(target.name)) <= 241 else "."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=".tmp", dir=target.parent)
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        if owner is not None:
            os.chown(tmp, *owner)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_atomic(
    target: Path,
    data: bytes | str,
    *,
    mode: int = 0o644,
    owner: tuple[int, int] | None = None,
    durable: bool = True,
) -> None:
    """Replace `target` with `data` (text is written as UTF-8); see `atomic_file`."""
    with atomic_file(target, mode=mode, owner=owner, durable=durable) as f:
        f.write(data.encode() if isinstance(data, str) else data)
