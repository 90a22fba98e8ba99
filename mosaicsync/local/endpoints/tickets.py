"""Support tickets: submitted through the API, read back on `/_local/`."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from mosaicsync.local.endpoints.common import account, platform_of, read_json
from mosaicsync.local.errors import ApiError
from mosaicsync.local.platform import Platform
from mosaicsync.local.projects import check_single_line


async def create_ticket(request: Request) -> Response:
    p = platform_of(request)
    account_id = await account(request)
    body = await read_json(request)
    subject, message = body.get("subject"), body.get("message")
    if not isinstance(subject, str) or not subject.strip():
        raise ApiError(400, '"subject" must be a non-empty string')
    check_single_line("subject", subject)
    if not isinstance(message, str) or not message.strip():
        raise ApiError(400, '"message" must be a non-empty string')
    project_id = body.get("project_id")
    if project_id is not None:
        if not isinstance(project_id, str):
            raise ApiError(400, '"project_id" must be a string when given')
        p.projects.get(account_id, project_id)
    cur = p.state.run(
        "INSERT INTO tickets (account_id, project_id, subject, message, status, created_at) "
        "VALUES (?, ?, ?, ?, 'open', ?)",
        account_id,
        project_id,
        subject,
        message,
        p.clock.now(),
    )
    return JSONResponse(
        {
            "ticket_id": cur.lastrowid,
            "status": "open",
            "message": "Ticket submitted successfully.",
        }
    )


def ticket_rows(p: Platform, account_id: int | None = None) -> list[dict[str, Any]]:
    """The account's tickets (every ticket for None), newest first, as `/_local/tickets`."""
    if account_id is None:
        rows = p.state.all("SELECT * FROM tickets ORDER BY id DESC")
    else:
        rows = p.state.all(
            "SELECT * FROM tickets WHERE account_id = ? ORDER BY id DESC", account_id
        )
    return [
        {
            "ticket_id": r["id"],
            "project_id": r["project_id"],
            "subject": r["subject"],
            "message": r["message"],
            "status": r["status"],
            "created_at": r["created_at"],
        }
        for r in rows
    ]
