"""Magic-link sign-in: emails land in a local outbox instead of being sent."""

from __future__ import annotations

import html
import math
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlencode

from mosaicsync.local.clock import Clock
from mosaicsync.local.errors import ApiError
from mosaicsync.local.projects import one_line
from mosaicsync.local.state import State, hash_secret

DAY = 86400
TOKEN_TTL = 15 * 60
EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


@dataclass(frozen=True)
class Redirect:
    location: str


class LinkError(Exception):
    """A link that cannot be used (unknown, used, expired): shown to a person as a page."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.title = title
        self.message = message


class Outbox:
    def __init__(self, state: State, clock: Clock, emails_per_day: int) -> None:
        self.state = state
        self.clock = clock
        self.emails_per_day = emails_per_day

    def send_magic_link(
        self, project_id: str, app_name: str, email: object, redirect_url: object, base: str
    ) -> dict:
        """Store the sign-in email; 429 past the daily allowance (free tier: 10 a day)."""
        if not isinstance(email, str) or not EMAIL_RE.match(email):
            raise ApiError(400, '"email" must be an email address such as "user@example.com"')
        if redirect_url is None:
            redirect_url = "/"
        if (
            not isinstance(redirect_url, str)
            or not redirect_url.startswith("/")
            or redirect_url.startswith("//")
            or "\\" in redirect_url
        ):
            raise ApiError(
                400,
                '"redirect_url" must be a path on your site starting with "/", e.g. "/dashboard"',
            )
        now = self.clock.now()
        day_start = math.floor(now / DAY) * DAY
        if self.emails_per_day > 0:
            row = self.state.one(
                "SELECT COUNT(*) AS n FROM magic_links WHERE project_id = ? AND created_at >= ?",
                project_id,
                day_start,
            )
            if row and row["n"] >= self.emails_per_day:
                wait = max(1, math.ceil(day_start + DAY - now))
                raise ApiError(
                    429,
                    f"magic-link limit reached: {self.emails_per_day} emails a day per project "
                    "on the free tier; it resets at 00:00 UTC (need more? submit a ticket; "
                    "local platform: --emails-per-day)",
                    headers={"Retry-After": str(wait)},
                )
        token = secrets.token_urlsafe(32)
        link = f"{base}/auth/verify?{urlencode({'token': token})}"
        # Names are checked on the way in; one stored before that must still not break the
        # subject line (a header) or the text.
        app_name = one_line(app_name)
        subject = f"Sign in to {app_name}"
        text = (
            f"Hello,\n\nClick the link below to sign in to {app_name}:\n\n{link}\n\n"
            "The link works once and expires in 15 minutes. "
            "If you did not ask for it, ignore this email.\n"
        )
        body_html = (
            f"<p>Hello,</p><p>Click the link below to sign in to {html.escape(app_name)}:</p>"
            f'<p><a href="{html.escape(link)}">Sign in to {html.escape(app_name)}</a></p>'
            "<p>The link works once and expires in 15 minutes.</p>"
        )
        with self.state.transaction() as conn:
            conn.execute(
                "INSERT INTO magic_links VALUES (?, ?, ?, ?, ?, NULL)",
                (hash_secret(token), project_id, email, redirect_url, now),
            )
            conn.execute(
                "INSERT INTO outbox (project_id, to_email, subject, text, html, link, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (project_id, email, subject, text, body_html, link, now),
            )
        return {"success": True, "message": "Magic link sent! Check your email."}

    def verify(self, token: str | None, site_url_for: dict[str, str]) -> Redirect:
        """Use a token once: the redirect to `{site}{redirect_url}?token=...&email=...`, with
        `&` when the redirect has a query already and any `#fragment` kept last."""
        if not token:
            raise LinkError(400, "Invalid link", "This sign-in link has no token.")
        digest = hash_secret(token)
        row = self.state.one("SELECT * FROM magic_links WHERE token_hash = ?", digest)
        if row is None or row["project_id"] not in site_url_for:
            raise LinkError(404, "Invalid link", "This sign-in link is not valid.")
        now = self.clock.now()
        if row["used_at"] is not None:
            raise LinkError(
                410, "Link already used", "This sign-in link was already used. Ask for a new one."
            )
        if now - row["created_at"] > TOKEN_TTL:
            raise LinkError(
                410,
                "Link expired",
                "This sign-in link expired after 15 minutes. Ask for a new one.",
            )
        cur = self.state.run(
            "UPDATE magic_links SET used_at = ? WHERE token_hash = ? AND used_at IS NULL",
            now,
            digest,
        )
        if cur.rowcount != 1:
            raise LinkError(
                410, "Link already used", "This sign-in link was already used. Ask for a new one."
            )
        # The query goes before any fragment: after it, the browser never sends the token.
        path, hash_mark, fragment = row["redirect_url"].partition("#")
        sep = "" if path.endswith(("?", "&")) else "&" if "?" in path else "?"
        query = urlencode({"token": token, "email": row["email"]})
        return Redirect(f"{site_url_for[row['project_id']]}{path}{sep}{query}{hash_mark}{fragment}")

    def emails(self, email: str | None = None, project_id: str | None = None) -> list[dict]:
        sql = "SELECT * FROM outbox WHERE 1=1"
        args: list[object] = []
        if email:
            sql += " AND to_email = ?"
            args.append(email)
        if project_id:
            sql += " AND project_id = ?"
            args.append(project_id)
        rows = self.state.all(sql + " ORDER BY id DESC", *args)
        return [
            {
                "id": r["id"],
                "project_id": r["project_id"],
                "to": r["to_email"],
                "subject": r["subject"],
                "text": r["text"],
                "html": r["html"],
                "link": r["link"],
                "created_at": r["created_at"],
            }
            for r in rows
        ]

    def clear(self, project_ids: set[str] | None = None) -> int:
        """Delete every email, or only those of these projects."""
        if project_ids is None:
            return self.state.run("DELETE FROM outbox").rowcount
        ids = sorted(project_ids)
        if not ids:
            return 0
        marks = ", ".join("?" * len(ids))
        return self.state.run(f"DELETE FROM outbox WHERE project_id IN ({marks})", *ids).rowcount
