"""Facts of the Mosaic platform contract that the client and the local platform both honour.

This is the only module the two sides share: everything here comes from the platform's
documentation or from the contract we fixed where the documentation is silent.
"""

from __future__ import annotations

DEFAULT_API_URL = "https://api.mosaic.site/v1/project"
LOCAL_API_URL = "http://127.0.0.1:8787/v1/project"

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

# Text types go to the files endpoint as UTF-8; the others as base64.
TEXT_EXTENSIONS = frozenset({".html", ".css", ".js", ".json", ".txt", ".svg"})

MAX_SITE_FILE = 10 * 1024 * 1024  # bytes; larger files go to storage
MAX_PATH_LENGTH = 1024  # characters in a file or object name (our reading; undocumented)
PRESIGN_TTL = 300  # seconds an upload URL stays valid
FREE_STORAGE = 20 * 1000**3
MAGIC_LINK_TTL = 15 * 60
MAGIC_LINKS_PER_DAY = 10
KEY_ROTATION_DAYS = 30

PROJECT_ID_PATTERN = r"^[a-z]+-[a-z0-9]{3}$"
