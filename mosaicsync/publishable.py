"""Which paths the platform can store: the one check that every command that uploads runs.

The scanner calls it on every file it finds, for a full walk (`deploy`, `status`) and for the
paths a watcher saw change (`watch`, `dev`), so a name is refused before anything is sent, and
refused alike everywhere.
"""

from __future__ import annotations

import re

from mosaicsync.contract import MAX_PATH_LENGTH, MAX_SEGMENT_BYTES
from mosaicsync.errors import ScanError

# mosaicsync publishes this file itself: the storage URL of every file that does not go to the
# site, for JavaScript to read. A user's file of that name would overwrite it (or be overwritten).
ASSETS_FILE = "mosaic-assets.json"

# No platform path may hold a control character or a backslash (it reads as a separator).
_UNSTORABLE = re.compile(r"[\x00-\x1f\x7f\\]")
_FIX = "rename it, or add it to .mosaicignore"

# Everything `problem` decides by, for the scanner's record of the paths it found publishable
# (see `scan.vetting`): raise the last number whenever `problem` decides differently.
RULES = f"{ASSETS_FILE} {MAX_PATH_LENGTH} {MAX_SEGMENT_BYTES} {_UNSTORABLE.pattern} 1"


def problem(rel: str) -> str | None:
    """Why the file at `rel` (POSIX, relative to the static root) cannot be published, or None."""
    if rel == ASSETS_FILE:
        return (
            f"{ASSETS_FILE}: this name is reserved: mosaicsync publishes it with the storage "
            "URLs of files that do not go to the site"
        )
    if len(rel) > MAX_PATH_LENGTH:
        return (
            f"{rel!a} is longer than {MAX_PATH_LENGTH} characters, the platform's limit, so it "
            "cannot be published"
        )
    bad = _UNSTORABLE.search(rel)
    if bad is not None:
        what = "a backslash" if bad.group() == "\\" else "a control character"
        return f"{rel!a} contains {what}, so it cannot be published"
    if not rel.isascii():
        try:
            rel.encode("utf-8")
        except UnicodeEncodeError:
            return f"{rel!a} is not a valid UTF-8 file name, so it cannot be published"
    # At most 4 bytes a character: a short path needs no counting.
    if len(rel) > MAX_SEGMENT_BYTES // 4:
        for segment in rel.split("/"):
            size = len(segment.encode("utf-8"))
            if size > MAX_SEGMENT_BYTES:
                return (
                    f"{rel!a}: the name {segment!a} is {size} bytes in UTF-8 (as published, "
                    f"in NFC), over the platform's {MAX_SEGMENT_BYTES}-byte limit for one file "
                    "or folder name, so it cannot be published"
                )
    return None


def check(rel: str) -> None:
    """Raise ScanError naming the file and the fix when `rel` cannot be published."""
    reason = problem(rel)
    if reason is not None:
        raise ScanError(reason, hint=_FIX)
