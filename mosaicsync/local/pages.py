"""The few HTML pages people see on the local platform: the outbox and link errors."""

from __future__ import annotations

import html
import time
from typing import Any
from urllib.parse import urlencode

STYLE = """
body{font:15px/1.5 system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;color:#222}
h1{font-size:1.4rem}h2{font-size:1.1rem;margin-top:2rem}
table{border-collapse:collapse;width:100%}td,th{border-bottom:1px solid #ddd;padding:.4rem;
text-align:left;vertical-align:top}th{background:#f6f6f6}.muted{color:#777;font-size:.9em}
"""


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>{body}</body></html>"
    )


def message_page(title: str, message: str) -> str:
    return _page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>")


def outbox_page(
    emails: list[dict[str, Any]],
    tickets: list[dict[str, Any]],
    info: dict,
    token: str | None = None,
) -> str:
    e = html.escape
    auth = f"?{urlencode({'token': token})}" if token else ""
    rows = (
        "".join(
            f"<tr><td>{e(_when(m['created_at']))}</td><td>{e(m['project_id'])}</td>"
            f"<td>{e(m['to'])}</td><td>{e(m['subject'])}</td>"
            f'<td><a href="{e(m["link"])}">sign in</a></td></tr>'
            for m in emails
        )
        or '<tr><td colspan="5" class="muted">No emails yet.</td></tr>'
    )
    trows = (
        "".join(
            f"<tr><td>#{t['ticket_id']}</td><td>{e(_when(t['created_at']))}</td>"
            f"<td>{e(t['project_id'] or '')}</td><td>{e(t['subject'])}</td>"
            f"<td>{e(t['message'])}</td><td>{e(t['status'])}</td></tr>"
            for t in tickets
        )
        or '<tr><td colspan="6" class="muted">No tickets.</td></tr>'
    )
    api = e(str(info.get("api_url", "")))
    body = (
        "<h1>Mosaic local platform</h1>"
        f'<p class="muted">API {api} &middot; <a href="/_local/info">info</a> &middot; '
        f'<a href="/_local/outbox{e(auth)}">outbox as JSON</a> &middot; '
        f'<a href="/_local/tickets{e(auth)}">tickets as JSON</a></p>'
        "<h2>Outbox</h2><p class=muted>Emails are never sent from the local platform; "
        "they land here.</p>"
        "<table><tr><th>when</th><th>project</th><th>to</th><th>subject</th><th>link</th></tr>"
        f"{rows}</table>"
        "<h2>Support tickets</h2><table><tr><th>id</th><th>when</th><th>project</th>"
        f"<th>subject</th><th>message</th><th>status</th></tr>{trows}</table>"
    )
    return _page("Mosaic local platform", body)
