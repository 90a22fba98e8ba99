"""Facts of the Mosaic platform contract that the client and the local platform both honour.

This is the only module the two sides share: everything here comes from the platform's
documentation or from the contract we fixed where the documentation is silent.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

API_PREFIX = "/v1/project"
DEFAULT_API_URL = "https://api.mosaic.site" + API_PREFIX
LOCAL_API_URL = "http://127.0.0.1:8787" + API_PREFIX


class ApiRoute(NamedTuple):
    """One operation of the Mosaic API: its method and its path template under `API_PREFIX`."""

    method: str
    path: str


# The client's `api.ROUTES` and the local platform's routing are both built from this table.
API_ROUTES: dict[str, ApiRoute] = {
    "list_projects": ApiRoute("GET", "/projects"),
    "create_project": ApiRoute("POST", "/projects"),
    "get_project": ApiRoute("GET", "/{project_id}"),
    "delete_project": ApiRoute("DELETE", "/{project_id}"),
    "database": ApiRoute("GET", "/{project_id}/database"),
    "sql": ApiRoute("POST", "/{project_id}/sql"),
    "upload_file": ApiRoute("POST", "/{project_id}/files"),
    "list_files": ApiRoute("GET", "/{project_id}/files"),
    "delete_file": ApiRoute("DELETE", "/{project_id}/files/{filename}"),
    "upload_url": ApiRoute("POST", "/{project_id}/storage/upload-url"),
    "list_storage": ApiRoute("GET", "/{project_id}/storage"),
    "delete_object": ApiRoute("DELETE", "/{project_id}/storage/{filename}"),
    "magic_link": ApiRoute("POST", "/{project_id}/auth/magic-link"),
    "create_ticket": ApiRoute("POST", "/tickets"),
}
# Parameters that are a path of their own: their "/" separates folders, not API segments.
PATH_PARAMETERS = frozenset({"filename"})

# Static hosting accepts only these types; the value is the Content-Type the site serves.
SITE_CONTENT_TYPES: dict[str, str] = {
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".txt": "text/plain; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".gif": "image/gif",
    ".ico": "image/x-icon",
    ".webp": "image/webp",
}
SITE_EXTENSIONS = frozenset(SITE_CONTENT_TYPES)


def extension(path: str) -> str:
    """A path's extension, lowercased, as `posixpath.splitext` finds it ("" for `.htaccess` or
    `README`). Every rule keyed by type asks here: it runs for every file of every walk, at a
    third of splitext's cost."""
    name = path[path.rfind("/") + 1 :]
    dot = name.rfind(".")
    if dot <= 0 or not name[:dot].lstrip("."):
        return ""
    return name[dot:].lower()


def extensions(paths: Iterable[str]) -> Iterator[str]:
    """`extension` of each path, at two thirds of its cost: a deploy asks it of every file.

    Memoized by the text from the last dot: when the character before that dot is part of the
    name and not a dot, the extension is that text, lowercased, whatever the rest of the path.
    """
    memo: dict[str, str] = {}
    for path in paths:
        dot = path.rfind(".")
        if dot > 0 and path[dot - 1] not in "./":
            tail = path[dot:]
            found = memo.get(tail)
            if found is None:
                # A slash after the last dot: that dot is a folder's, and the name has none.
                found = memo[tail] = "" if "/" in tail else tail.lower()
            yield found
        else:
            yield extension(path)


# Text types go to the files endpoint as UTF-8; the others as base64.
TEXT_EXTENSIONS = frozenset({".html", ".css", ".js", ".json", ".txt", ".svg"})

MAX_SITE_FILE = 10 * 1024 * 1024  # bytes; larger files go to storage
# bytes in one API request body; beyond it the platform answers 413 (the local platform's
# `--max-body` default is this value). A migration file larger than it can never be sent.
MAX_REQUEST_BYTES = 16 * 1024 * 1024
MAX_PATH_LENGTH = 1024  # characters in a file or object name (our reading; undocumented)
# bytes (UTF-8) in one name between "/": the local platform keeps files on a filesystem, where a
# longer name cannot exist; the client refuses it too, so a deploy fails alike on both.
MAX_SEGMENT_BYTES = 255
PRESIGN_TTL = 300  # seconds an upload URL stays valid
FREE_STORAGE = 20 * 1000**3
MAGIC_LINK_TTL = 15 * 60
MAGIC_LINKS_PER_DAY = 10
KEY_ROTATION_DAYS = 30

PROJECT_ID_PATTERN = r"^[a-z]+-[a-z0-9]{3}$"
# Storage names under this folder are mosaicsync's own (the deploy history's packs): never a
# published file, since the scanner never publishes `.mosaicsync/`, so no page refers to them.
TOOL_STORAGE_PREFIX = ".mosaicsync/"


def is_loopback_host(name: str) -> bool:
    """Whether a host name is this machine: localhost, `*.localhost` or a loopback address
    (127.0.0.0/8, ::1). The client sends keys there freely; the local platform serves it."""
    import ipaddress

    host = name.strip("[]").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
