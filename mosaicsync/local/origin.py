"""Keeping tenant content away from the platform's own origin, and foreign names away entirely.

The platform's pages (`/_local/`) and the content tenants control (storage objects, the
`/sites/{id}/` pages) share `127.0.0.1:PORT`. So: a request must name the platform itself or a
`*.localhost` site (a DNS-rebinding page names its own host), storage objects of an active type
are downloads in a sandbox, and path-style site pages run in a sandbox (an opaque origin).
"""

from __future__ import annotations

import ipaddress
import json
import mimetypes

from starlette.types import ASGIApp, Receive, Scope, Send

from mosaicsync.contract import is_loopback_host

# Storage objects of these types are shown inline; any other type (HTML, SVG, XML, scripts...)
# is a download with a sandboxing CSP, so it never runs as a page of the platform's origin.
INLINE_PREFIXES = ("image/", "audio/", "video/", "font/")
INLINE_TYPES = {"text/plain", "text/csv", "application/json"}
NOT_INLINE = {"image/svg+xml"}
# Every storage object, inline or not: no sniffing into HTML, no scripts, an opaque origin.
STORAGE_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}
# `/sites/{id}/` pages: scripts run, but in an opaque origin that cannot read the platform's
# pages. `{id}.localhost` is an origin of its own and needs no sandbox.
SITE_SANDBOX = "sandbox allow-scripts allow-forms allow-popups allow-modals"

WILDCARD_HOSTS = {"", "0.0.0.0", "::"}


def storage_media_type(filename: str) -> str:
    """The type a storage object is served with, guessed from its name as FileResponse does."""
    return mimetypes.guess_type(filename)[0] or "text/plain"


def inline_ok(media_type: str) -> bool:
    if media_type in NOT_INLINE:
        return False
    return media_type in INLINE_TYPES or media_type.startswith(INLINE_PREFIXES)


def split_host(host: str) -> str:
    """The name of a Host header, lowercased, without its port; `[::1]:80` gives `::1`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    if host.count(":") == 1:
        host = host.split(":", 1)[0]
    return host.rstrip(".")


def is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def host_allowed(host: str, configured: str) -> bool:
    """127.0.0.1, localhost, ::1, the configured host, `*.localhost`; any IP literal when the
    platform listens on every interface (an IP literal cannot be rebound to another server)."""
    name = split_host(host)
    if is_loopback_host(name):
        return True
    if configured in WILDCARD_HOSTS:
        return is_ip(name)
    return name == split_host(configured)


class HostCheck:
    """Refuses (421) a request whose Host names neither the platform nor one of its sites."""

    def __init__(self, app: ASGIApp, configured: str) -> None:
        self.app = app
        self.configured = configured

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            host = next((v.decode("latin-1") for k, v in scope["headers"] if k == b"host"), None)
            # No Host at all (HTTP/1.0 tools) cannot come from a browser: let it through.
            if host is not None and not host_allowed(host, self.configured):
                await self.refuse(host, send)
                return
        await self.app(scope, receive, send)

    async def refuse(self, host: str, send: Send) -> None:
        message = (
            f"Host {host[:100]!r} is not served here: the local platform answers only "
            "127.0.0.1, localhost, [::1], the --host it listens on and <project-id>.localhost "
            "(a guard against DNS rebinding); use http://127.0.0.1:PORT or "
            "http://<project-id>.localhost:PORT"
        )
        body = json.dumps({"success": False, "error": message}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
        await send({"type": "http.response.start", "status": 421, "headers": headers})
        await send({"type": "http.response.body", "body": body})
