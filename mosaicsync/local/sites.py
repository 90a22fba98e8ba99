"""Static sites: storing uploaded files and serving them like a static host does."""

from __future__ import annotations

import base64
import binascii
import errno
import hashlib
import posixpath
import shutil
from dataclasses import dataclass
from pathlib import Path

from mosaicsync.local.atomic import write_atomic
from mosaicsync.local.clock import Clock
from mosaicsync.local.errors import ApiError
from mosaicsync.local.paths import clean_path, site_extension, too_long_for_disk
from mosaicsync.local.settings import SITE_CONTENT_TYPES
from mosaicsync.local.state import State

# Browsers revalidate every time; the ETag makes that a cheap 304 (Cloudflare/Netlify do the same).
CACHE_CONTROL = "public, max-age=0, must-revalidate"

NOT_FOUND_PAGE = b"""<!doctype html>
<html><head><meta charset="utf-8"><title>404 Not Found</title></head>
<body><h1>404 Not Found</h1><p>No file at this address on this site.</p></body></html>
"""


@dataclass(frozen=True)
class StoredFile:
    path: str
    size: int
    sha256: str


@dataclass(frozen=True)
class SiteResponse:
    status: int
    body: bytes
    headers: dict[str, str]


def decode_content(content: object, encoding: object) -> bytes:
    if not isinstance(content, str):
        raise ApiError(
            400, '"content" must be a string (text, or base64 with "encoding": "base64")'
        )
    if encoding in (None, "utf-8", "utf8", "text"):
        return content.encode("utf-8")
    if encoding == "base64":
        try:
            return base64.b64decode(content, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, '"content" is not valid base64') from None
    raise ApiError(400, f'"encoding" must be "base64" or omitted, not {encoding!r}')


class SiteStore:
    def __init__(self, root: Path, state: State, clock: Clock, max_file_size: int) -> None:
        self.root = root
        self.state = state
        self.clock = clock
        self.max_file_size = max_file_size

    def project_dir(self, project_id: str) -> Path:
        return self.root / project_id

    def put(
        self, project_id: str, filename: object, content: object, encoding: object
    ) -> StoredFile:
        path = clean_path(filename)
        site_extension(path)
        data = decode_content(content, encoding)
        if len(data) > self.max_file_size:
            raise ApiError(
                413,
                f"{path!r} is {len(data)} bytes, over the {self.max_file_size}-byte limit for "
                "site files; put large files in storage (presigned upload URL)",
            )
        target = self.project_dir(project_id) / path
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Not fsynced: the next deploy rewrites site files anyway, and uploads stay fast.
            write_atomic(target, data, durable=False)
        except (NotADirectoryError, FileExistsError, IsADirectoryError):
            raise ApiError(
                400, f"{path!r} conflicts with an existing file or folder of the same name"
            ) from None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise ApiError(400, too_long_for_disk(path)) from None
        digest = hashlib.sha256(data).hexdigest()
        self.state.run(
            "INSERT OR REPLACE INTO site_files VALUES (?, ?, ?, ?, ?)",
            project_id,
            path,
            len(data),
            digest,
            self.clock.now(),
        )
        return StoredFile(path, len(data), digest)

    def list(self, project_id: str) -> list[StoredFile]:
        rows = self.state.all(
            "SELECT path, size, sha256 FROM site_files WHERE project_id = ? ORDER BY path",
            project_id,
        )
        return [StoredFile(r["path"], r["size"], r["sha256"]) for r in rows]

    def delete(self, project_id: str, filename: str) -> None:
        path = clean_path(filename)
        cur = self.state.run(
            "DELETE FROM site_files WHERE project_id = ? AND path = ?", project_id, path
        )
        if cur.rowcount == 0:
            raise ApiError(404, f"file {path!r} not found in project {project_id}")
        target = self.project_dir(project_id) / path
        target.unlink(missing_ok=True)
        # Drop folders the delete left empty, so a later file may take their name.
        parent = target.parent
        top = self.project_dir(project_id)
        while parent != top and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent

    def delete_all(self, project_id: str) -> None:
        self.state.run("DELETE FROM site_files WHERE project_id = ?", project_id)
        shutil.rmtree(self.project_dir(project_id), ignore_errors=True)

    def _lookup(self, project_id: str, path: str) -> StoredFile | None:
        row = self.state.one(
            "SELECT size, sha256 FROM site_files WHERE project_id = ? AND path = ?",
            project_id,
            path,
        )
        return StoredFile(path, row["size"], row["sha256"]) if row else None

    def _has_prefix(self, project_id: str, prefix: str) -> bool:
        row = self.state.one(
            "SELECT 1 FROM site_files WHERE project_id = ? AND path >= ? AND path < ? LIMIT 1",
            project_id,
            prefix,
            prefix + "\U0010ffff",
        )
        return row is not None

    def serve(
        self, project_id: str, url_path: str, if_none_match: str | None, base: str
    ) -> SiteResponse:
        """The response for GET `url_path` of a site: the file, index.html, a redirect or 404."""
        rel = url_path.lstrip("/")
        candidates = [rel + "index.html"] if rel == "" or rel.endswith("/") else [rel]
        for candidate in candidates:
            found = self._safe_lookup(project_id, candidate)
            if found:
                return self._file_response(project_id, found, if_none_match)
        if rel and not rel.endswith("/") and self._safe_lookup(project_id, rel + "/index.html"):
            # A folder without its slash: redirect, so relative links inside it resolve.
            return SiteResponse(301, b"", {"Location": f"{base}/{rel}/"})
        custom = self._lookup(project_id, "404.html")
        if custom:
            response = self._file_response(project_id, custom, None)
            return SiteResponse(
                404, response.body, {**response.headers, "Cache-Control": "no-store"}
            )
        headers = {"Content-Type": SITE_CONTENT_TYPES[".html"], "Cache-Control": "no-store"}
        return SiteResponse(404, NOT_FOUND_PAGE, headers)

    def _safe_lookup(self, project_id: str, rel: str) -> StoredFile | None:
        try:
            path = clean_path(rel)
        except ApiError:
            return None
        return self._lookup(project_id, path)

    def _file_response(
        self, project_id: str, found: StoredFile, if_none_match: str | None
    ) -> SiteResponse:
        etag = f'"{found.sha256}"'
        ext = posixpath.splitext(found.path)[1].lower()
        headers = {
            "ETag": etag,
            "Cache-Control": CACHE_CONTROL,
            "Content-Type": SITE_CONTENT_TYPES.get(ext, "application/octet-stream"),
        }
        if if_none_match and etag_matches(if_none_match, found.sha256):
            return SiteResponse(304, b"", headers)
        try:
            body = (self.project_dir(project_id) / found.path).read_bytes()
        except FileNotFoundError:
            return SiteResponse(404, NOT_FOUND_PAGE, {"Content-Type": SITE_CONTENT_TYPES[".html"]})
        return SiteResponse(200, body, headers)


def etag_matches(if_none_match: str, sha256: str) -> bool:
    """True when If-None-Match names this content, strong or weak form, or is `*`."""
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/").strip('"') == sha256:
            return True
    return False
