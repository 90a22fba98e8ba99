"""Object storage: HMAC-signed upload URLs bound to project, filename and size, expiring in 300 s.

The host is not signed, so a URL minted for 127.0.0.1 also works through localhost or a proxy.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import hmac
import shutil
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from mosaicsync.contract import PRESIGN_TTL
from mosaicsync.local.atomic import atomic_file
from mosaicsync.local.clock import Clock
from mosaicsync.local.errors import ApiError
from mosaicsync.local.paths import clean_path, too_long_for_disk
from mosaicsync.local.state import State


@dataclass(frozen=True)
class StoredObject:
    path: str
    size: int
    sha256: str


def human_bytes(n: float) -> str:
    """Decimal units, as the platform's "1.2 GB" / "20 GB" strings."""
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" or n == int(n) else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


class ObjectStore:
    def __init__(self, root: Path, state: State, clock: Clock, key: bytes, quota: int) -> None:
        self.root = root
        self.state = state
        self.clock = clock
        self.key = key
        self.quota = quota

    # -- signing -----------------------------------------------------------------------------

    def _signature(self, project_id: str, path: str, size: int, expires: int) -> str:
        msg = f"PUT\n{project_id}\n{path}\n{size}\n{expires}".encode()
        digest = hmac.new(self.key, msg, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def presign(self, project_id: str, filename: object, size: object, base: str) -> dict:
        path = clean_path(filename)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ApiError(400, '"size" must be the file size in bytes (a non-negative integer)')
        self._check_quota(project_id, path, size)
        expires = int(self.clock.now()) + PRESIGN_TTL
        sig = self._signature(project_id, path, size, expires)
        url = f"{base}/_storage/{project_id}/{quote(path)}?size={size}&expires={expires}&sig={sig}"
        return {"upload_url": url, "filename": path, "expires_in": PRESIGN_TTL}

    def verify(self, project_id: str, path: str, query: dict[str, str]) -> int:
        """The signed size, or 403 (bad or expired signature) before a byte is stored."""
        try:
            size = int(query["size"])
            expires = int(query["expires"])
            sig = query["sig"]
        except (KeyError, ValueError):
            raise ApiError(
                403, "upload URL is missing its size, expires or sig parameter"
            ) from None
        expected = self._signature(project_id, path, size, expires)
        if not hmac.compare_digest(expected.encode(), sig.encode()):
            raise ApiError(
                403, "signature does not match: use the upload_url exactly as it was returned"
            )
        if self.clock.now() > expires:
            raise ApiError(
                403, "Request has expired: upload URLs are valid for 300 s; ask for a new one"
            )
        return size

    # -- objects -----------------------------------------------------------------------------

    def _used(self, project_id: str, excluding: str | None = None) -> int:
        row = self.state.one(
            "SELECT COALESCE(SUM(size), 0) AS used FROM objects "
            "WHERE project_id = ? AND path IS NOT ?",
            project_id,
            excluding,
        )
        return int(row["used"]) if row else 0

    def _check_quota(self, project_id: str, path: str, size: int) -> None:
        used = self._used(project_id, excluding=path)
        if used + size > self.quota:
            raise ApiError(
                403,
                f"storage quota exceeded: {human_bytes(used)} of {human_bytes(self.quota)} used "
                f"and this upload needs {human_bytes(size)}; delete objects or upgrade "
                "(free tier 20 GB, Pro 1 TB)",
            )

    async def receive(
        self,
        project_id: str,
        path: str,
        size: int,
        content_length: str | None,
        chunks: AsyncIterator[bytes],
    ) -> StoredObject:
        """Stream a PUT body to a temp file; only a complete body of the signed size is kept."""
        if content_length is None:
            raise ApiError(411, "Content-Length is required for uploads to storage")
        if content_length != str(size):
            raise ApiError(
                403,
                f"Content-Length {content_length} does not match the size this URL was signed "
                f"for ({size} bytes); ask for a new upload URL with the right size",
            )
        self._check_quota(project_id, path, size)
        target = self.root / project_id / path
        digest = hashlib.sha256()
        received = 0
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            # Not fsynced, like site files: a large upload would wait on the disk for nothing.
            with atomic_file(target, durable=False) as f:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > size:
                        break
                    digest.update(chunk)
                    f.write(chunk)
                if received != size:
                    raise ApiError(
                        400,
                        f"IncompleteBody: received {received} bytes, the URL was signed for {size}",
                    )
        except (NotADirectoryError, IsADirectoryError, FileExistsError):
            raise ApiError(400, f"{path!r} conflicts with an existing object or folder") from None
        except OSError as exc:
            if exc.errno != errno.ENAMETOOLONG:
                raise
            raise ApiError(400, too_long_for_disk(path)) from None
        sha = digest.hexdigest()
        self.state.run(
            "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?)",
            project_id,
            path,
            size,
            sha,
            self.clock.now(),
        )
        return StoredObject(path, size, sha)

    def list(self, project_id: str) -> list[StoredObject]:
        rows = self.state.all(
            "SELECT path, size, sha256 FROM objects WHERE project_id = ? ORDER BY path", project_id
        )
        return [StoredObject(r["path"], r["size"], r["sha256"]) for r in rows]

    def usage(self, project_id: str) -> dict:
        used = self._used(project_id)
        return {
            "used": human_bytes(used),
            "limit": human_bytes(self.quota),
            "percent": round(100.0 * used / self.quota, 1) if self.quota else 0.0,
            "used_bytes": used,
            "limit_bytes": self.quota,
        }

    def lookup(self, project_id: str, path: str) -> tuple[StoredObject, Path] | None:
        row = self.state.one(
            "SELECT size, sha256 FROM objects WHERE project_id = ? AND path = ?", project_id, path
        )
        if not row:
            return None
        return StoredObject(path, row["size"], row["sha256"]), self.root / project_id / path

    def delete(self, project_id: str, filename: str) -> None:
        path = clean_path(filename)
        cur = self.state.run(
            "DELETE FROM objects WHERE project_id = ? AND path = ?", project_id, path
        )
        if cur.rowcount == 0:
            raise ApiError(404, f"object {path!r} not found in project {project_id}'s storage")
        (self.root / project_id / path).unlink(missing_ok=True)

    def delete_all(self, project_id: str) -> None:
        self.state.run("DELETE FROM objects WHERE project_id = ?", project_id)
        shutil.rmtree(self.root / project_id, ignore_errors=True)
