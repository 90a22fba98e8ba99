"""Validation of the file names clients send, shared by site files and storage objects."""

from __future__ import annotations

import posixpath
import unicodedata

from mosaicsync.contract import MAX_PATH_LENGTH, MAX_SEGMENT_BYTES
from mosaicsync.local.errors import ApiError
from mosaicsync.local.settings import SITE_CONTENT_TYPES


def clean_path(filename: object, *, field: str = "filename") -> str:
    """Return a safe relative POSIX path, or raise 400 saying what is wrong with it.

    Refuses what could escape the project's directory or mean two things: `..`, `.`, empty
    segments, absolute paths, backslashes, NUL and other control characters; and a name
    between "/" over MAX_SEGMENT_BYTES, which no filesystem here can hold.
    """
    if not isinstance(filename, str) or not filename:
        raise ApiError(400, f'"{field}" must be a non-empty string such as "index.html"')
    if len(filename) > MAX_PATH_LENGTH:
        raise ApiError(400, f'"{field}" is longer than {MAX_PATH_LENGTH} characters')
    if "\\" in filename:
        raise ApiError(400, f'"{field}" {filename!r} contains a backslash: use "/" between folders')
    if any(ord(c) < 32 or ord(c) == 127 for c in filename):
        raise ApiError(400, f'"{field}" {filename!r} contains a NUL or control character')
    if filename.startswith("/"):
        raise ApiError(400, f'"{field}" {filename!r} is absolute: give a path relative to the site')
    segments = filename.split("/")
    if any(s in ("", ".", "..") for s in segments):
        raise ApiError(
            400, f'"{field}" {filename!r} has an empty, "." or ".." segment: give a plain path'
        )
    path = unicodedata.normalize("NFC", filename)
    for segment in path.split("/"):
        size = len(segment.encode("utf-8", "surrogatepass"))
        if size > MAX_SEGMENT_BYTES:
            shown = segment if len(segment) <= 40 else segment[:40] + "..."
            raise ApiError(
                400,
                f'"{field}": the name {shown!r} is {size} bytes in UTF-8, over the '
                f"{MAX_SEGMENT_BYTES}-byte limit for one file or folder name: shorten it",
            )
    return path


def too_long_for_disk(path: str) -> str:
    """Why a path within every limit still could not be written: the data dir's path is long."""
    return (
        f"{path[:60]!r}... is too long for the local platform's disk once under its data "
        "directory: use a shorter path (or a data directory with a shorter path)"
    )


def site_extension(path: str) -> str:
    """The lower-cased extension of a site file, or 400 naming the allowed list."""
    ext = posixpath.splitext(path)[1].lower()
    if ext not in SITE_CONTENT_TYPES:
        allowed = " ".join(SITE_CONTENT_TYPES)
        raise ApiError(
            400,
            f"{path!r}: static hosting accepts only {allowed}; "
            "upload other files to storage (presigned upload URL)",
            allowed=list(SITE_CONTENT_TYPES),
        )
    return ext
